"""A second, independent generator of arithmetic word problems, phrased unlike the first.

`load_problems("varied:N[,seed=S][,steps=A-B]")` (see `server/tools/problems.py`) returns
`varied_problems(N, seed=S, steps=(A, B))`: N problems of A to B operations (1 <= A <= B <= 4,
default 1-3, default seed 7), the same set for the same seed. It exists so that a method tuned
on `synthetic:` problems can be measured on problems that share none of their wording:

- vocabulary disjoint from `synthetic:`: other names, objects and verbs (no "has", "gets",
  "gives away", "becomes"; no "Then");
- several sentence templates per operation: add (buys / is handed / finds), subtract (spends /
  loses / sells / donates), multiply ("each of N boxes holds", "N times as many", "every week
  for N weeks"), divide ("shares equally among N", "packs into groups of N"); exact divisions
  only, never a negative count, operands sometimes two or three digits;
- varied questions ("How many ... now?", "What is the total ...?", "How many ... are left?",
  "How many ... does each person receive?", "How many groups ...?"), chosen to fit the last
  operation;
- about 30% of problems are about money (MONEY_FRACTION): a price per item times a count,
  then delivery fees, coupons or a bill split equally ("What is the total cost?", "How much
  does each person pay?"), or a budget less purchases at a price per item, plus earnings,
  less spending ("How much money is left?");
- about 25% of problems (each with probability 0.25) carry one irrelevant sentence with a
  number that the solution does not use (a distractor), at a random place before the question.

`rationale` is one equation per operation in the first generator's format ("12 * 4 = 48";
division "48 / 4 = 12"), each using the previous result (a purchase from a budget is two
equations, "3 * 8 = 24" then "50 - 24 = 26"); the last result is `answer`.
No question repeats within one generated set.
"""

from __future__ import annotations

import random

from server.tools.problems import Problem

DEFAULT_SEED = 7
MAX_STEPS = 4

_NAMES = [
    "Priya", "Kwame", "Ingrid", "Mateo", "Yuki", "Farah", "Dmitri", "Chloe",
    "Tariq", "Beatriz", "Olu", "Hana", "Soren", "Lucia", "Emeka", "Nadia",
]  # fmt: skip
_OTHERS = ["Grandpa Joe", "Auntie Rose", "Coach Dara", "Mr. Okafor", "Ms. Vance", "Uncle Bram"]
_OBJECTS = [
    "seashells", "stamps", "beads", "buttons", "crayons", "ribbons", "acorns", "feathers",
    "candles", "envelopes", "tulips", "muffins", "pebbles", "keychains", "bottle caps",
]  # fmt: skip
_PLACES = [
    "at the flea market",
    "on the beach",
    "in the garden",
    "in the attic",
    "at the school fair",
]
_FRIENDS = ["friends", "cousins", "classmates", "neighbours", "teammates"]


def varied_from_spec(text: str) -> list[Problem]:
    """`N[,seed=S][,steps=A-B]` (the text after `varied:`) -> the problems."""
    want = f"want N[,seed=S][,steps=A-B], 1<=A<=B<={MAX_STEPS}"
    parts = text.split(",")
    try:
        n = int(parts[0])
        options = dict(p.split("=", 1) for p in parts[1:])
        seed = int(options.pop("seed", DEFAULT_SEED))
        lo, _, hi = options.pop("steps", "1-3").partition("-")
        steps = (int(lo), int(hi or lo))
    except ValueError as exc:
        raise ValueError(f"bad varied spec {text!r}: {want}") from exc
    if options or n < 0 or not 1 <= steps[0] <= steps[1] <= MAX_STEPS:
        raise ValueError(f"bad varied spec {text!r}: {want}")
    return varied_problems(n, seed=seed, steps=steps)


