"""Replay picking rules offline on the records of one `latentserve eval --compare` run.

    python -m benchmarks.replay_picks RECORDS.jsonl[.gz] [--seek latentseek/arithmetic@8]
        [--samples best_of_n/arithmetic@12] [--threshold -0.2]

The records (`eval --compare ... --records FILE`) hold, per problem, every candidate a
method produced: its text, final answer, whether it is right, its reward and its token
cost. A LatentSeek run and a best-of-N run of the same problems (same seeds) give, per
problem, the greedy answer, LatentSeek's candidates and K samples; this script replays on
them the ways of combining the two that a program could run, at every sample budget j,
and prints accuracy and mean generated tokens per problem for each. `--seek none` with
`--samples` naming a `latentseek_best_of_n` run at `--max-steps 0 --threshold 0` (the
greedy answer, then K samples always) replays the rules that need no LatentSeek step:

  bon           best-of-j samples (`choose_best`)
  greedy+bon    the greedy answer and j samples (`pool_pick`, the greedy answer voting once)
  cascade       the greedy answer if its reward passes the threshold, else greedy+bon
  hybrid        LatentSeek; if its reward never passed the threshold, LatentSeek's answers
                and j samples (`pool_pick`): what `latentseek_best_of_n` runs
  hybrid-all    LatentSeek's answers and j samples, always

It uses the server's own picking functions, so a rule replayed here is the rule a program
runs. A development tool for choosing designs on a development set: the figures that go
in docs come from `eval --compare` runs on held-out problems.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict

from latent_ops.hybrid import pool_pick


def load(path: str) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        for line in f:
            row = json.loads(line)
            runs[row["spec"]][row["problem"]] = row
    return runs


PER_CANDIDATE = ("texts", "answers", "right", "rewards", "tokens")  # a record's lists


def _split(row: dict) -> tuple[dict, dict]:
    """A greedy-then-samples row -> its greedy answer as a LatentSeek row of no step, and
    its samples."""
    head = {k: row[k][:1] for k in PER_CANDIDATE} | {"returned_right": row["right"][0]}
    return head, {k: row[k][1:] for k in PER_CANDIDATE}


def rules(
    seek: dict, samples: dict, j: int, threshold: float, latent: bool
) -> dict[str, tuple[bool, int]]:
    """rule -> (right, tokens) for one problem at sample budget j; the hybrids only when
    `seek` holds a LatentSeek run (`latent`)."""
    g_text, g_reward, g_cost = seek["texts"][0], seek["rewards"][0], seek["tokens"][0]
    s_texts, s_rewards = samples["texts"][:j], samples["rewards"][:j]
    s_right, s_cost = samples["right"][:j], sum(samples["tokens"][:j])

    def pooled(texts, rewards, right, n_seek):
        i = pool_pick(rewards + s_rewards, texts + s_texts, n_seek)
        return (right + s_right)[i]

    out = {}
    if j:
        out["bon"] = (pooled([], [], [], 0), s_cost)
    out["greedy+bon"] = (pooled([g_text], [g_reward], [seek["right"][0]], 1), g_cost + s_cost)
    if g_reward is not None and g_reward > threshold:
        out["cascade"] = (seek["right"][0], g_cost)
    else:
        out["cascade"] = out["greedy+bon"]
    if latent:
        ls_cost = sum(seek["tokens"])
        passed = any(r is not None and r > threshold for r in seek["rewards"])
        every = pooled(seek["texts"], seek["rewards"], seek["right"], len(seek["texts"]))
        out["hybrid-all"] = (every, ls_cost + s_cost)
        out["hybrid"] = (seek["returned_right"], ls_cost) if passed else out["hybrid-all"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records")
    parser.add_argument("--seek", default="latentseek/arithmetic@8")
    parser.add_argument("--samples", default="best_of_n/arithmetic@12")
    parser.add_argument("--threshold", type=float, default=-0.2)
    parser.add_argument(
        "--json", help="write the curves here as eval's report `methods` (for its plot)"
    )
    args = parser.parse_args(argv)
    runs = load(args.records)
    samples = runs[args.samples]
    latent = args.seek != "none"
    if latent:
        seek = runs[args.seek]
    else:  # a greedy-then-samples run: its first candidate is greedy
        split = {p: _split(r) for p, r in samples.items()}
        seek, samples = {p: h for p, (h, _) in split.items()}, {p: t for p, (_, t) in split.items()}
    problems = sorted(set(seek) & set(samples))
    n = len(problems)
    k = min(len(samples[p]["texts"]) for p in problems)
    greedy = sum(seek[p]["right"][0] for p in problems) / n
    print(f"{n} problems; greedy {greedy:.3f}; K = {k} samples")
    print("| rule | samples | accuracy | tokens / problem |\n|---|---|---|---|")
    curves: dict[str, list[dict]] = defaultdict(list)
    for j in range(k + 1):
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for p in problems:
            picks = rules(seek[p], samples[p], j, args.threshold, latent)
            for name, (right, tokens) in picks.items():
                totals[name][0] += right
                totals[name][1] += tokens
        for name, (right, tokens) in sorted(totals.items()):
            print(f"| {name} | {j} | {right / n:.3f} | {tokens / n:.0f} |")
            curves[name].append({"budget": j, "accuracy": right / n, "tokens": tokens / n})
    if args.json:
        methods = [
            {"spec": f"replay: {name}", "points": pts, "accuracy": pts[-1]["accuracy"]}
            | {"tokens": pts[-1]["tokens"]}
            for name, pts in curves.items()
        ]
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "methods": methods}, f, indent=1)


if __name__ == "__main__":
    main()
