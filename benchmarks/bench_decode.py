"""Decode-step cost by batch size, with and without `kernels.skinny_linear`.

    python -m benchmarks.bench_decode [--model default] [--batches 1,2,3,4,8,16,32]

For each batch size B, B sequences of a 200-token prompt are prefilled, then the median
wall time of `--steps` runner decode steps is measured with the model's linear layers
routed through `kernels.skinny_linear` (what the runner does) and with plain `F.linear`,
alternating the two for `--rounds` rounds in this run; each figure is the median over
rounds (this 2-core machine's noise is about ±10%). Prints a Markdown table (and JSON with --json). A
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batches", default="1,2,3,4,8,16,32")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from kernels import skinny_linear
    from latent_ops.program import SamplingParams
    from server.engine.loader import load_model
    from server.engine.runner import ModelRunner, Sequence

    loaded = load_model(args.model, device="cpu", dtype="float32")
    model = loaded.model
    prompt = [100 + i % 1000 for i in range(args.prompt_tokens)]

    def ms_per_step(batch: int, skinny: bool) -> float:
        runner = ModelRunner(model, max_batch_size=batch, eos_token_ids=set())
        if not skinny:
            skinny_linear.uninstall(model)
        params = SamplingParams(max_tokens=args.steps + 10, ignore_eos=True)
        for i in range(batch):
            runner.add(Sequence(i, prompt, params))
        runner.step()  # prefill
        runner.step()  # warm-up decode
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            runner.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    rows = []
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            runs = [
                (ms_per_step(batch, False), ms_per_step(batch, True)) for _ in range(args.rounds)
            ]
            plain = statistics.median(r[0] for r in runs)
            skinny = statistics.median(r[1] for r in runs)
            rows.append({"batch": batch, "f_linear_ms": plain, "skinny_ms": skinny})
            print(
                f"batch {batch}: F.linear {plain:.1f} ms/step, skinny {skinny:.1f} ms/step",
                flush=True,
            )
    print(
        f"\nmodel {loaded.name}, fp32, {torch.get_num_threads()} threads, "
        f"{args.prompt_tokens}-token prompts\n"
    )
    print("| batch | F.linear ms/step | skinny_linear ms/step | speedup | ms/token (skinny) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['f_linear_ms']:.1f} | {r['skinny_ms']:.1f} "
            f"| {r['f_linear_ms'] / r['skinny_ms']:.2f}x | {r['skinny_ms'] / r['batch']:.1f} |"
        )
    if args.json:
        print(json.dumps(rows, indent=1))
    return {"model": loaded.name, "rows": rows}


if __name__ == "__main__":
    main()
