"""Goodput under overload: `--refinement-policy fixed` against `adaptive`, one run.

    python -m benchmarks.bench_goodput [--requests 32] [--steps 8] [--overload 2]

Every request is a LatentSeek refinement (GSM8K-sample questions, reference reward,
`--steps` steps, `latent.min_steps` 1, `--max-tokens` answer tokens), streamed through
`latentserve bench serve`'s load generator against an in-process server on the default
model (one server per policy, the same loaded weights, one after the other):
1. the sustainable rate R: requests answered per second by the `fixed` server under a
   closed loop of `--max-batch-size` requests in flight;
2. the deadline D: `--deadline-factor` times the median latency of that closed loop;
3. Poisson arrivals at `--overload` x R, the same arrival times for both policies;
   goodput = requests answered within D, per second of the run. Prints both sides, the
   ratio, and how many refinements the adaptive server cut (its budget-cut counter).
A benchmark, not a test: it asserts nothing. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--deadline-factor", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from server.app import build_app
    from server.config import ServerConfig
    from server.engine.loader import load_model
    from server.tools.bench_serve import build_requests, run_load
    from server.tools.problems import DEFAULT_GSM8K
    from tests.support.live import LiveServer, metric

    loaded = load_model(args.model, device="cpu", dtype="float32")
    bodies = build_requests(DEFAULT_GSM8K, args.requests, args.max_tokens, 1.0, args.steps)
    for body in bodies:
        body["latent"]["min_steps"] = 1

    def serve(policy: str) -> LiveServer:
        config = ServerConfig(
            model=args.model,
            max_batch_size=args.max_batch_size,
            refinement_policy=policy,
            max_queued_requests=4 * args.requests,
            log_level="warning",
        )
        return LiveServer(build_app(config, loaded=loaded))

    def load(url, rate, concurrency, subset=None):
        sent = bodies if subset is None else bodies[:subset]
        results, wall = asyncio.run(run_load(url, sent, concurrency, rate, seed=1))
        return results, wall

    figures: dict = {"requests": args.requests, "steps": args.steps}
    with serve("fixed") as live:
        load(live.url, float("inf"), args.max_batch_size, subset=2)  # warm-up
        closed, wall = load(live.url, float("inf"), args.max_batch_size)
        rate = sum(r.ok for r in closed) / wall
        deadline = args.deadline_factor * statistics.median(r.latency for r in closed if r.ok)
        figures |= {"sustained_rate": rate, "deadline_s": deadline}
        print(f"sustained {rate:.3f} req/s; deadline {deadline:.1f} s", flush=True)
        fixed, fixed_wall = load(live.url, args.overload * rate, 4 * args.requests)
    with serve("adaptive") as live:
        load(live.url, float("inf"), args.max_batch_size, subset=2)  # warm-up
        adaptive, adaptive_wall = load(live.url, args.overload * rate, 4 * args.requests)
        figures["adaptive_cuts"] = metric(live.url, "latentserve:refinement_budget_cuts_total")

    def summary(results, wall):
        good = sum(r.ok and r.latency <= deadline for r in results)
        return {
            "answered": sum(r.ok for r in results),
            "within_deadline": good,
            "goodput_per_s": good / wall,
            "wall_s": wall,
            "p50_latency_s": statistics.median(r.latency for r in results if r.ok),
        }

    figures["fixed"] = summary(fixed, fixed_wall)
    figures["adaptive"] = summary(adaptive, adaptive_wall)
    f, a = figures["fixed"], figures["adaptive"]
    figures["goodput_ratio"] = (
        a["goodput_per_s"] / f["goodput_per_s"] if f["goodput_per_s"] else None
    )
    print(f"\narrivals at {args.overload:g} x {rate:.3f} req/s, deadline {deadline:.1f} s\n")
    print("| policy | answered | within deadline | goodput req/s | p50 latency s |")
    print("|---|---|---|---|---|")
    for name in ("fixed", "adaptive"):
        s = figures[name]
        print(
            f"| {name} | {s['answered']} | {s['within_deadline']} | {s['goodput_per_s']:.3f} "
            f"| {s['p50_latency_s']:.1f} |"
        )
    ratio = figures["goodput_ratio"]
    print(f"\nadaptive / fixed goodput: {ratio:.2f}x" if ratio else "\nfixed goodput 0")
    print(f"refinements the adaptive server cut: {figures['adaptive_cuts']:.0f}")
    if args.json:
        print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
