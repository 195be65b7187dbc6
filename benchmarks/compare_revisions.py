"""The same benchmarks on two revisions of this repository, alternating, in one run.

    python -m benchmarks.compare_revisions [--before c213dfb] [--rounds 2]

Checks the `--before` revision out into a temporary git worktree and runs, in turn on the
before tree and on this working tree, the LatentSeek engine benchmark (its module was
`server.tools.bench_latentseek` before the restructuring and is `benchmarks.bench_latentseek`
now) and the runner throughput benchmark (`server.tools.bench_runner`, now
`benchmarks.bench_runner`), each in its own process with the same interpreter and
arguments. Rounds alternate before/after so drift on the machine hits both sides; the
table gives the median of each figure per side and the after/before ratio. It measures; it
asserts nothing. Run it on a quiet machine.

It does not compare answers (the benchmarks' own `same texts and rewards` line does
that against the paper pattern, and the test suite checks behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# benchmark name -> (module before, module after, arguments, figures to report)
BENCHMARKS = {
    "latentseek": (
        "server.tools.bench_latentseek",
        "benchmarks.bench_latentseek",
        ["--requests", "4", "--steps", "3", "--paper-requests", "0", "--json"],
        ["engine_s_per_request", "one_by_one_s", "concurrent_s"],
    ),
    "runner": (
        "server.tools.bench_runner",
        "benchmarks.bench_runner",
        ["--json"],
        ["latentserve runner, batch 1", "latentserve runner, batch 8"],
    ),
}


def _last_json(stdout: str) -> dict:
    """The JSON object a benchmark prints last (one line or indented)."""
    start = stdout.rfind("\n{")
    return json.loads(stdout[start + 1 :] if start >= 0 else stdout)


def _run(tree: Path, module: str, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{module} in {tree} failed:\n{proc.stderr[-3000:]}")
    return _last_json(proc.stdout)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="c213dfb", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)

    with tempfile.TemporaryDirectory(prefix="latentserve-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            results: dict = {n: {"before": [], "after": []} for n in names}
            for r in range(args.rounds):
                for name in names:
                    old, new, bargs, _ = BENCHMARKS[name]
                    for side, tree, module in (("before", before, old), ("after", ROOT, new)):
                        fig = _run(tree, module, bargs)
                        results[name][side].append(fig)
                        print(f"round {r + 1} {name} {side}: done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False
            )

    summary = {}
    print(f"\nbefore = {args.before}, after = working tree, median of {args.rounds} rounds\n")
    print("| benchmark | figure | before | after | after/before |\n|---|---|---|---|---|")
    for name in names:
        for key in BENCHMARKS[name][3]:
            b = statistics.median(f[key] for f in results[name]["before"])
            a = statistics.median(f[key] for f in results[name]["after"])
            summary[f"{name}: {key}"] = {"before": b, "after": a, "ratio": a / b}
            print(f"| {name} | {key} | {b:.3f} | {a:.3f} | {a / b:.3f} |")
    print("\n(latentseek figures are seconds, lower is better; runner figures tokens/s)")
    if args.json:
        print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
