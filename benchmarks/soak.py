"""Soak run: a bounded steady mixed load against a real `latentserve serve` process.

    python -m benchmarks.soak --minutes 5 [--model default] [--concurrency 4] \
        [--latent-fraction 0.25] [--max-tokens 32] [--json soak.json]

Starts the server as a child process, sends batches of streamed chat requests (a share
refined with LatentSeek) with `bench_serve.run_load` until `--minutes` have passed, and
samples the server's resident memory (/proc/PID/status VmRSS) after each batch. Prints
requests answered, the status codes seen, 5xx count, RSS after the warm-up batch, at the
end and its growth, then stops the server with SIGTERM (it must exit 0). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter

from server.tools.problems import DEFAULT_GSM8K


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--data", default=DEFAULT_GSM8K, help="GSM8K-format JSONL (default: the 50-row sample)"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="requests per load batch")
    parser.add_argument("--latent-fraction", type=float, default=0.25)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from server.tools.bench_serve import build_requests, run_load
    from tests.support.live import ServerProcess

    server_args = ["--model", args.model, "--device", "cpu"]
    server_args += ["--max-batch-size", str(args.concurrency), "--log-level", "warning"]
    statuses: Counter = Counter()
    rss: list[tuple[float, float]] = []
    answered = 0
    with ServerProcess(server_args) as server:
        start = time.monotonic()
        round_ = 0
        while time.monotonic() - start < args.minutes * 60:
            bodies = build_requests(
                args.data, args.batch, args.max_tokens, args.latent_fraction, 2, seed=round_
            )
            results, _ = asyncio.run(run_load(server.url, bodies, args.concurrency, seed=round_))
            statuses.update(r.status or "error" for r in results)
            answered += sum(r.ok for r in results)
            rss.append((time.monotonic() - start, _rss_mib(server.proc.pid)))
            print(
                f"{rss[-1][0]:7.1f} s  answered {answered}  RSS {rss[-1][1]:.1f} MiB",
                flush=True,
            )
            round_ += 1
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=120)
    warm, end = rss[0][1], rss[-1][1]
    report = {
        "minutes": args.minutes,
        "requests": sum(statuses.values()),
        "answered_200": answered,
        "statuses": {str(k): v for k, v in statuses.items()},
        "server_errors_5xx": sum(v for k, v in statuses.items() if str(k).startswith("5")),
        "rss_after_warmup_mib": warm,
        "rss_end_mib": end,
        "rss_growth_pct": 100 * (end - warm) / warm,
        "exit_code": code,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "rss_samples": rss}, f, indent=1)
    return report


if __name__ == "__main__":
    main()
