"""The arithmetic verifier (latent_ops/arithmetic.py): worked solutions checked without an
answer key; hostile text answered in bounded time with a score in [-1, 0]."""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_ops.arithmetic import (
    W_FINAL,
    W_UNGROUNDED,
    W_WRONG,
    ArithmeticReward,
    Verdict,
    verify,
)

GSM8K = Path(__file__).parents[1] / "data/gsm8k/train_sample.jsonl"
Q = "Tom has 12 apples and buys 3 bags of 4 apples each. How many apples does he have?"


def score(question: str, answer: str) -> float:
    reward = verify(question, answer).reward
    assert -1.0 <= reward <= 0.0
    return reward


@pytest.mark.parametrize(
    "answer",
    [
        "3 * 4 = 12\n12 + 12 = 24\nThe answer is 24.",
        "He buys 3 x 4 = 12 apples, so he has 12 + 12 = 24 apples. #### 24",
        "$3 \\times 4 = 12$ and $12 + 12 = 24$, so the answer is $\\boxed{24}$.",
        "- 3 * 4 = 12\n- 12 + 12 = 24\n**The answer is 24**",
        "12 + (3 × 4) = 12 + 12 = 24. The answer is 24",
        "3*4 = 12 + 12 = 24\n#### 24",  # running total
        "He buys <<3*4=12>>12 apples and has 12+12 = <<12+12=24>>24.\n#### 24",
    ],
)
def test_correct_worked_solutions_score_zero(answer):
    verdict = verify(Q, answer)
    assert verdict.reward == 0.0, verdict
    assert verdict.wrong == 0 and verdict.ungrounded == 0 and verdict.final_from is not None


@pytest.mark.parametrize(
    "question, answer",
    [
        (
            "A book costs $1,200 and a pen $35. What do 2 books and a pen cost?",
            "2 * 1,200 = 2,400 and 2,400 + 35 = $2,435. The answer is 2,435.",
        ),
        (
            "Weng earns $12 an hour. She worked 50 minutes. How much did she earn?",
            "12/60 = $0.2 per minute, 0.2 x 50 = $10.\n#### 10",
        ),
        (
            "A shirt costs $40 and is 25% off. What is the price?",
            "25% * 40 = 10, so 40 - 10 = 30. The answer is 30.",  # 25% read as 0.25
        ),
        (
            "10 cookies are shared by 3 kids. How many does each get?",
            "10 / 3 = 3.33 cookies each. The answer is 3.33",  # rounded to the written places
        ),
        (
            "It is 5 degrees and drops by 8 degrees. What is the temperature?",
            "5 - 8 = -3. The answer is -3.",
        ),
        (
            "A square field has sides of 15 m. What is its area?",
            "15^2 = 225 square metres. The answer is 225.",
        ),
        (
            "Ann has three dozen eggs and uses half of them. How many are left?",
            "3 * 12 = 36 eggs; 36 / 2 = 18 used; 36 - 18 = 18 left. The answer is 18.",
        ),
    ],
)
def test_worked_solutions_in_other_notations_score_zero(question, answer):
    verdict = verify(question, answer)
    assert verdict.reward == 0.0, verdict


def test_gsm8k_worked_solutions_mostly_score_zero():
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines() if line.strip()]
    scores = [verify(r["question"], r["answer"]).reward for r in rows]
    assert len(rows) == 50 and all(-1 <= s <= 0 for s in scores)
    # 47 at the time of writing; the rest use algebra ("Let p be ...") or prose
    # equations with words between the numbers ("14 pieces/house * 60 houses = 840")
    assert sum(s == 0 for s in scores) >= 45, scores


def test_synthetic_rationales_score_zero():
    from server.tools.problems import load_problems

    problems = load_problems("synthetic:50,steps=1-3")
    for p in problems:
        text = "\n".join(p.rationale) + f"\nThe answer is {p.answer}."
        assert verify(p.question, text).reward == 0.0, (p, verify(p.question, text))


def test_a_wrong_calculation_scores_below_zero():
    verdict = verify(Q, "3 * 4 = 12\n12 + 12 = 25\nThe answer is 25.")
    assert verdict.reward == pytest.approx(-W_WRONG / 2)
    assert [e.correct for e in verdict.equations] == [True, False]
    assert verdict.equations[1].value == "24" and verdict.equations[1].claimed == "25"


def test_a_final_answer_no_equation_produced_scores_below_zero():
    verdict = verify(Q, "3 * 4 = 12\n12 + 12 = 24\nThe answer is 30.")
    assert verdict.final_from is None and verdict.wrong == 0
    assert verdict.reward == pytest.approx(-W_FINAL)


def test_the_final_answer_comes_from_the_latest_equation_that_produced_it():
    assert verify(Q, "3 * 4 = 12\n12 + 12 = 24\nThe answer is 12.").final_from == 0
    assert verify(Q, "3 * 4 = 12\n12 + 12 = 24\nThe answer is 24.").final_from == 1


def test_an_ungrounded_operand_scores_below_zero():
    verdict = verify(Q, "3 * 4 = 12\n12 + 17 = 29\nThe answer is 29.")
    assert verdict.equations[1].ungrounded == ("17",)
    assert verdict.reward == pytest.approx(-W_UNGROUNDED * 1 / 4)  # 1 of 4 operands


def test_results_of_earlier_equations_and_constants_are_grounded():
    question = "A movie lasts 2.5 hours. How many minutes is that?"
    assert score(question, "2.5 * 60 = 150 minutes. The answer is 150.") == 0.0
    assert score(question, "2.5 * 61 = 152.5 minutes. The answer is 152.5.") < 0


