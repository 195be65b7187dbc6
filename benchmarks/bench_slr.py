"""What an SLR loop costs: forward passes and wall time per request against plain decoding.

    python -m benchmarks.bench_slr [--requests 8] [--loops 4] [--slr-adapter DIR]

In one run on the same model and prompts (synthetic 2-3 step problems through the chat
template, greedy, `--max-tokens` answer tokens, EOS ignored so every request decodes the
same number of tokens), each request runs alone through the engine: plain, then SLR with
`--loops` soft-feedback loops, and, with an adapter, SLR with the adapter and contrastive
refinement. Reports forward passes and median wall time per request. A benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--slr-adapter", default=None, help="adapter directory (train-slr)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from latent_ops.program import Generate, SamplingParams
    from latent_ops.slr import SLRConfig, slr
    from server.engine.build import build_engine, run_programs
    from server.engine.loader import load_model
    from server.refinement import chat_encoder
    from server.tools.problems import load_problems

    loaded = load_model(args.model, device="cpu", dtype="float32")
    encode = chat_encoder(loaded.tokenizer)
    problems = load_problems("synthetic:200,steps=2-3", args.requests)
    prompts = [encode([{"role": "user", "content": p.question}]) for p in problems]
    adapters = {"ad": args.slr_adapter} if args.slr_adapter else None
    engine = build_engine(loaded, max_batch_size=16, slr_adapters=adapters)
    engine.start()
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)

    def plain(ids):
        [generation] = yield [Generate(ids, params)]
        return generation

    variants = {
        "plain": plain,
        f"slr soft, {args.loops} loops": lambda ids: slr(
            ids, params, SLRConfig(max_loops=args.loops, feedback="soft")
        ),
    }
    if adapters:
        loops = engine.adapters["ad"].cfg.loops
        trained = engine.adapters["ad"].slr_defaults("ad")
        variants[f"slr adapter, {loops} loops"] = lambda ids: slr(ids, params, SLRConfig(**trained))
        variants[f"contrastive adapter, {loops} loops"] = lambda ids: slr(
            ids, params, SLRConfig(**trained, contrastive=True)
        )
    run_programs(engine, [plain(prompts[0])])  # warm-up
    rows = []
    for name, make in variants.items():
        times, passes = [], []
        for ids in prompts:
            before = engine.runner.forward_passes
            start = time.perf_counter()
            run_programs(engine, [make(ids)])
            times.append(time.perf_counter() - start)
            passes.append(engine.runner.forward_passes - before)
        rows.append(
            {
                "variant": name,
                "passes": statistics.mean(passes),
                "seconds": statistics.median(times),
            }
        )
        print(f"{name}: {rows[-1]['passes']:.1f} passes, {rows[-1]['seconds']:.2f} s", flush=True)
    engine.shutdown()
    base = rows[0]
    print(f"\n{args.requests} requests one at a time, {args.max_tokens} answer tokens\n")
    print("| variant | forward passes / request | extra passes | median s / request | vs plain |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['passes']:.1f} | {r['passes'] - base['passes']:+.1f} "
            f"| {r['seconds']:.2f} | {r['seconds'] / base['seconds']:.2f}x |"
        )
    if args.json:
        print(json.dumps(rows, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