def varied_problems(
    n: int, seed: int = DEFAULT_SEED, steps: tuple[int, int] = (1, 3)
) -> list[Problem]:
    """n problems of steps[0] to steps[1] operations; no question repeats."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n:
        p = _one_problem(rng, rng.randint(*steps))
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def _number(rng: random.Random, lo: int, hi: int, big_hi: int) -> int:
    """Mostly lo..hi; sometimes (30%) a two- or three-digit number up to big_hi."""
    return rng.randint(max(hi, 10), big_hi) if rng.random() < 0.3 else rng.randint(lo, hi)


def _divisors(value: int) -> list[int]:
    return [k for k in range(2, 10) if value % k == 0 and value // k >= 2]


# money problems: goods with a price range in dollars (none of the count objects above)
_GOODS = [
    ("kites", 4, 15), ("lanterns", 3, 12), ("scarves", 6, 25), ("jigsaw puzzles", 5, 18),
    ("concert tickets", 12, 45), ("flower pots", 2, 9), ("paintbrushes", 2, 7),
]  # fmt: skip
_JOBS = ["walking dogs", "washing windows", "tutoring", "raking leaves", "selling lemonade"]
MONEY_FRACTION = 0.3  # share of problems about money (prices, total cost, money left)
DISTRACTOR_FRACTION = 0.25


def _one_problem(rng: random.Random, steps: int) -> Problem:
    if rng.random() < MONEY_FRACTION:
        return _money_problem(rng, steps)
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    work: list[str] = []
    used: set[int] = set()
    last = "start"

    # opening: a plain count, or (as the first operation) a multiplication
    if rng.random() < 0.3:
        per, k = rng.randint(3, 25), rng.randint(2, 9)
        value = per * k
        sentences = [
            rng.choice(
                [
                    f"Each of {k} boxes in {name}'s cupboard holds {per} {obj}.",
                    f"{name} collects {per} {obj} every week for {k} weeks.",
                ]
            )
        ]
        work.append(f"{per} * {k} = {value}")
        used |= {per, k, value}
        last, remaining = "mul", steps - 1
    else:
        value = _number(rng, 5, 40, 250)
        sentences = [
            rng.choice(
                [
                    f"{name} owns {value} {obj}.",
                    f"There are {value} {obj} in {name}'s collection.",
                    f"{name} starts the day with {value} {obj}.",
                    f"A jar on {name}'s shelf holds {value} {obj}.",
                ]
            )
        ]
        used.add(value)
        remaining = steps

    for i in range(remaining):
        final = i == remaining - 1
        ops = ["add", "sub"] if value >= 3 else ["add"]
        if value <= 150:
            ops.append("mul")
        if _divisors(value):
            ops.append("div")
        op = rng.choice(ops)
        before = value
        if op == "add":
            k = _number(rng, 2, 30, 300)
            value += k
            place = rng.choice(_PLACES)
            sentences.append(
                rng.choice(
                    [
                        f"{name} buys {k} {obj} {place}.",
                        f"{name} is handed {k} {obj} by {rng.choice(_OTHERS)}.",
                        f"{place.capitalize()}, {name} finds {k} {obj}.",
                        f"Next, {name} buys another {k} {obj}.",
                    ]
                )
            )
            work.append(f"{before} + {k} = {value}")
        elif op == "sub":
            k = rng.randint(1, value - 1) if value <= 30 else rng.randint(10, value - 1)
            value -= k
            sentences.append(
                rng.choice(
                    [
                        f"{name} spends {k} of the {obj} on a craft project.",
                        f"On the way home, {name} loses {k} {obj}.",
                        f"{name} sells {k} {obj} to {rng.choice(_OTHERS)}.",
                        f"{name} donates {k} {obj} to the library.",
                    ]
                )
            )
            work.append(f"{before} - {k} = {value}")
        elif op == "mul":
            k = rng.randint(2, 9) if value <= 40 else rng.randint(2, 4)
            value *= k
            sentences.append(
                rng.choice(
                    [
                        f"By autumn, {name} owns {k} times as many {obj} as before.",
                        f"{name} fills {k} boxes, and each of the {k} boxes holds that many {obj}.",
                        f"{name} trades them all for a club pass that delivers that many "
                        f"{obj} every week for {k} weeks, and all {k} deliveries arrive.",
                    ]
                )
            )
            work.append(f"{before} * {k} = {value}")
        else:
            k = rng.choice(_divisors(value))
            value //= k
            people = rng.choice(_FRIENDS)
            if final and rng.random() < 0.5:
                sentences.append(f"{name} packs the {obj} into groups of {k}.")
                op = "groups"
            elif final:
                sentences.append(f"{name} shares the {obj} equally among {k} {people}.")
                op = "share"
            else:
                sentences.append(
                    f"{name} shares the {obj} equally among {k} {people}, {name} "
                    f"included, and each keeps one share."
                )
            work.append(f"{before} / {k} = {value}")
        used |= {k, value}
        last = op

    _maybe_distractor(rng, name, sentences, used)

    if last == "groups":
        question = f"How many groups of {obj} does {name} make?"
    elif last == "share":
        question = f"How many {obj} does each person receive?"
    elif last == "sub":
        question = rng.choice(
            [f"How many {obj} are left?", f"How many {obj} does {name} still own?"]
        )
    else:
        question = rng.choice(
            [
                f"How many {obj} does {name} own now?",
                f"What is the total number of {obj} {name} owns?",
                f"How many {obj} are in {name}'s collection now?",
            ]
        )
    sentences.append(question)
    return Problem(" ".join(sentences), str(value), steps, tuple(work))


def _maybe_distractor(rng: random.Random, name: str, sentences: list[str], used: set[int]):
    """With probability DISTRACTOR_FRACTION, insert a sentence whose number is not used."""
    if rng.random() < DISTRACTOR_FRACTION:
        d = rng.randint(2, 60)
        while d in used:
            d += 1
        distractor = rng.choice(
            [
                f"{rng.choice(_OTHERS)} is {d} years old.",
                f"The bus ride to the harbour takes {d} minutes.",
                f"It rained on {d} days last season.",
                f"{name}'s street is {d} blocks long.",
            ]
        )
        sentences.insert(rng.randint(1, len(sentences)), distractor)


def _money_problem(rng: random.Random, steps: int) -> Problem:
    """A total cost (price per item times count, then fees, coupons, a split bill) or the
    money left from a budget (purchases at a price per item, earnings, spending)."""
    name = rng.choice(_NAMES)
    goods, p_lo, p_hi = rng.choice(_GOODS)
    work: list[str] = []
    used: set[int] = set()
    if rng.random() < 0.5:
        # total cost: the first operation is price * count, each later one changes the bill
        price, count = rng.randint(p_lo, p_hi), rng.randint(2, 12)
        value = price * count
        sentences = [
            rng.choice(
                [
                    f"{name} buys {count} {goods} at ${price} each.",
                    f"One of the {goods} costs ${price}, and {name} orders {count} of them.",
                ]
            )
        ]
        work.append(f"{price} * {count} = {value}")
        used |= {price, count, value}
        last = "cost"
        for i in range(steps - 1):
            final = i == steps - 2
            before = value
            ops = ["fee"] + (["coupon"] if value > 1 else [])  # a coupon leaves >= $1
            ops += ["split"] if final and _divisors(value) else []
            op = rng.choice(ops)
            if op == "fee":
                k = rng.randint(3, 30)
                value += k
                sentences.append(
                    rng.choice(
                        [
                            f"Delivery adds ${k} to the bill.",
                            f"{name} also pays ${k} for gift wrapping.",
                        ]
                    )
                )
                work.append(f"{before} + {k} = {value}")
            elif op == "coupon":
                k = rng.randint(1, min(value - 1, 40))
                value -= k
                sentences.append(f"A coupon takes ${k} off the bill.")
                work.append(f"{before} - {k} = {value}")
            else:
                k = rng.choice(_divisors(value))
                value //= k
                sentences.append(
                    f"{name} and {k - 1} {rng.choice(_FRIENDS)} split the bill equally."
                )
                work.append(f"{before} / {k} = {value}")
                last = "split"
            used |= {k, value}
        question = (
            "How much does each person pay?"
            if last == "split"
            else rng.choice(["What is the total cost?", f"How much does {name} pay in all?"])
        )
    else:
        # money left: a purchase at a price per item is two operations (count * price, then
        # the budget minus that cost)
        value = _number(rng, 40, 120, 600)
        sentences = [
            rng.choice(
                [
                    f"{name} takes ${value} to the shops.",
                    f"{name}'s wallet holds ${value}.",
                    f"{name} saved ${value} over the summer.",
                ]
            )
        ]
        used.add(value)
        remaining = steps
        while remaining:
            before = value
            if remaining >= 2 and value >= 2 * p_lo + 1 and rng.random() < 0.6:
                count = rng.randint(2, min(9, (value - 1) // p_lo))
                price = rng.randint(p_lo, max(p_lo, min(p_hi, (value - 1) // count)))
                cost = count * price
                value -= cost
                sentences.append(f"{name} buys {count} {goods} for ${price} each.")
                work += [f"{count} * {price} = {cost}", f"{before} - {cost} = {value}"]
                used |= {count, price, cost, value}
                remaining -= 2
                continue
            if rng.random() < 0.5 and value > 1:
                k = rng.randint(1, min(value - 1, 60))
                value -= k
                sentences.append(
                    rng.choice(
                        [
                            f"{name} spends ${k} on a bus pass.",
                            f"{name} donates ${k} to the animal shelter.",
                        ]
                    )
                )
                work.append(f"{before} - {k} = {value}")
            else:
                k = rng.randint(5, 80)
                value += k
                sentences.append(f"{name} earns ${k} {rng.choice(_JOBS)}.")
                work.append(f"{before} + {k} = {value}")
            used |= {k, value}
            remaining -= 1
        question = rng.choice(
            ["How much money is left?", f"How many dollars does {name} end up with?"]
        )
    _maybe_distractor(rng, name, sentences, used)
    sentences.append(question)
    return Problem(" ".join(sentences), str(value), steps, tuple(work))
