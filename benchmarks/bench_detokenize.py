"""Per-token cost of detokenization at the start and at the end of a long stream.

    python -m benchmarks.bench_detokenize [--model default] [--tokens 2000] [--rounds 5]

One `--tokens`-token output (text with multi-byte characters, tokenized by the model's
tokenizer; `--model tiny` takes the tests' byte-level one) is fed one token at a time
to a `server.engine.detokenizer.Detokenizer`, streaming, with a stop string that never
matches, as the engine does per step. Both ways are timed in this run, alternating for
`--rounds` rounds: `full`, the old way (decode every token so far, every step), and
`incremental` (decode a short window). Prints the median microseconds per token over the
first and the last `--window` tokens and their ratio, and checks that both end with the
same text (JSON with --json). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

TEXT = (
    "The answer is 42, naïve café; 中文字符 and emoji 🎉 appear here. "
    "Ωμέγα ≠ alpha, so we check: 3 × 4 = 12 — fine.\n"
)


def _tokenizer(model: str):
    if model == "tiny":
        from tests.tiny import build_tokenizer

        return build_tokenizer()
    from transformers import AutoTokenizer

    from server.engine.loader import resolve_model_dir

    path, _ = resolve_model_dir(model, show_progress=False)
    return AutoTokenizer.from_pretrained(str(path))


def _feed(tok, ids: list[int], incremental: bool) -> tuple[list[float], str]:
    """Seconds per step feeding ids one at a time; the final text."""
    from latent_ops.program import SamplingParams
    from server.engine.detokenizer import Detokenizer
    from server.engine.runner import Sequence

    det = Detokenizer(tok, ["<never matches>"], incremental=incremental)
    seq = Sequence(0, [0], SamplingParams(max_tokens=len(ids)))
    times = []
    for i, token in enumerate(ids):
        seq.output_ids.append(token)
        if i == len(ids) - 1:
            seq.finish_reason = "length"
        start = time.perf_counter()
        det.update(seq)
        det.delta(seq)
        times.append(time.perf_counter() - start)
    return times, det.text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a model spec, or tiny")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--window", type=int, default=100, help="tokens averaged at each end")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    tok = _tokenizer(args.model)
    ids: list[int] = []
    while len(ids) < args.tokens:
        ids += tok.encode(TEXT, add_special_tokens=False)
    ids = ids[: args.tokens]
    want = tok.decode(ids, skip_special_tokens=True)

    per: dict[str, dict[str, list[float]]] = {
        way: {"start": [], "end": []} for way in ("full", "incremental")
    }
    same = True
    for _ in range(args.rounds):
        for way in ("full", "incremental"):
            times, text = _feed(tok, ids, incremental=way == "incremental")
            same &= text == want
            w = args.window
            per[way]["start"].append(statistics.median(times[:w]) * 1e6)
            per[way]["end"].append(statistics.median(times[-w - 1 : -1]) * 1e6)  # not the flush
    result = {
        "model": args.model,
        "tokens": args.tokens,
        "window": args.window,
        "rounds": args.rounds,
        "final_text_equal": same,
        "us_per_token": {
            way: {end: round(statistics.median(v), 1) for end, v in ends.items()}
            for way, ends in per.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"{args.tokens}-token stream, {args.model} tokenizer, medians of {args.rounds} rounds")
    print(f"final text equal to a full decode: {same}\n")
    print(f"| way | µs/token, first {args.window} | µs/token, last {args.window} | end/start |")
    print("|---|---|---|---|")
    for way, ends in result["us_per_token"].items():
        print(f"| {way} | {ends['start']} | {ends['end']} | {ends['end'] / ends['start']:.1f}x |")
    return result


if __name__ == "__main__":
    main()
