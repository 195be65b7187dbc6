"""`latentserve eval --compare` on the tiny model: every method on the same problems, points
per budget replayed from one run, the replay agreeing with what the runs returned."""

from __future__ import annotations

import json

import pytest

from server.tools.eval_config import EvalConfig
from server.tools.frontier import Spec, main, parse_specs

SPECS = (
    "none,latentseek/reference@2,latentseek/consistency@1,best_of_n/reference@3,"
    "best_of_n/arithmetic@2,self_consistency@3,latentseek_best_of_n/reference@2"
)


def test_compare_reports_accuracy_against_tokens(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "frontier.json"
    cfg = EvalConfig(
        data="synthetic:4,seed=3",
        model=str(tiny_model_dir),
        device="cpu",
        dtype="float32",
        max_tokens=6,
        fraction=1.0,
        compare=SPECS,
        consistency_samples=2,
        max_steps=2,
        out=str(out),
        records=str(tmp_path / "rows.jsonl"),
    )
    assert main(cfg) == 0
    report = json.loads(out.read_text())
    methods = {m["spec"]: m for m in report["methods"]}
    assert list(methods) == [
        "greedy",
        "latentseek/reference@2",
        "latentseek/consistency@1",
        "best_of_n/reference@3",
        "best_of_n/arithmetic@2",
        "self_consistency@3",
        "latentseek_best_of_n/reference@2",
    ]
    assert [p["budget"] for p in methods["latentseek/reference@2"]["points"]] == [0, 1, 2]
    assert [p["budget"] for p in methods["best_of_n/reference@3"]["points"]] == [1, 2, 3]
    for m in report["methods"]:
        tokens = [p["tokens"] for p in m["points"]]
        assert tokens == sorted(tokens) and tokens[0] > 0  # more budget never costs less
        assert all(0 <= p["accuracy"] <= 1 for p in m["points"])
        if not m["spec"].startswith("self_consistency"):  # SC returns a sample, not a vote
            assert m["points"][-1]["accuracy"] == m["returned_accuracy"], m
    greedy = methods["greedy"]["points"][0]
    # LatentSeek's budget 0 is the greedy answer it starts from
    assert methods["latentseek/reference@2"]["points"][0]["accuracy"] == greedy["accuracy"]
    # the hybrid's budget 0 is LatentSeek at --max-steps (2) alone, the same run's answers
    hybrid = methods["latentseek_best_of_n/reference@2"]["points"]
    assert [p["budget"] for p in hybrid] == [0, 1, 2]
    assert hybrid[0] == methods["latentseek/reference@2"]["points"][-1] | {"budget": 0}
    # the per-problem records: one row per problem and spec, agreeing with the report
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * len(methods)
    for spec, m in methods.items():
        mine = [r for r in rows if r["spec"] == spec]
        assert [r["problem"] for r in mine] == [0, 1, 2, 3]
        assert sum(r["returned_right"] for r in mine) / 4 == m["returned_accuracy"]
        for r in mine:
            assert len(r["answers"]) == len(r["right"]) == len(r["tokens"])
            if spec.startswith("best_of_n"):
                assert len(r["rewards"]) == len(r["answers"]) == int(spec[-1])
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| greedy |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad", ["", "magic", "latentseek", "none/reference", "best_of_n/oracle@3", "self_consistency@x"]
)
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_specs(bad, EvalConfig(data="synthetic:1"))


def test_labels_carry_a_budget_only_where_one_is_replayed():
    cfg = EvalConfig(data="synthetic:1", max_steps=7)
    labels = [s.label for s in parse_specs("none,slr,contrastive,best_of_n/arithmetic@4", cfg)]
    assert labels == ["greedy", "slr", "contrastive", "best_of_n/arithmetic@4"]


def test_spec_defaults():
    cfg = EvalConfig(data="synthetic:1", max_steps=7)
    assert parse_specs("latentseek/self,self_consistency,none", cfg) == [
        Spec("latentseek", "self", 7),
        Spec("self_consistency", None, 5),
        Spec("none", None, 0),
    ]
