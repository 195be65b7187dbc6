"""LatentSeek speed: the engine against the paper's code pattern, and concurrency.

    python -m benchmarks.bench_latentseek [--model default] [--requests 4] [--steps 3]

Two comparisons, each in this one run on the same model and prompts (GSM8K questions from
`--data`, chat template, greedy), with a reference reward no answer can meet so every
request runs exactly `--steps` refinement steps:
1. per request, one at a time: `tests.support.paper_reference.paper_latentseek` (uncached
   decoding, autograd + torch.optim.Adam) against the engine (KV cache, the prompt's KV
   reused across iterations, closed-form latent update) on the first `--paper-requests`
   requests (uncached decoding is slow); the texts and reward histories must be equal, or
   the run says so;
2. the same `--requests` requests through the engine one by one against all at once
   (one batched decode and one batched latent update per step across requests).
Prints a Markdown table (and JSON with --json). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import time

from server.tools.problems import DEFAULT_GSM8K

UNREACHABLE = "-987654321"  # a reference answer nothing extracts to: every step runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--data", default=DEFAULT_GSM8K, help="GSM8K-format JSONL (default: the 50-row sample)"
    )
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument(
        "--paper-requests", type=int, default=2, help="requests also run the paper's way (slow)"
    )
    parser.add_argument("--steps", type=int, default=3, help="refinement steps per request")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument(
        "--speculative-steps",
        type=int,
        default=None,
        help="steps decoded together (default: the server's --speculative-steps)",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)

    from latent_ops.latentseek import LatentSeekConfig, latentseek
    from latent_ops.program import SamplingParams
    from latent_ops.rewards import ReferenceReward
    from server.config import ServerConfig
    from server.engine.build import build_engine, eos_token_ids, run_programs
    from server.engine.loader import load_model
    from server.refinement import chat_encoder
    from server.tools.problems import load_problems
    from tests.support.paper_reference import paper_latentseek

    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    encode = chat_encoder(tok)
    eos = eos_token_ids(model, tok)
    problems = load_problems(args.data, args.requests)
    prompts = [(encode([{"role": "user", "content": p.question}]), p.question) for p in problems]
    cfg = LatentSeekConfig(
        max_steps=args.steps,
        lr=args.lr,
        fraction=args.fraction,
        select="last",
        threshold=-0.2,
        speculative_steps=args.speculative_steps
        or ServerConfig.model_fields["speculative_steps"].default,
    )
    reward = ReferenceReward(UNREACHABLE)
    params = SamplingParams(max_tokens=args.max_tokens)
    batch = ServerConfig.model_fields["max_batch_size"].default  # as `latentserve serve`
    engine = build_engine(loaded, max_batch_size=batch)
    engine.start()

    def programs(subset):
        return [latentseek(ids, text, params, cfg, reward) for ids, text in subset]

    run_programs(engine, programs(prompts[:1]))  # warm-up

    paper, ours, same = [], [], []
    for i, (ids, text) in enumerate(prompts):
        start = time.perf_counter()
        [out] = run_programs(engine, programs([(ids, text)]))
        ours.append(time.perf_counter() - start)
        line = (
            f"request {i + 1}: engine {ours[-1]:.2f} s, steps {out.steps}, "
            f"answer tokens {len(out.generation.token_ids)}"
        )
        if i < args.paper_requests:
            start = time.perf_counter()
            ref_text, ref_history, _ = paper_latentseek(
                model, tok, ids, text, args.max_tokens, cfg, reward, eos
            )
            paper.append(time.perf_counter() - start)
            same.append(out.generation.text == ref_text and out.reward_history == ref_history)
            line += f", paper pattern {paper[-1]:.1f} s, same text and rewards: {same[-1]}"
        print(line, flush=True)

    start = time.perf_counter()
    together = run_programs(engine, programs(prompts))
    concurrent_s = time.perf_counter() - start
    engine.shutdown()
    one_by_one_s = sum(ours)
    tokens = sum(o.refinement_tokens + len(o.generation.token_ids) for o in together)
    reused = sum(o.reused_answers for o in together)
    figures = {
        "model": loaded.name,
        "requests": len(prompts),
        "steps": args.steps,
        "paper_pattern_s_per_request": sum(paper) / len(paper) if paper else None,
        "engine_s_per_request": sum(ours[: len(paper) or None]) / (len(paper) or len(ours)),
        "speedup_vs_paper": sum(paper) / sum(ours[: len(paper)]) if paper else None,
        "same_texts_and_rewards": all(same),
        "one_by_one_s": one_by_one_s,
        "concurrent_s": concurrent_s,
        "concurrency_throughput_gain": one_by_one_s / concurrent_s,
        "concurrent_tokens": tokens,
        "reused_answers": reused,
        "speculative_steps": cfg.speculative_steps,
        "max_batch_size": batch,
    }
    print()
    print("| | seconds | ratio |")
    print("|---|---|---|")
    if paper:
        print(
            f"| paper pattern, per request ({args.steps} steps) "
            f"| {figures['paper_pattern_s_per_request']:.1f} | 1.00x |"
        )
        print(
            f"| engine, per request, one at a time | {figures['engine_s_per_request']:.2f} "
            f"| {figures['speedup_vs_paper']:.1f}x faster (same {len(paper)} requests) |"
        )
    print(f"| engine, {len(prompts)} requests one by one | {one_by_one_s:.2f} | 1.00x |")
    print(
        f"| engine, {len(prompts)} requests at once | {concurrent_s:.2f} "
        f"| {figures['concurrency_throughput_gain']:.2f}x throughput |"
    )
    print(f"\nsame texts and reward histories as the paper pattern: {all(same)}")
    print(f"steps that reused an answer already decoded (unchanged prefix): {reused}")
    if args.json:
        print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
