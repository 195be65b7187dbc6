"""Runner throughput: tokens/s at batch 1 and batch B, beside transformers' `generate`.

    python -m benchmarks.bench_runner [--model default] [--tokens 64] [--batch 8]

All three are measured in one run on the same model and prompts, greedy, with EOS
ignored so every sequence produces exactly `--tokens` tokens. Each figure is the median of
`--repeats` timed runs after one warm-up. Prints a Markdown table (and JSON with --json).
This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about a cat that likes rain.",
    "What is 17 times 23? Show your work.",
    "List three uses of a paperclip.",
    "Describe the water cycle for a child.",
    "Give me a recipe idea with eggs and spinach.",
    "Why do we have seasons on Earth?",
    "Summarise the plot of a heist movie in one paragraph.",
]


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sequence")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)

    import torch

    from latent_ops.program import SamplingParams
    from server.engine.loader import load_model
    from server.engine.runner import ModelRunner, Sequence

    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer

    def chat_ids(text):
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return tok(rendered, add_special_tokens=False)["input_ids"]

    prompts = [chat_ids(PROMPTS[i % len(PROMPTS)]) for i in range(args.batch)]
    n = args.tokens

    def run_generate():
        ids = torch.tensor([prompts[0]])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=tok.pad_token_id,
            )
        assert out.shape[1] - ids.shape[1] == n

    def run_runner(batch):
        def go():
            runner = ModelRunner(model, max_batch_size=batch, eos_token_ids=set())
            seqs = [
                Sequence(i, prompts[i], SamplingParams(max_tokens=n, ignore_eos=True))
                for i in range(batch)
            ]
            for seq in seqs:
                runner.add(seq)
            while runner.has_work:
                runner.step()
            assert all(len(s.output_ids) == n for s in seqs)

        return go

    rows = {
        "transformers generate, batch 1": (_median_time(run_generate, args.repeats), 1),
        "latentserve runner, batch 1": (_median_time(run_runner(1), args.repeats), 1),
        f"latentserve runner, batch {args.batch}": (
            _median_time(run_runner(args.batch), args.repeats),
            args.batch,
        ),
    }
    figures = {name: n * b / t for name, (t, b) in rows.items()}
    print(
        f"\nmodel {loaded.name}, {n} new tokens per sequence, torch threads "
        f"{torch.get_num_threads()}, median of {args.repeats}\n"
    )
    print("| path | seconds | tokens/s |\n|---|---|---|")
    for name, (t, _) in rows.items():
        print(f"| {name} | {t:.2f} | {figures[name]:.1f} |")
    base = figures["latentserve runner, batch 1"]
    print(
        f"\nbatch {args.batch} / batch 1: {figures[f'latentserve runner, batch {args.batch}'] / base:.2f}x; "
        f"runner batch 1 / generate: {base / figures['transformers generate, batch 1']:.2f}x"
    )
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
