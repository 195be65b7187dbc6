"""Math word problems for evaluation: GSM8K-format files and a seeded synthetic generator.

`load_problems(spec)` takes a path to a JSONL file in GSM8K's format (`question`, and
`answer` ending in `#### N`) or `synthetic:N[,seed=S][,steps=A-B]`: N arithmetic word
problems of A to B steps (default 1-3), the same set for the same seed; or
`varied:N[,seed=S][,steps=A-B]`: the same kind of problems from a second, independently
worded generator (`server/tools/problems_alt.py`, steps up to 4). Problems only:
no model, no prompts, no scoring (`server/tools/eval.py`).

`DEFAULT_GSM8K` is the `--data` default of every tool here: the 50-row GSM8K sample that
ships in the repository (`tests/data/gsm8k/`, MIT). It lets a benchmark or smoke run work
from a fresh clone; it is too small to measure accuracy with. For a real evaluation pass
your own GSM8K-format file (for example GSM8K's full training or test split) with `--data`.
The path exists in a source checkout (an editable install), not in a built wheel.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

# <repo root>/tests/data/gsm8k/train_sample.jsonl, from this file's place in the checkout; a
# string, as load_problems and argparse defaults take it
DEFAULT_GSM8K = str(Path(__file__).resolve().parents[2] / "tests/data/gsm8k/train_sample.jsonl")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the final answer, a number as text
    steps: int | None = None  # operations needed (synthetic problems only)
    # worked solution, one reasoning step per item (GSM8K's lines without the calculator
    # annotations; synthetic: one equation per operation); what train-slr distils
    rationale: tuple[str, ...] = ()


def load_problems(spec: str, limit: int | None = None) -> list[Problem]:
    if spec.startswith("synthetic:"):
        problems = _synthetic_from_spec(spec[len("synthetic:") :])
    elif spec.startswith("varied:"):
        from server.tools.problems_alt import varied_from_spec

        problems = varied_from_spec(spec[len("varied:") :])
    else:
        problems = list(_read_gsm8k(Path(spec)))
    return problems[:limit] if limit is not None else problems


def _read_gsm8k(path: Path):
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                work, final = row["answer"].rsplit("####", 1)
                final = final.strip().replace(",", "")
                lines = (re.sub(r"<<[^>]*>>", "", x).strip() for x in work.splitlines())
                yield Problem(row["question"], final, rationale=tuple(x for x in lines if x))
            except (ValueError, KeyError, IndexError, AttributeError) as exc:
                raise ValueError(f"{path}:{n}: not a GSM8K row ({exc})") from exc


def _synthetic_from_spec(text: str) -> list[Problem]:
    parts = text.split(",")
    try:
        n = int(parts[0])
        options = dict(p.split("=", 1) for p in parts[1:])
        seed = int(options.pop("seed", 0))
        lo, _, hi = options.pop("steps", "1-3").partition("-")
        steps = (int(lo), int(hi or lo))
    except ValueError as exc:
        raise ValueError(f"bad synthetic spec {text!r}: want N[,seed=S][,steps=A-B]") from exc
    if options or n < 0 or not 1 <= steps[0] <= steps[1] <= 3:
        raise ValueError(f"bad synthetic spec {text!r}: want N[,seed=S][,steps=A-B], 1<=A<=B<=3")
    return synthetic_problems(n, seed=seed, steps=steps)


_NAMES = ["Tom", "Anna", "Ravi", "Mia", "Leo", "Sara", "Omar", "Lena", "Ken", "Ada"]
_ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "coins", "cards"]


def synthetic_problems(n: int, seed: int = 0, steps: tuple[int, int] = (1, 3)) -> list[Problem]:
    """n problems with small whole-number answers; each step is one +, -, or x."""
    rng = random.Random(seed)
    return [_one_problem(rng, rng.randint(*steps)) for _ in range(n)]


def _one_problem(rng: random.Random, steps: int) -> Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(2, 20)
    sentences = [f"{name} has {value} {item}."]
    work = []
    for _ in range(steps):
        before = value
        op = rng.choice(["add", "sub", "mul"] if value <= 30 else ["add", "sub"])
        if op == "add":
            k = rng.randint(2, 15)
            value += k
            sentences.append(f"{name} gets {k} more {item}.")
            work.append(f"{before} + {k} = {value}")
        elif op == "sub" and value > 2:
            k = rng.randint(1, value - 1)
            value -= k
            sentences.append(f"{name} gives away {k} {item}.")
            work.append(f"{before} - {k} = {value}")
        else:
            k = rng.randint(2, 4)
            value *= k
            times = {2: "twice", 3: "three times", 4: "four times"}[k]
            sentences.append(f"Then the number of {item} {name} has becomes {times} as many.")
            work.append(f"{before} * {k} = {value}")
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return Problem(question, str(value), steps, tuple(work))
