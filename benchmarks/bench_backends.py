"""The vllm backend under load: against `vllm serve`, and against the hf backend.

    python -m benchmarks.bench_backends [--num-requests 64] [--concurrency 8]
        [--max-tokens 64] [--mixed-requests 32] [--latent-fraction 0.25] [--rounds 3]
        [--json out.json]

One run, one machine, one client (`server.tools.bench_serve.run_load`, streamed chat
completions of GSM8K questions, greedy). For each pair below both servers run as child
processes (an idle one costs no CPU), each is warmed with `--warmup` requests, then the
same load goes to each `--rounds` times, the order flipping every round; the summary is
the median over rounds (on this 2-core machine one round varies by about ±5%):
1. plain completions: `vllm serve` (vLLM's own OpenAI server, same model directory,
   fp32, eager, prefix caching, `--max-num-seqs` = our batch size) against
   `latentserve serve --backend vllm`: request throughput and median latency, and their
   ratios (the issue's goals: ≥ 0.9× throughput, p50 within 10%);
2. mixed load (`--latent-fraction` of `--mixed-requests` carry LatentSeek with the
   reference reward): `--backend vllm` against `--backend hf`.
Prints the tables and a summary; a benchmark, nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from server.tools.problems import DEFAULT_GSM8K


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--data", default=DEFAULT_GSM8K, help="GSM8K-format JSONL (default: the 50-row sample)"
    )
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--mixed-requests", type=int, default=32)
    parser.add_argument("--latent-fraction", type=float, default=0.25)
    parser.add_argument("--refine-steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per server")
    parser.add_argument("--logs", default="bench-backends-logs", help="server logs go here")
    parser.add_argument("--only", choices=["plain", "mixed"], help="run one comparison")
    parser.add_argument("--json", help="write every summary here")
    args = parser.parse_args(argv)

    from server.engine.loader import resolve_model_dir
    from server.tools.bench_serve import build_requests, table

    model_dir, name = resolve_model_dir(args.model)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    ours = [
        "--model",
        args.model,
        "--max-batch-size",
        str(args.max_batch_size),
        "--vllm-kv-cache-gib",
        str(args.kv_cache_gib),
        "--log-level",
        "warning",
    ]
    # `vllm serve` is this module: vllm-cpu's `vllm` script dies asking for the version of a
    # distribution named "vllm" (the package is "vllm-cpu"), so the server runs directly.
    vllm_cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    vllm_cmd.append(str(model_dir))
    vllm_args = [
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--enable-prefix-caching",
        "--max-num-seqs",
        str(args.max_batch_size),
        "--generation-config",
        "vllm",  # vLLM's sampling defaults, not the model's: requests say greedy anyway
        "--disable-log-stats",
        "--uvicorn-log-level",
        "warning",
    ]

    def bodies(n, share):
        out = build_requests(args.data, n, args.max_tokens, share, args.refine_steps)
        for body in out:
            body["model"] = name
        return out

    plain = bodies(args.num_requests + args.warmup, 0.0)
    mixed = bodies(args.mixed_requests + args.warmup, args.latent_fraction)
    ours_vllm = (None, [*ours, "--backend", "vllm"])
    pairs = []
    if args.only in (None, "plain"):
        pairs.append(("plain", plain, ("vllm serve", (vllm_cmd, vllm_args)), ("ours", ours_vllm)))
    if args.only in (None, "mixed"):
        hf = (None, [*ours, "--backend", "hf"])
        pairs.append(("mixed", mixed, ("backend vllm", ours_vllm), ("backend hf", hf)))
    runs: dict[str, dict] = {}
    for load_name, load, *servers in pairs:
        rounds = _alternate(load_name, load, servers, args, logs)
        for server_name, summaries in rounds.items():
            title = f"{load_name}: {server_name}"
            runs[title] = {"rounds": summaries, "median": _median_summary(summaries)}
            for i, summary in enumerate(summaries):
                print(table(summary, f"{title}, round {i + 1}"), flush=True)
    result = {"args": vars(args), "runs": runs, "ratios": _ratios(runs)}
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def _alternate(load_name, load, servers, args, logs: Path) -> dict[str, list]:
    """Both servers up (an idle one costs no CPU), warmed; then `--rounds` rounds of the
    same load on each, the order flipping every round, so drift hits both alike."""
    from server.tools.bench_serve import run_load, summarize
    from tests.support.live import ServerProcess

    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (cmd, cli) in servers:
            log = stack.enter_context(open(logs / f"{load_name}-{name.replace(' ', '-')}.log", "w"))
            server = stack.enter_context(
                ServerProcess(cli, stdout=log, start_timeout=600, command=cmd)
            )
            urls[name] = server.url
            asyncio.run(run_load(server.url, load[: args.warmup], args.concurrency))
        out: dict[str, list] = {name: [] for name in urls}
        for r in range(args.rounds):
            order = list(urls) if r % 2 == 0 else list(urls)[::-1]
            for name in order:
                results, wall = asyncio.run(
                    run_load(urls[name], load[args.warmup :], args.concurrency)
                )
                out[name].append(summarize(results, wall))
                print(
                    f"{load_name} round {r + 1} {name}: "
                    f"{out[name][-1]['request_throughput']:.3f} req/s",
                    flush=True,
                )
    return out


def _median_summary(summaries: list[dict]) -> dict:
    """Median over rounds of throughput and of the per-round median latencies."""
    import statistics

    return {
        "request_throughput": statistics.median(s["request_throughput"] for s in summaries),
        "e2e_p50_ms": statistics.median(s["e2e_latency_ms"]["median"] for s in summaries),
        "ttft_p50_ms": statistics.median(s["ttft_ms"]["median"] for s in summaries),
        "failed_requests": sum(s["failed_requests"] for s in summaries),
    }


def _ratios(runs: dict) -> dict:
    out = {}
    for load, a, b, label in (
        ("plain", "ours", "vllm serve", "plain, latentserve --backend vllm / vllm serve"),
        ("mixed", "backend vllm", "backend hf", "mixed, --backend vllm / --backend hf"),
    ):
        x, y = runs.get(f"{load}: {a}"), runs.get(f"{load}: {b}")
        if x and y:
            x, y = x["median"], y["median"]
            out[f"{label}: throughput"] = x["request_throughput"] / y["request_throughput"]
            out[f"{label}: p50 latency"] = x["e2e_p50_ms"] / y["e2e_p50_ms"]
    return out


if __name__ == "__main__":
    main()