def test_a_refused_evaluation_counts_as_wrong():
    for answer in ("12 / 0 = 0. The answer is 0.", "12^99999999 = 5. The answer is 5."):
        verdict = verify("12 and 0, 5", answer)
        assert verdict.wrong == 1 and verdict.equations[0].note.startswith("refused"), verdict


def test_the_weights_span_minus_one_to_zero():
    assert W_WRONG + W_FINAL + W_UNGROUNDED == pytest.approx(1.0)
    # every equation wrong, every operand ungrounded, the final answer from nowhere
    assert score("nothing here", "37 * 41 = 5 and 53 + 59 = 7. The answer is 99.") == -1.0


@pytest.mark.parametrize(
    "answer, note",
    [
        ("", "no equation"),
        ("The answer is 24.", "no equation"),
        ("Twelve and twelve make twenty-four.", "no equation"),
        ("3 * 4 = 12 so the answer is \\boxed{twelve}", "the final answer is not a number"),
    ],
)
def test_nothing_checkable_scores_minus_one(answer, note):
    verdict = verify(Q, answer)
    assert verdict.reward == -1.0 and verdict.note == note


@functools.cache
def _hostile() -> dict[str, str]:
    rnd = random.Random(0)
    alphabet = "0123456789+-*/x×÷=≈()^.,%$ \n<>#abc\\{}"
    return {
        "random ascii": "".join(rnd.choice(alphabet) for _ in range(100_000)),
        "random unicode": "".join(chr(rnd.randrange(0x20, 0x2FFFF)) for _ in range(100_000)),
        "deep parentheses": "(" * 50_000 + "1" + ")" * 50_000 + " = 1",
        "deep parentheses right": "1 = " + "(" * 50_000 + "1" + ")" * 50_000,
        "unclosed parentheses": "(1 + " * 20_000 + "1 = 2",
        "huge number": "9" * 100_000 + " ^ " + "9" * 1_000 + " = 1",
        "huge exponents": "2^64^64^64^64 = 1\n" * 5_000,
        "huge products": "10^60 * 10^60 * 10^60 = 1\n" * 4_000,
        "many equations": "1+1=2 " * 20_000,
        "unary chain": "= " + "-" * 100_000 + "1 = 1",
        "power chain": "3" + " ** 3" * 20_000 + " = 1",
        "boxed exponent": "1+1=2 \\boxed{1e999999999}",
        "boxed digits": "1 + 1 = 2 \\boxed{" + "9" * 100_000 + "}",
        "comma groups": "1" + ",000" * 30_000 + " + 1 = 2",
        "long decimal": "0." + "1" * 100_000 + " = 1",
        "percents": "5%" * 50_000 + " = 5%",
        "division chain": "1/" * 50_000 + "1 = 1",
        "equals signs": "=" * 100_000,
        "annotations": "<<" * 30_000 + "1*1=1" + ">>" * 30_000,
        "bidi and nulls": "\u202e\x00\ufeff3 × 4 = 12\u200b" * 5_000,
        "power towers": "9**9**9 = 1, 9^9^9 = 2, 2 ** 9**9**9 = 3\n" * 1_000,
        "500-digit numbers": ("7" * 500 + " * " + "3" * 500 + " = " + "1" * 500 + "\n") * 10,
        "10,000 nested parentheses": "(" * 10_000 + "2 + 2" + ")" * 10_000 + " = 4",
    }


@pytest.mark.parametrize("name", list(_hostile()))
def test_hostile_text_is_answered_quickly_without_error(name):
    text = _hostile()[name]
    start = time.perf_counter()
    verdict = verify(text, text)  # as the question too: its scan is bounded as well
    elapsed = time.perf_counter() - start
    assert isinstance(verdict, Verdict) and -1.0 <= verdict.reward <= 0.0
    assert len(verdict.equations) <= 64
    assert elapsed < 1.0, f"{name}: {elapsed:.2f} s"


_PIECES = st.sampled_from(
    [*"0123456789", " ", "\n", "+", "-", "*", "**", "x", "×", "÷", "/", "^", "=", "≈", "(", ")"]
    + [".", ",", "%", "$", "<<", ">>", "####", "\\boxed{", "}", "\\times", "answer is", "S"]
    + ["1,000", "0.5", "99999999999999999999999999999999", "1e9", "-"]
)


@settings(max_examples=300, deadline=None)
@given(question=st.text(max_size=200), answer=st.text(max_size=2_000))
def test_any_text_gives_a_reward_in_range(question, answer):
    assert -1.0 <= verify(question, answer).reward <= 0.0


@settings(max_examples=500, deadline=None)
@given(question=st.lists(_PIECES, max_size=30), answer=st.lists(_PIECES, max_size=300))
def test_any_arithmetic_looking_text_gives_a_reward_in_range(question, answer):
    verdict = verify("".join(question), "".join(answer))
    assert -1.0 <= verdict.reward <= 0.0
    assert verdict.wrong <= len(verdict.equations)
    assert verdict.ungrounded <= verdict.operands


def test_the_reward_follows_the_protocol():
    reward = ArithmeticReward()
    assert (reward.kind, reward.deterministic, reward.values, reward.tokens) == (
        "arithmetic",
        True,
        None,
        0,
    )
    program = reward.score(Q, "3 * 4 = 12\n12 + 12 = 25\nThe answer is 25.")
    with pytest.raises(StopIteration) as done:  # asks the model nothing
        next(program)
    assert done.value.value == verify(Q, "3 * 4 = 12\n12 + 12 = 25\nThe answer is 25.").reward
    assert done.value.value < 0
