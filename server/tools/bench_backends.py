"""The vllm backend under load: against `vllm serve`, and against the hf backend.

    python -m server.tools.bench_backends [--num-requests 64] [--concurrency 8]
        [--max-tokens 64] [--mixed-requests 32] [--latent-fraction 0.25] [--json out.json]

One run, one machine, one client (`server.tools.bench_serve.run_load`, streamed chat
completions of GSM8K questions, greedy), each server started fresh as a child process,
warmed with `--warmup` requests, then measured, then stopped:
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
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data/gsm8k/train.jsonl")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--mixed-requests", type=int, default=32)
    parser.add_argument("--latent-fraction", type=float, default=0.25)
    parser.add_argument("--refine-steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4)
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
    vllm_cmd = [str(Path(sys.executable).with_name("vllm")), "serve", str(model_dir)]
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

    runs: dict[str, dict] = {}
    plain = bodies(args.num_requests + args.warmup, 0.0)
    mixed = bodies(args.mixed_requests + args.warmup, args.latent_fraction)
    plan = []
    if args.only in (None, "plain"):
        plan += [
            ("vllm serve, plain", vllm_cmd, vllm_args, plain),
            ("latentserve --backend vllm, plain", None, [*ours, "--backend", "vllm"], plain),
        ]
    if args.only in (None, "mixed"):
        plan += [
            ("latentserve --backend vllm, mixed", None, [*ours, "--backend", "vllm"], mixed),
            ("latentserve --backend hf, mixed", None, [*ours, "--backend", "hf"], mixed),
        ]
    for i, (title, cmd, cli, load) in enumerate(plan):
        summary = _warm_then_measure(cmd, cli, load, args, logs / f"server-{i}.log")
        runs[title] = summary
        print(table(summary, title), flush=True)
    result = {"args": vars(args), "runs": runs, "ratios": _ratios(runs)}
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def _warm_then_measure(cmd, cli, load, args, log_path) -> dict:
    """Start the server; the first `--warmup` bodies warm it, the rest are measured."""
    from server.tools.bench_serve import run_load, summarize
    from server.tools.live import ServerProcess

    with (
        open(log_path, "w") as log,
        ServerProcess(cli, stdout=log, start_timeout=600, command=cmd) as server,
    ):
        asyncio.run(run_load(server.url, load[: args.warmup], args.concurrency))
        results, wall = asyncio.run(run_load(server.url, load[args.warmup :], args.concurrency))
    return summarize(results, wall)


def _ratios(runs: dict) -> dict:
    out = {}
    peer, ours = runs.get("vllm serve, plain"), runs.get("latentserve --backend vllm, plain")
    if peer and ours:
        out["plain throughput, ours / vllm serve"] = (
            ours["request_throughput"] / peer["request_throughput"]
        )
        out["plain p50 latency, ours / vllm serve"] = (
            ours["e2e_latency_ms"]["median"] / peer["e2e_latency_ms"]["median"]
        )
    v, h = (
        runs.get("latentserve --backend vllm, mixed"),
        runs.get("latentserve --backend hf, mixed"),
    )
    if v and h:
        out["mixed throughput, vllm / hf backend"] = (
            v["request_throughput"] / h["request_throughput"]
        )
        out["mixed p50 latency, vllm / hf backend"] = (
            v["e2e_latency_ms"]["median"] / h["e2e_latency_ms"]["median"]
        )
    return out


if __name__ == "__main__":
    main()
