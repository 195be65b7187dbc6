"""Serving benchmark: a load generator for any OpenAI-compatible server, reported like
`vllm bench serve`.

    latentserve bench serve --url http://127.0.0.1:8000 --num-requests 64 \
        --concurrency 8 --max-tokens 64 [--latent-fraction 0.25] [--json out.json]

Sends `--num-requests` streamed chat completions built from GSM8K questions (`--data`),
at most `--concurrency` in flight and, with `--request-rate R`, arrivals as a Poisson
process of R requests/s. With `--latent-fraction f`, that share of requests carries a
LatentSeek `latent` field (reference reward with the problem's answer, `--refine-steps`);
a peer server without refinement is measured with f = 0.
Reports successful and failed requests, duration, request throughput, output tokens/s,
and mean/median/p99 of time to first token (TTFT), time per output token after the first
(TPOT), inter-token latency between streamed chunks (ITL) and end-to-end latency, as a
table and, with `--json`, a file. Output tokens are the server's `usage.completion_tokens`.
`run_load` is also called in process by other benchmarks. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field

from server.tools.problems import DEFAULT_GSM8K


@dataclass
class Result:
    ok: bool
    status: int = 0
    ttft: float | None = None
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    refined: bool = False
    error: str = ""


def build_requests(data: str, n: int, max_tokens: int, refined_share: float, steps: int, seed=0):
    from server.tools.problems import load_problems

    problems = load_problems(data)
    rng = random.Random(seed)
    rng.shuffle(problems)
    bodies = []
    for i in range(n):
        p = problems[i % len(problems)]
        body = {
            "messages": [{"role": "user", "content": p.question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if int((i + 1) * refined_share) > int(i * refined_share):  # exactly n*share, spread
            body["latent"] = {
                "method": "latentseek",
                "max_steps": steps,
                "reward": {"type": "reference", "reference_answer": p.answer},
            }
        bodies.append(body)
    return bodies


async def _one(client, body: dict) -> Result:
    import httpx

    res = Result(ok=False, refined="latent" in body)
    start = time.perf_counter()
    last = start
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = (await resp.aread()).decode(errors="replace")[:200]
                res.latency = time.perf_counter() - start
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    if res.ttft is None:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
    except httpx.HTTPError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        res.latency = time.perf_counter() - start
        return res
    res.latency = time.perf_counter() - start
    res.ok = True
    return res


async def run_load(
    url: str, bodies: list[dict], concurrency: int, request_rate: float = float("inf"), seed=0
):
    """Send every body; returns (results in order, wall seconds)."""
    import httpx

    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(3600, connect=30)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, limits=limits) as c:

        async def guarded(body):
            async with limit:
                return await _one(c, body)

        start = time.perf_counter()
        tasks = []
        for body in bodies:
            tasks.append(asyncio.create_task(guarded(body)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def summarize(results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.ok]

    def stats(values, scale=1000.0):
        values = [v * scale for v in values if v is not None]
        if not values:
            return {"mean": None, "median": None, "p99": None}
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
        return {
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "p99": p99,
        }

    tpot = [
        (r.latency - r.ttft) / (r.output_tokens - 1)
        for r in ok
        if r.ttft is not None and r.output_tokens > 1
    ]
    out_tokens = sum(r.output_tokens for r in ok)
    return {
        "successful_requests": len(ok),
        "failed_requests": len(results) - len(ok),
        "failed_statuses": sorted({r.status for r in results if not r.ok}),
        "refined_requests": sum(r.refined for r in results),
        "duration_s": wall,
        "request_throughput": len(ok) / wall if wall else 0.0,
        "output_token_throughput": out_tokens / wall if wall else 0.0,
        "total_output_tokens": out_tokens,
        "ttft_ms": stats([r.ttft for r in ok]),
        "tpot_ms": stats(tpot),
        "itl_ms": stats([x for r in ok for x in r.itl]),
        "e2e_latency_ms": stats([r.latency for r in ok]),
        "plain_e2e_latency_ms": stats([r.latency for r in ok if not r.refined]),
        "refined_e2e_latency_ms": stats([r.latency for r in ok if r.refined]),
    }


def table(summary: dict, title: str = "") -> str:
    def f(v, spec=".2f"):
        return "n/a" if v is None else format(v, spec)

    lines = [f"============ {title or 'Serving Benchmark Result'} ============"]
    lines.append(f"{'Successful requests:':<40}{summary['successful_requests']}")
    lines.append(f"{'Failed requests:':<40}{summary['failed_requests']}")
    lines.append(f"{'Refined requests:':<40}{summary['refined_requests']}")
    lines.append(f"{'Benchmark duration (s):':<40}{summary['duration_s']:.2f}")
    lines.append(f"{'Total generated tokens:':<40}{summary['total_output_tokens']}")
    lines.append(f"{'Request throughput (req/s):':<40}{summary['request_throughput']:.3f}")
    lines.append(
        f"{'Output token throughput (tok/s):':<40}{summary['output_token_throughput']:.2f}"
    )
    for key, name in (
        ("ttft_ms", "TTFT"),
        ("tpot_ms", "TPOT"),
        ("itl_ms", "ITL"),
        ("e2e_latency_ms", "E2E latency"),
        ("plain_e2e_latency_ms", "plain E2E"),
        ("refined_e2e_latency_ms", "refined E2E"),
    ):
        s = summary[key]
        for stat in ("mean", "median", "p99"):
            lines.append(f"{f'{stat.capitalize()} {name} (ms):':<40}{f(s[stat])}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server root")
    parser.add_argument(
        "--data", default=DEFAULT_GSM8K, help="GSM8K-format JSONL (default: the 50-row sample)"
    )
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="Poisson arrivals per second"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--latent-fraction", type=float, default=0.0, help="share of requests refined"
    )
    parser.add_argument("--refine-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-plain",
        action="store_true",
        help="first the same load with no request refined (same arrivals), then the mixed "
        "one; reports plain requests' latency under both and the ratio",
    )
    parser.add_argument("--json", help="write the summary here")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _load(args, fraction: float) -> dict:
    bodies = build_requests(
        args.data, args.num_requests, args.max_tokens, fraction, args.refine_steps
    )
    results, wall = asyncio.run(
        run_load(args.url, bodies, args.concurrency, args.request_rate, args.seed)
    )
    return summarize(results, wall)


def run(args) -> dict:
    if not args.compare_plain:
        summary = _load(args, args.latent_fraction)
        print(table(summary))
    else:  # both loads in one run, the same arrival process
        plain = _load(args, 0.0)
        print(table(plain, "Plain-only load"))
        mixed = _load(args, args.latent_fraction)
        print(table(mixed, f"Mixed load ({args.latent_fraction:g} refined)"))
        a, b = mixed["plain_e2e_latency_ms"], plain["plain_e2e_latency_ms"]
        ratio = {k: a[k] / b[k] if a[k] and b[k] else None for k in ("median", "p99")}
        summary = {"plain_only": plain, "mixed": mixed, "plain_latency_ratio": ratio}
        print(
            f"\nplain requests' E2E latency, mixed / plain-only: median "
            f"{ratio['median'] or float('nan'):.2f}x, p99 {ratio['p99'] or float('nan'):.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **summary}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
