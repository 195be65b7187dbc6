"""`latentserve eval`: accuracy of greedy decoding or LatentSeek on math word problems.

    latentserve eval --data synthetic:200,steps=1-2 --method latentseek --reward reference \
        --out report.json

Runs the server's own engine in this process (or, with `--url`, a running server over
HTTP, the same requests a client would send), all problems submitted at once so the
engine batches them. Prints a Markdown table (accuracy, mean steps, seconds per problem,
reward before and after), writes the report as JSON and a PNG of accuracy against the
step budget. Budget k's accuracy is what `max_steps: k` would have scored: refinement is
deterministic (greedy decoding, fixed updates), so a run with budget k is the first k
steps of a run with budget K; budget 0 is the greedy answer.

Options are `server/tools/eval_config.py`'s `EvalConfig`; problems come from
`server/tools/problems.py`; scoring is `latent_ops.rewards`' answer
extraction. This module does not serve anything.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from server.tools.eval_config import EvalConfig
from server.tools.problems import Problem, load_problems

INSTRUCTION = "\nPut the final answer in \\boxed{}."


def question_text(problem: Problem) -> str:
    return problem.question + INSTRUCTION


def latent_field(cfg: EvalConfig, problem: Problem) -> dict | None:
    """The request's `latent` field for one problem (None for plain decoding)."""
    if cfg.method == "none":
        return None
    if cfg.method in ("slr", "contrastive"):
        from latent_ops.slr import REQUEST_FIELDS

        keys = [k for k in REQUEST_FIELDS if k != "layout"]  # eval runs the default layout
        latent = {"method": cfg.method, **{k: getattr(cfg, k) for k in keys}}
        if cfg.slr_adapter:
            name = cfg.slr_adapter.rpartition("=")[0]  # [NAME=]DIR: the server's name
            latent["adapter"] = name if cfg.url and name else "eval"
        return {k: v for k, v in latent.items() if v is not None}
    reward = reward_field(cfg.reward, cfg, problem)
    keys = ("max_steps", "lr", "fraction", "threshold", "select")
    return {"method": "latentseek", **{k: getattr(cfg, k) for k in keys}, "reward": reward}


def reward_field(kind: str, cfg: EvalConfig, problem: Problem) -> dict:
    """The request's reward object of type `kind` for one problem."""
    if kind == "reference":
        return {"type": "reference", "reference_answer": problem.answer}
    if kind == "consistency":
        return {"type": "consistency", "samples": cfg.consistency_samples}
    return {"type": kind}


# ---- running ---------------------------------------------------------------------------
def request_body(cfg: EvalConfig, problem: Problem) -> dict:
    """The chat-completion request for one problem: the same in process and over HTTP."""
    body = {
        "messages": [{"role": "user", "content": question_text(problem)}],
        "max_tokens": cfg.max_tokens,
        "temperature": 0,
    }
    latent = latent_field(cfg, problem)
    if latent is not None:
        body["latent"] = latent
    return body


class InProcess:
    """The model, an engine and the server's limits, to run request bodies in process
    through the server's own `build_program` (so the programs are the ones `--url` runs).
    Speculative LatentSeek steps are off, so each step's tokens are its own."""

    def __init__(self, cfg: EvalConfig, max_requests: int):
        from server.config import ServerConfig
        from server.engine.build import build_engine
        from server.engine.loader import load_model
        from server.refinement import chat_encoder

        loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        self.encode = chat_encoder(loaded.tokenizer)
        self.engine = build_engine(
            loaded,
            max_batch_size=cfg.max_batch_size,
            max_queued_requests=max_requests + 1,
            slr_adapters={"eval": cfg.slr_adapter.rpartition("=")[2]} if cfg.slr_adapter else None,
        )
        default_steps = ServerConfig.model_fields["max_refinement_steps"].default
        self.limits = ServerConfig(
            model=cfg.model,
            verifier_max_tokens=cfg.verifier_max_tokens,
            max_refinement_steps=max(cfg.max_steps, default_steps),
            max_samples=1024,
            speculative_steps=1,
        )
        self.engine.start()

    def run(self, bodies: list[dict], questions: list[str], progress) -> list[tuple]:
        """(program output or exception, seconds to finish) per request body, run together."""
        from server.engine.build import run_programs
        from server.protocol import ChatCompletionRequest
        from server.refinement import PromptRecord, build_program

        programs = []
        for request, question in zip(bodies, questions):
            body = ChatCompletionRequest.model_validate(request)
            prompt = PromptRecord(self.encode(request["messages"]), question, request["max_tokens"])
            program, _ = build_program(
                body, self.limits, [prompt], None, self.encode, self.adapters
            )
            programs.append(program)
        start = time.monotonic()
        finished = [0.0] * len(programs)

        def done(i, _output):
            finished[i] = time.monotonic() - start
            progress.update(1)

        return list(zip(run_programs(self.engine, programs, on_done=done), finished))

    @property
    def adapters(self) -> dict:
        return self.engine.adapters

    def close(self) -> None:
        self.engine.shutdown()


