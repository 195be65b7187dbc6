"""`latentserve eval` and its problem sources, on the tiny model (in process and over HTTP)."""

import json
from pathlib import Path

import pytest

from server.cli import main
from server.tools.eval import chosen_at_budget
from server.tools.eval_config import EvalConfig
from server.tools.problems import load_problems, synthetic_problems

GSM8K_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train_sample.jsonl"


def test_synthetic_problems_are_seeded_and_solvable():
    a = synthetic_problems(20, seed=3, steps=(1, 2))
    assert a == synthetic_problems(20, seed=3, steps=(1, 2))
    assert a != synthetic_problems(20, seed=4, steps=(1, 2))
    assert {p.steps for p in a} <= {1, 2} and len({p.question for p in a}) == 20
    for p in a:
        assert int(p.answer) > 0 and p.question.endswith("have now?")
    assert load_problems("synthetic:5,seed=3,steps=1-2") == a[:5]


def test_synthetic_answers_follow_the_story():
    for p in synthetic_problems(50, seed=0):
        words = p.question.replace(".", " ").split()
        value = int(words[2])  # "<name> has N <items>."
        for i, w in enumerate(words):
            if w == "gets":
                value += int(words[i + 1])
            elif w == "away":
                value -= int(words[i + 1])
            elif w in ("twice", "three", "four") and words[i + 1] in ("as", "times"):
                value *= {"twice": 2, "three": 3, "four": 4}[w]
        assert str(value) == p.answer, p.question


def test_gsm8k_file_and_bad_specs(tmp_path):
    rows = load_problems(str(GSM8K_SAMPLE), limit=3)
    assert len(rows) == 3 and rows[0].answer == "72" and "Natalia" in rows[0].question
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_problems(str(bad))
    for spec in ["synthetic:x", "synthetic:5,steps=0-2", "synthetic:5,colour=red"]:
        with pytest.raises(ValueError):
            load_problems(spec)


def test_chosen_at_budget_replays_select():
    rewards, texts = [-1.0, -0.5, -1.0, -0.5], ["a", "b", "c", "d"]
    assert [chosen_at_budget(rewards, texts, k, "best") for k in range(4)] == list("abbb")
    assert [chosen_at_budget(rewards, texts, k, "last") for k in range(4)] == list("abcd")
    assert chosen_at_budget([-1.0, 0.0], ["a", "b"], 9, "last") == "b"  # stopped early


def _eval(args, out):
    code = main(
        ["eval", "--data", "synthetic:3,seed=1", "--max-tokens", "8", "--out", str(out)] + args
    )
    assert code == 0
    return json.loads(out.read_text())


def test_eval_in_process_and_over_http_agree(tmp_path, tiny_model_dir, capsys):
    from server.app import build_app
    from server.config import ServerConfig
    from tests.support.live import LiveServer

    common = ["--method", "latentseek", "--max-steps", "2", "--fraction", "0.5"]
    local = _eval(common + ["--model", str(tiny_model_dir)], tmp_path / "local.json")
    printed = capsys.readouterr().out
    assert "| latentseek (reference) | 3 |" in printed and "step budget" in printed
    png = (tmp_path / "local.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    s = local["summary"]
    assert list(s["accuracy_by_budget"]) == ["0", "1", "2"]
    # the last budget replays to the answer the run returned
    assert list(s["accuracy_by_budget"].values())[-1] == s["accuracy"]
    assert all(len(p["reward_history"]) == p["steps"] + 1 for p in local["problems"])

    config = ServerConfig(model=str(tiny_model_dir), device="cpu")
    with LiveServer(build_app(config)) as live:
        remote = _eval(common + ["--url", live.url], tmp_path / "remote.json")
    assert [p["answer"] for p in remote["problems"]] == [p["answer"] for p in local["problems"]]
    assert [p["reward_history"] for p in remote["problems"]] == [
        p["reward_history"] for p in local["problems"]
    ]
    # over HTTP the reference reward's history stands in for the candidates' texts
    assert remote["summary"]["accuracy_by_budget"] == s["accuracy_by_budget"]


def test_eval_bad_data_is_exit_2(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "--data" in capsys.readouterr().err


def test_score_by_budget_from_texts_and_from_rewards_agree():
    from server.tools.eval import score
    from server.tools.problems import Problem

    problems = [Problem("q1", "4"), Problem("q2", "9"), Problem("q3", "1")]
    runs = [  # (reward history, candidate texts): right at step 2, at step 0, never
        ([-1.0, -1.0, 0.0], ["3", "5", "so \\boxed{4}"]),
        ([0.0], ["9"]),
        ([-1.0, -1.0, -1.0, -1.0], ["2", "3", "4", "5"]),
    ]

    def records(with_texts):
        out = []
        for rewards, texts in runs:
            latent = {"steps": len(rewards) - 1, "reward_history": rewards}
            latent |= {"initial_reward": rewards[0], "final_reward": max(rewards)}
            rec = {"text": texts[max(range(len(rewards)), key=lambda i: (rewards[i], -i))]}
            rec |= {"latent": latent, "seconds": 1.0}
            if with_texts:
                rec["candidates"] = texts
            out.append(rec)
        return out

    cfg = EvalConfig(data="synthetic:3", max_steps=3)
    by_text = score(cfg, problems, records(True), 3.0)["summary"]
    by_reward = score(cfg, problems, records(False), 3.0)["summary"]
    assert by_text["accuracy_by_budget"] == by_reward["accuracy_by_budget"]
    assert by_text["accuracy_by_budget"] == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 2 / 3, 3: 2 / 3})
    assert by_text["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", ["best_of_n", "self_consistency", "latentseek_best_of_n"])
def test_single_method_eval_sends_sampled_methods_to_compare(method):
    with pytest.raises(ValueError, match="--compare"):
        EvalConfig(data="synthetic:1", method=method)
    EvalConfig(data="synthetic:1", method=method, compare=f"{method}@2")  # accepted there
