"""Accuracy against compute: several methods on the same problems, one engine, one report.

`latentserve eval --compare SPECS` runs each spec on every problem in process (the
server's own programs, speculative steps off) and reports, per method and budget, the
accuracy, the mean generated tokens per problem (answers, continuations, samples and the
tokens rewards generate) and the wall seconds per problem, with one plot of accuracy
against tokens: a curve per method, its budgets as the points.

A spec is `METHOD[/REWARD][@BUDGET]`: `none`; `latentseek/arithmetic@10` (up to 10 steps);
`best_of_n/reference@8` (8 samples); `self_consistency@8`; `slr` (the adapter of
`--slr-adapter`, if any). Rewards: `reference` (the answer key), `arithmetic`,
`consistency` (`--consistency-samples`), `self`. Every budget below the run's is replayed
from that one run: LatentSeek's step k is what `max_steps: k` returns (`chosen_at_budget`),
best-of-N's j is its pick among the first j samples (`choose_best`), self-consistency's j
the majority of the first j; `latentseek_best_of_n/REWARD@K` runs LatentSeek at `--max-steps`
then K samples, and its j is the pick among LatentSeek's answers and the first j samples
(0: LatentSeek alone); the tokens at a budget are those its candidates cost.

Not here: the single-method report (`server/tools/eval.py`), problem sets (`problems.py`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from latent_ops.choices import METHODS, REWARD_TYPES, REWARDED_METHODS
from latent_ops.hybrid import pool_pick
from latent_ops.rewards import answers_equal, extract_answer
from latent_ops.sampling import choose_best, majority
from server.tools.eval import (
    InProcess,
    chosen_at_budget,
    question_text,
    reward_field,
    write_report,
)
from server.tools.eval_config import EvalConfig
from server.tools.problems import Problem, load_problems

UNBUDGETED = ("none", "slr", "contrastive")  # one point each: no budget to replay


@dataclass(frozen=True)
class Spec:
    method: str
    reward: str | None
    budget: int

    @property
    def label(self) -> str:
        if self.method == "none":
            return "greedy"
        reward = f"/{self.reward}" if self.reward else ""
        budget = "" if self.method in UNBUDGETED else f"@{self.budget}"
        return f"{self.method}{reward}{budget}"


def parse_specs(text: str, cfg: EvalConfig) -> list[Spec]:
    """'none,latentseek/arithmetic@10,...' -> specs; ValueError naming a bad one."""
    specs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, budget = item.partition("@")
        method, _, reward = head.partition("/")
        if method not in METHODS:
            raise ValueError(f"{item!r}: method must be one of {', '.join(METHODS)}")
        if reward and reward not in REWARD_TYPES:
            raise ValueError(f"{item!r}: reward must be one of {', '.join(REWARD_TYPES)}")
        needs_reward = method in REWARDED_METHODS
        if needs_reward != bool(reward):
            raise ValueError(f"{item!r}: {method} {'needs' if needs_reward else 'takes no'} reward")
        default = cfg.max_steps if method == "latentseek" else 5
        if not budget:
            n = 0 if method in UNBUDGETED else default
        elif budget.isdigit():
            n = int(budget)
        else:
            raise ValueError(f"{item!r}: the budget after @ is a whole number")
        specs.append(Spec(method, reward or None, n))
    if not specs:
        raise ValueError("no method to compare")
    return specs


def request(spec: Spec, cfg: EvalConfig, problem: Problem) -> dict:
    """The chat request for one problem under one spec."""
    body = {
        "messages": [{"role": "user", "content": question_text(problem)}],
        "max_tokens": cfg.max_tokens,
        "temperature": 0,
        "seed": 0,
    }
    m = spec.method
    keys = ("lr", "fraction", "threshold", "select")
    if m == "latentseek":
        latent = {"method": m, "max_steps": spec.budget, **{k: getattr(cfg, k) for k in keys}}
        body["latent"] = latent | {"reward": reward_field(spec.reward, cfg, problem)}
    elif m == "latentseek_best_of_n":  # LatentSeek at --max-steps, then `budget` samples
        body["temperature"] = cfg.sample_temperature
        latent = {"method": m, "max_steps": cfg.max_steps, **{k: getattr(cfg, k) for k in keys}}
        latent |= {"samples": spec.budget, "reward": reward_field(spec.reward, cfg, problem)}
        body["latent"] = latent
    elif m in ("best_of_n", "self_consistency"):
        body["temperature"] = cfg.sample_temperature
        body["latent"] = {"method": m, "samples": spec.budget}
        if spec.reward:
            body["latent"]["reward"] = reward_field(spec.reward, cfg, problem)
    elif m in ("slr", "contrastive"):
        body["latent"] = {"method": m}
        if cfg.slr_adapter:
            body["latent"]["adapter"] = "eval"
    return body


def points(spec: Spec, cfg: EvalConfig, problems: list[Problem], outputs: list) -> list[dict]:
    """[{budget, accuracy, tokens}] for every budget the run can replay."""

    def right(text: str, p: Problem) -> bool:
        return answers_equal(extract_answer(text), p.answer)

    if spec.method in UNBUDGETED:
        budgets = range(1)
    elif spec.method == "latentseek":
        budgets = range(spec.budget + 1)  # steps; 0 is the greedy answer it starts from
    elif spec.method == "latentseek_best_of_n":
        budgets = range(spec.budget + 1)  # samples; 0 is LatentSeek alone
    else:
        budgets = range(1, spec.budget + 1)  # samples
    out = []
    for k in budgets:
        correct = tokens = 0.0
        for p, o in zip(problems, outputs):
            if spec.method in UNBUDGETED:
                correct += right(o.choices[0].text, p)
                tokens += len(o.choices[0].token_ids) + o.refinement_tokens
                continue
            texts, costs = o.candidates, o.candidate_tokens
            if spec.method == "latentseek":
                ok = [right(t, p) for t in texts]
                correct += chosen_at_budget(o.reward_history, ok, k, cfg.select)
                tokens += sum(costs[: k + 1])
            elif spec.method == "latentseek_best_of_n":
                n_seek = o.sampling["latentseek_candidates"]
                ok = [right(t, p) for t in texts[:n_seek]]
                if k == 0 or o.sampling["samples"] == 0:  # LatentSeek's own answer
                    seek = o.reward_history[:n_seek]
                    correct += chosen_at_budget(seek, ok, cfg.max_steps, cfg.select)
                    tokens += sum(costs[:n_seek])
                else:
                    pick = pool_pick(o.reward_history[: n_seek + k], texts[: n_seek + k], n_seek)
                    correct += right(texts[pick], p)
                    tokens += sum(costs[: n_seek + k])
            elif spec.method == "best_of_n":
                pick = choose_best(o.reward_history[:k], texts[:k])
                correct += right(texts[pick or 0], p)
                tokens += sum(costs[:k])
            else:
                winner, _, _ = majority(texts[:k])
                correct += winner is not None and answers_equal(winner, p.answer)
                tokens += sum(costs[:k])
        n = len(problems)
        out.append({"budget": k, "accuracy": correct / n, "tokens": tokens / n})
    return out


def records(spec: Spec, problems: list[Problem], outputs: list) -> list[dict]:
    """One row per problem: its question and answer key and, per candidate (in the order
    the method produced them), its text, the final answer extracted, whether it is right, its reward and what
    it cost in generated tokens. Enough to replay other picking rules offline."""
    rows = []
    for i, (p, o) in enumerate(zip(problems, outputs)):
        if getattr(o, "candidates", None):
            texts, rewards, tokens = o.candidates, o.reward_history, o.candidate_tokens
        else:  # a plain answer: one candidate, nothing scored
            texts, rewards, tokens = [o.choices[0].text], [], [len(o.choices[0].token_ids)]
        answers = [extract_answer(t) for t in texts]
        rows.append(
            {
                "spec": spec.label,
                "problem": i,
                "key": p.answer,
                "question": p.question,
                "texts": texts,
                "answers": answers,
                "right": [answers_equal(a, p.answer) for a in answers],
                "rewards": list(rewards),
                "tokens": list(tokens),
                "sampling": getattr(o, "sampling", None),
                "returned_right": answers_equal(extract_answer(o.choices[0].text), p.answer),
            }
        )
    return rows


def run(cfg: EvalConfig, specs: list[Spec], problems: list[Problem], progress) -> dict:
    runner = InProcess(cfg, len(problems))
    methods = []
    rows_out = open(cfg.records, "w") if cfg.records else None
    try:
        for spec in specs:
            start = time.monotonic()
            bodies = [request(spec, cfg, p) for p in problems]
            results = runner.run(bodies, [question_text(p) for p in problems], progress)
            wall = time.monotonic() - start
            failed = [o for o, _ in results if isinstance(o, BaseException)]
            if failed:
                raise RuntimeError(f"{spec.label}: a problem failed: {failed[0]!r}")
            outputs = [o for o, _ in results]
            pts = points(spec, cfg, problems, outputs)
            returned = sum(
                answers_equal(extract_answer(o.choices[0].text), p.answer)
                for o, p in zip(outputs, problems)
            )
            methods.append(
                {
                    "spec": spec.label,
                    "points": pts,
                    "accuracy": pts[-1]["accuracy"],
                    # what the runs returned; the last point replays it (a check)
                    "returned_accuracy": returned / len(problems),
                    "tokens": pts[-1]["tokens"],
                    "seconds_per_problem": wall / len(problems),
                }
            )
            print(table_row(methods[-1]), file=sys.stderr)
            if rows_out:
                rows_out.writelines(json.dumps(r) + "\n" for r in records(spec, problems, outputs))
                rows_out.flush()
    finally:
        runner.close()
        if rows_out:
            rows_out.close()
    return {"config": cfg.model_dump(exclude={"api_key"}), "methods": methods}


def table_row(m: dict) -> str:
    return (
        f"| {m['spec']} | {m['accuracy']:.3f} | {m['tokens']:.0f} | "
        f"{m['seconds_per_problem']:.2f} |"
    )


def table(report: dict) -> str:
    lines = [
        "| method | accuracy | generated tokens / problem | s / problem |",
        "|---|---|---|---|",
        *(table_row(m) for m in report["methods"]),
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for m in report["methods"]:
        xs = [p["tokens"] for p in m["points"]]
        ys = [p["accuracy"] for p in m["points"]]
        single = len(xs) == 1  # greedy: one point, drawn large so no curve hides it
        ax.plot(xs, ys, marker="*" if single else "o", ms=12 if single else 3, label=m["spec"])
    c = report["config"]
    ax.set_xscale("log")
    ax.set_xlabel("mean generated tokens per problem (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{c['data']} · {c['model']} · {c['limit'] or 'all'} problems", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(cfg: EvalConfig) -> int:
    from tqdm import tqdm

    try:
        specs = parse_specs(cfg.compare, cfg)
        problems = load_problems(cfg.data, cfg.limit)
    except (OSError, ValueError) as exc:
        print(f"latentserve eval: error: {exc}", file=sys.stderr)
        return 2
    if cfg.url:
        print("latentserve eval: error: --compare runs in process (no --url)", file=sys.stderr)
        return 2
    total = len(problems) * len(specs)
    with tqdm(total=total, desc="problems", unit="problem", file=sys.stderr) as bar:
        report = run(cfg, specs, problems, bar)
    return write_report(report, cfg.out, plot, table)