def run_in_process(cfg: EvalConfig, problems: list[Problem], progress) -> list[dict]:
    """One record per problem: text, latent summary (or None), candidate texts, seconds."""
    runner = InProcess(cfg, len(problems))
    try:
        bodies = [request_body(cfg, p) for p in problems]
        results = runner.run(bodies, [question_text(p) for p in problems], progress)
    finally:
        runner.close()
    records = []
    for output, seconds in results:
        if isinstance(output, BaseException):
            raise RuntimeError(f"a problem failed: {output!r}") from output
        record = {"text": output.choices[0].text, "latent": output.summary(), "seconds": seconds}
        if record["latent"] is not None:
            record["candidates"] = output.candidates
        records.append(record)
    return records


def run_remote(cfg: EvalConfig, problems: list[Problem], progress) -> list[dict]:
    """The same requests over HTTP (`/v1/chat/completions`), `--concurrency` at a time."""
    import httpx

    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    client = httpx.Client(base_url=cfg.url.rstrip("/"), headers=headers, timeout=3600)

    def one(p: Problem) -> dict:
        start = time.monotonic()
        resp = client.post("/v1/chat/completions", json=request_body(cfg, p))
        if resp.status_code != 200:
            raise RuntimeError(f"server answered {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        progress.update(1)
        return {
            "text": data["choices"][0]["message"]["content"],
            "latent": data.get("latent"),
            "seconds": time.monotonic() - start,
        }

    with client, ThreadPoolExecutor(cfg.concurrency) as pool:
        return list(pool.map(one, problems))


# ---- scoring and reporting ---------------------------------------------------------------
def chosen_at_budget(rewards: list[float], candidates: list, k: int, select: str):
    """The candidate `max_steps: k` returns, given a run's rewards (one per candidate)."""
    rewards, candidates = rewards[: k + 1], candidates[: k + 1]
    if select == "last":
        return candidates[-1]
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    return candidates[best]


def score(cfg: EvalConfig, problems: list[Problem], records: list[dict], wall: float) -> dict:
    from latent_ops.rewards import answers_equal, extract_answer

    def correct(text: str, p: Problem) -> bool:
        return answers_equal(extract_answer(text), p.answer)

    rows = []
    for p, r in zip(problems, records):
        latent = r.get("latent") or {}
        rows.append(
            {
                "question": p.question,
                "gold": p.answer,
                "answer": r["text"],
                "extracted": extract_answer(r["text"]),
                "correct": correct(r["text"], p),
                "steps": latent.get("loops", latent.get("steps", 0)),
                "stopped_reason": latent.get("stopped_reason"),
                "reward_history": latent.get("reward_history", []),
                "seconds": round(r["seconds"], 3),
            }
        )
    n = len(rows) or 1
    by_budget = None
    if cfg.method in ("none", "slr", "contrastive"):
        by_budget = {0: sum(r["correct"] for r in rows) / n}
    elif all("candidates" in r or cfg.reward == "reference" for r in records):
        # candidate i was right: judged from its text in process; over HTTP the reference
        # reward itself says so (0 exactly when the extracted answer matches)
        by_budget = {k: 0.0 for k in range(cfg.max_steps + 1)}
        for p, r in zip(problems, records):
            rewards = r["latent"]["reward_history"]
            if "candidates" in r:
                right = [correct(t, p) for t in r["candidates"]]
            else:
                right = [x == 0.0 for x in rewards]
            for k in by_budget:
                if rewards:
                    by_budget[k] += chosen_at_budget(rewards, right, k, cfg.select) / n
                else:  # nothing was scored (reward error, budget): the returned answer
                    by_budget[k] += correct(r["text"], p) / n

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    summary = {
        "problems": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / n,
        "mean_steps": mean(r["steps"] for r in rows),
        "seconds_per_problem": wall / n,
        "mean_latency_s": mean(r["seconds"] for r in rows),
        "wall_s": wall,
        "reward_before": mean((r.get("latent") or {}).get("initial_reward") for r in records),
        "reward_after": mean((r.get("latent") or {}).get("final_reward") for r in records),
        "accuracy_by_budget": by_budget,
    }
    return {"config": cfg.model_dump(exclude={"api_key"}), "summary": summary, "problems": rows}


def table(report: dict) -> str:
    s, c = report["summary"], report["config"]
    label = c["method"] if c["method"] == "none" else f"{c['method']} ({c['reward']})"
    if c["method"] in ("slr", "contrastive"):
        settings = {
            k: c[k]
            for k in ("max_loops", "feedback", "residual", "eta", "gamma")
            if c[k] is not None
        }
        adapter = f"adapter {c['slr_adapter']}" if c["slr_adapter"] else "no adapter"
        label = f"{c['method']} ({adapter}{', ' if settings else ''}"
        label += ", ".join(f"{k} {v}" for k, v in settings.items()) + ")"

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    lines = [
        "| method | problems | accuracy | mean steps/loops | s/problem | reward before "
        "| reward after |",
        "|---|---|---|---|---|---|---|",
        f"| {label} | {s['problems']} | {s['accuracy']:.3f} | {fmt(s['mean_steps'], '.2f')} "
        f"| {s['seconds_per_problem']:.2f} | {fmt(s['reward_before'], '.3f')} "
        f"| {fmt(s['reward_after'], '.3f')} |",
    ]
    if s["accuracy_by_budget"] and len(s["accuracy_by_budget"]) > 1:
        budget = s["accuracy_by_budget"]
        lines.append("")
        lines.append("| step budget | " + " | ".join(str(k) for k in budget) + " |")
        lines.append("|---|" + "---|" * len(budget))
        lines.append("| accuracy | " + " | ".join(f"{v:.3f}" for v in budget.values()) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = report["summary"]["accuracy_by_budget"] or {}
    c = report["config"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if budget:
        ks = [int(k) for k in budget]
        ax.plot(ks, list(budget.values()), marker="o", label=f"{c['method']} ({c['reward']})")
        ax.axhline(budget[next(iter(budget))], color="grey", ls="--", lw=1, label="greedy")
    ax.set_xlabel("step budget (max_steps)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, max([0.1, *budget.values()]) * 1.2 if budget else 1)
    ax.set_title(f"{c['data']} · {c['model']} · {report['summary']['problems']} problems")
    ax.grid(alpha=0.3)
    if budget:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(cfg: EvalConfig) -> int:
    from tqdm import tqdm

    try:
        problems = load_problems(cfg.data, cfg.limit)
    except (OSError, ValueError) as exc:
        print(f"latentserve eval: error: --data: {exc}", file=sys.stderr)
        return 2
    if not problems:
        print("latentserve eval: error: --data: no problems", file=sys.stderr)
        return 2
    if cfg.compare:
        from server.tools.frontier import main as compare_main

        return compare_main(cfg)
    run = run_remote if cfg.url else run_in_process
    start = time.monotonic()
    with tqdm(total=len(problems), desc="problems", unit="problem", file=sys.stderr) as bar:
        records = run(cfg, problems, bar)
    report = score(cfg, problems, records, time.monotonic() - start)
    return write_report(report, cfg.out, plot, table)


def write_report(report: dict, out: str, plot_fn, table_fn) -> int:
    """The JSON report at `out`, its plot beside it (`plot_fn`), the table on stdout."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    plot_fn(report, path.with_suffix(".png"))
    print(table_fn(report))
    print(f"\nwrote {path} and {path.with_suffix('.png')}")
    return 0
