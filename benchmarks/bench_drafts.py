"""Draft-verified decoding: LatentSeek and plain greedy decoding with and without drafts.

    python -m benchmarks.bench_drafts [--requests 2] [--steps 3] [--answer-tokens 64,256]

All in this one run, on the same model and prompts, one request at a time (the
latency a single client sees):
1. per answer length in `--answer-tokens`: a `--steps`-step LatentSeek refinement of each
   of `--requests` GSM8K-sample questions (chat template, a reference reward no answer
   meets, so every step runs; `select="last"`) the paper's way
   (`tests.support.paper_reference.paper_latentseek`: no KV cache, autograd + Adam), on
   the engine without drafts (`--draft-tokens 0`) and on the engine with them (earlier
   answers of the request as drafts); the table gives seconds per request, both speedups
   over the paper pattern, whether texts and reward histories equal the paper pattern's
   and the undrafted engine's, and the drafts' acceptance rate;
2. plain greedy decoding, single stream, of `--plain` synthetic math questions: tokens/s
   with no drafts and with prompt lookup (`--draft-prompt-lookup`), texts compared,
   acceptance rate.
Prints Markdown tables (and JSON with --json). It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time

from server.tools.problems import DEFAULT_GSM8K

UNREACHABLE = "-987654321"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=DEFAULT_GSM8K)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--answer-tokens", default="64,256")
    parser.add_argument("--draft-tokens", type=int, default=None, help="default: the server's")
    parser.add_argument("--plain", type=int, default=8, help="plain greedy questions")
    parser.add_argument("--plain-tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from latent_ops.latentseek import LatentSeekConfig, latentseek
    from latent_ops.program import Generate, SamplingParams, plain_generation
    from latent_ops.rewards import ReferenceReward
    from server.config import ServerConfig
    from server.engine.build import EngineConfig, build_engine, eos_token_ids, run_programs
    from server.engine.loader import load_model
    from server.refinement import chat_encoder
    from server.tools.eval import question_text
    from server.tools.problems import load_problems
    from tests.support.paper_reference import paper_latentseek

    defaults = ServerConfig.model_fields
    k = args.draft_tokens if args.draft_tokens is not None else defaults["draft_tokens"].default
    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    encode = chat_encoder(tok)
    eos = eos_token_ids(model, tok)
    problems = load_problems(args.data, args.requests)
    prompts = [(encode([{"role": "user", "content": p.question}]), p.question) for p in problems]
    cfg = LatentSeekConfig(max_steps=args.steps, select="last", threshold=-0.2)
    reward = ReferenceReward(UNREACHABLE)

    def engine(**settings):
        e = build_engine(loaded, EngineConfig(max_batch_size=16, **settings))
        e.start()
        return e

    engines = {"off": engine(draft_tokens=0), "on": engine(draft_tokens=k)}
    figures: dict = {"model": loaded.name, "steps": args.steps, "draft_tokens": k}

    def refine(e, ids, text, n):
        start = time.perf_counter()
        [out] = run_programs(e, [latentseek(ids, text, SamplingParams(max_tokens=n), cfg, reward)])
        return time.perf_counter() - start, out

    for e in engines.values():  # warm-up
        refine(e, *prompts[0], 16)
    rows = []
    for n in (int(x) for x in args.answer_tokens.split(",")):
        paper = off = on = 0.0
        same_paper = same_off = True
        stats = engines["on"].runner.drafter.stats
        before = (stats.proposed, stats.accepted)
        for ids, text in prompts:
            t_off, o_off = refine(engines["off"], ids, text, n)
            t_on, o_on = refine(engines["on"], ids, text, n)
            start = time.perf_counter()
            ref_text, ref_history, _ = paper_latentseek(model, tok, ids, text, n, cfg, reward, eos)
            paper += time.perf_counter() - start
            off, on = off + t_off, on + t_on
            same_paper &= o_on.generation.text == ref_text and o_on.reward_history == ref_history
            same_off &= (o_on.generation.text, o_on.reward_history) == (
                o_off.generation.text,
                o_off.reward_history,
            )
        proposed, acc = stats.proposed - before[0], stats.accepted - before[1]
        r = len(prompts)
        rows.append(
            {
                "answer_tokens": n,
                "paper_s": paper / r,
                "engine_s": off / r,
                "drafted_s": on / r,
                "engine_speedup": paper / off,
                "drafted_speedup": paper / on,
                "same_as_paper": same_paper,
                "same_as_undrafted": same_off,
                "acceptance": acc / proposed if proposed else 0.0,
                "drafted_tokens": proposed,
            }
        )
        print(f"{n} answer tokens: {rows[-1]}", flush=True)
    figures["latentseek"] = rows

    # plain greedy, single stream: prompt lookup on and off
    plain_problems = load_problems(f"synthetic:{args.plain},seed=5")
    plain_ids = [encode([{"role": "user", "content": question_text(p)}]) for p in plain_problems]
    lookup = engine(draft_tokens=k, draft_prompt_lookup=True)
    plain = {}
    for name, e in (("off", engines["off"]), ("prompt_lookup", lookup)):
        params = SamplingParams(max_tokens=args.plain_tokens)
        run_programs(e, [plain_generation([Generate(plain_ids[0], params)])])  # warm-up
        stats = e.runner.drafter.stats if e.runner.drafter else None
        before = (stats.proposed, stats.accepted) if stats else (0, 0)
        tokens, texts, start = 0, [], time.perf_counter()
        for ids in plain_ids:
            [out] = run_programs(e, [plain_generation([Generate(ids, params)])])
            tokens += len(out.choices[0].token_ids)
            texts.append(out.choices[0].text)
        seconds = time.perf_counter() - start
        proposed = stats.proposed - before[0] if stats else 0
        plain[name] = {
            "tokens_per_s": tokens / seconds,
            "tokens": tokens,
            "acceptance": (stats.accepted - before[1]) / proposed if proposed else 0.0,
            "texts": texts,
        }
    same_plain = plain["off"]["texts"] == plain["prompt_lookup"]["texts"]
    for v in plain.values():
        v.pop("texts")
    figures["plain"] = plain | {
        "same_texts": same_plain,
        "speedup": plain["prompt_lookup"]["tokens_per_s"] / plain["off"]["tokens_per_s"],
    }
    for e in (*engines.values(), lookup):
        e.shutdown()

    print(f"\nmodel {loaded.name}, torch threads {torch.get_num_threads()}, drafts k = {k}\n")
    print(
        f"| LatentSeek, {args.steps} steps, answer tokens | paper pattern s | engine s "
        "| engine + drafts s | engine speedup | with drafts | same texts (paper, undrafted) "
        "| acceptance |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['answer_tokens']} | {r['paper_s']:.1f} | {r['engine_s']:.2f} "
            f"| {r['drafted_s']:.2f} | {r['engine_speedup']:.1f}x | {r['drafted_speedup']:.1f}x "
            f"| {r['same_as_paper']}, {r['same_as_undrafted']} | {r['acceptance']:.2f} |"
        )
    p = figures["plain"]
    print(
        "\n| plain greedy, single stream | tokens/s | acceptance |\n|---|---|---|\n"
        f"| no drafts | {p['off']['tokens_per_s']:.1f} | – |\n"
        f"| prompt lookup | {p['prompt_lookup']['tokens_per_s']:.1f} "
        f"| {p['prompt_lookup']['acceptance']:.2f} |\n\n"
        f"prompt lookup / no drafts: {p['speedup']:.2f}x, same texts: {same_plain}"
    )
    if args.json:
        print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
