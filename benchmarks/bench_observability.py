"""What metrics and logging cost: plain-request throughput with them on and off, one run.

    python -m benchmarks.bench_observability [--model default] [--rounds 3] \
        [--num-requests 32] [--concurrency 8] [--max-tokens 32]

Loads the model once, then for each round starts the server in this process twice, in
alternating order (on/off, then off/on, ...): "on" is the default (Prometheus metrics
recorded, JSON logs at info: one access line and one `request finished` line per request),
"off" is `--no-enable-metrics --log-level warning`. Each start sends the same streamed
plain requests with `bench_serve.run_load` after a warm-up. Prints request throughput per
round, the medians and the on/off ratio. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics

from server.tools.problems import DEFAULT_GSM8K


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--data", default=DEFAULT_GSM8K, help="GSM8K-format JSONL (default: the 50-row sample)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    from server import logs
    from server.app import build_app
    from server.config import ServerConfig
    from server.engine.loader import load_model
    from server.tools.bench_serve import build_requests, run_load, summarize
    from tests.support.live import LiveServer

    loaded = load_model(args.model, device="cpu", dtype="float32")
    bodies = build_requests(args.data, args.num_requests, args.max_tokens, 0.0, 0)
    sink = io.StringIO()  # JSON log lines are formatted and written, just not to the terminal
    settings = {
        "on": dict(enable_metrics=True, log_level="info"),
        "off": dict(enable_metrics=False, log_level="warning"),
    }
    figures: dict[str, list[float]] = {"on": [], "off": []}
    for round_ in range(args.rounds):
        order = ["on", "off"] if round_ % 2 == 0 else ["off", "on"]
        for name in order:
            config = ServerConfig(
                model=args.model, max_batch_size=args.concurrency, **settings[name]
            )
            logs.configure(config.log_level, "json", stream=sink)
            with LiveServer(build_app(config, loaded=loaded)) as live:
                asyncio.run(run_load(live.url, bodies[: args.concurrency], args.concurrency))
                results, wall = asyncio.run(run_load(live.url, bodies, args.concurrency))
            s = summarize(results, wall)
            if s["failed_requests"]:
                raise SystemExit(f"{s['failed_requests']} requests failed ({name})")
            figures[name].append(s["request_throughput"])
            print(f"round {round_ + 1} {name:>3}: {s['request_throughput']:.3f} req/s", flush=True)
    on, off = statistics.median(figures["on"]), statistics.median(figures["off"])
    print()
    print("| metrics + logs | median req/s | per round |")
    print("|---|---|---|")
    for name, value in (("on", on), ("off", off)):
        rounds = ", ".join(f"{x:.3f}" for x in figures[name])
        print(f"| {name} | {value:.3f} | {rounds} |")
    print(f"\non/off throughput: {on / off:.3f} (cost {100 * (1 - on / off):.1f}%)")
    return {"on": figures["on"], "off": figures["off"], "ratio": on / off}


if __name__ == "__main__":
    main()
