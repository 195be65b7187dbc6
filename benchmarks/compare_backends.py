"""The vllm backend against the hf backend: same answers, same refinement, what memory.

    python -m benchmarks.compare_backends [--data GSM8K.jsonl]
        [--prompts 20] [--latentseek 4] [--max-tokens 64] [--json out.json]

In one process, on the same model and chat-formatted questions (greedy):
1. `--prompts` plain completions through an engine with `--backend hf`, then through one
   with `--backend vllm`; counts identical token sequences, and for each that differs the
   first differing position with the hf top-2 log-probability margin there (a near tie
   that fp32 summation order can flip, or not);
2. LatentSeek on the first `--latentseek` questions with the reference reward (each
   problem's answer; up to `--steps` steps): reward histories and every step's candidate
   text compared;
3. memory: the proportional set size (PSS, so shared pages count once) of this process
   and its children (vLLM's) with each engine started and after its run.
Prints a summary (JSON with `--json`). `compare()` is what the slow vllm test calls.
Code that starts vLLM runs under `if __name__ == "__main__":` (vLLM spawns processes).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from server.tools.problems import DEFAULT_GSM8K


def pss_bytes(pids) -> int:
    """Sum of /proc/PID/smaps_rollup Pss over pids (Linux); 0 where it cannot be read."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _name(pid: int) -> str:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "?"
    return f"{pid} {comm}"


def _process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def compare(
    loaded,
    problems: list,
    latentseek_n: int = 4,
    steps: int = 3,
    max_tokens: int = 64,
    vllm_kv_cache_gib: int = 2,
) -> dict:
    from latent_ops.latentseek import LatentSeekConfig, latentseek
    from latent_ops.program import Generate, SamplingParams
    from latent_ops.rewards import ReferenceReward
    from server.engine.build import build_engine, run_programs
    from server.refinement import chat_encoder
    from server.tools.eval import question_text

    encode = chat_encoder(loaded.tokenizer)
    questions = [question_text(p) for p in problems]  # p: server.tools.problems.Problem
    prompts = [encode([{"role": "user", "content": q}]) for q in questions]

    def programs():
        def plain(ids):
            [out] = yield [Generate(ids, SamplingParams(max_tokens=max_tokens, logprobs=2))]
            return out

        cfg = LatentSeekConfig(max_steps=steps, fraction=0.1)
        refine = [
            latentseek(ids, q, SamplingParams(max_tokens=max_tokens), cfg, reward)
            for ids, q, p in zip(prompts[:latentseek_n], questions, problems, strict=False)
            for reward in [ReferenceReward(p.answer)]
        ]
        return [plain(ids) for ids in prompts] + refine

    results, memory = {}, {}
    for backend in ("hf", "vllm"):
        engine = build_engine(
            loaded, max_batch_size=16, backend=backend, vllm_kv_cache_gib=vllm_kv_cache_gib
        )
        engine.start()
        try:
            tree = _process_tree(os.getpid())
            memory[backend] = {
                "pss_started": pss_bytes(tree),
                "processes": len(tree),
                "by_process": {_name(pid): pss_bytes([pid]) for pid in tree},
            }
            results[backend] = run_programs(engine, programs(), timeout=3600)
            memory[backend]["pss_after_run"] = pss_bytes(_process_tree(os.getpid()))
        finally:
            engine.shutdown()
    for backend, outputs in results.items():
        failed = [o for o in outputs if isinstance(o, BaseException)]
        if failed:
            raise RuntimeError(f"{backend}: {failed[0]!r}")
    n = len(prompts)
    hf, vl = results["hf"][:n], results["vllm"][:n]
    diffs = []
    for i, (a, b) in enumerate(zip(hf, vl, strict=True)):
        if a.token_ids == b.token_ids:
            continue
        at = next(
            (j for j, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
            min(len(a.token_ids), len(b.token_ids)),
        )
        margin = None
        if at < len(a.logprobs) and len(a.logprobs[at].top) == 2:
            margin = a.logprobs[at].top[0][1] - a.logprobs[at].top[1][1]
        diffs.append({"prompt": i, "first_diff": at, "hf_top2_margin": margin})
    refined = []
    for a, b in zip(results["hf"][n:], results["vllm"][n:], strict=True):
        refined.append(
            {
                "hf_rewards": a.reward_history,
                "vllm_rewards": b.reward_history,
                "same_rewards": a.reward_history == b.reward_history,
                "same_candidates": a.candidates == b.candidates,
            }
        )
    return {
        "prompts": n,
        "greedy_equal": n - len(diffs),
        "greedy_diffs": diffs,
        "latentseek": refined,
        "memory": memory,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--data", default=DEFAULT_GSM8K, help="GSM8K-format JSONL (default: the 50-row sample)"
    )
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--latentseek", type=int, default=4, help="LatentSeek requests")
    parser.add_argument("--steps", type=int, default=3, help="LatentSeek steps per request")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--vllm-kv-cache-gib", type=int, default=2)
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)

    from server.engine.loader import load_model
    from server.tools.problems import load_problems

    loaded = load_model(args.model, device="cpu", dtype="float32")
    summary = compare(
        loaded,
        load_problems(args.data, limit=args.prompts),
        args.latentseek,
        args.steps,
        args.max_tokens,
        args.vllm_kv_cache_gib,
    )
    gib = 1 << 30
    print(f"greedy: {summary['greedy_equal']}/{summary['prompts']} identical")
    for d in summary["greedy_diffs"]:
        print(
            f"  prompt {d['prompt']}: first differs at token {d['first_diff']}, "
            f"hf top-2 margin {d['hf_top2_margin']}"
        )
    same = sum(r["same_rewards"] for r in summary["latentseek"])
    print(f"latentseek: {same}/{len(summary['latentseek'])} identical reward histories")
    for backend, m in summary["memory"].items():
        print(
            f"memory {backend}: {m['pss_started'] / gib:.2f} GiB PSS started, "
            f"{m['pss_after_run'] / gib:.2f} GiB after the run, {m['processes']} processes"
        )
        for name, size in m["by_process"].items():
            print(f"  {name}: {size / gib:.2f} GiB at start")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
