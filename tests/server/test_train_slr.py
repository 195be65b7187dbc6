"""`latentserve train-slr` on the tiny model: it lowers its loss, writes an adapter the
server loads, and resumes from its checkpoint."""

import json

import pytest

from latent_ops.train_slr import TrainConfig, target_text, train
from server.cli import main as cli_main
from server.cli import slr_training_data


def test_target_drops_the_replaced_steps():
    assert target_text(("1 + 2 = 3", "3 * 2 = 6"), "6", 1) == "3 * 2 = 6\nThe answer is \\boxed{6}."
    assert target_text(("1 + 2 = 3",), "3", 4) == "The answer is \\boxed{3}."


def _tiny_config(model_dir, out, **settings) -> TrainConfig:
    """A short run on the tiny model: 2 loops, rank 2, batches of 2."""
    base = dict(loops=2, rank=2, batch_size=2, lr=1e-2, max_target_tokens=24)
    return TrainConfig(out=str(out), model=str(model_dir), **base, **settings)


def test_keep_steps_keeps_the_whole_solution_and_fits(tiny_model_dir, tmp_path):
    cfg = _tiny_config(tiny_model_dir, tmp_path / "ad", steps=16, synthetic=2, keep_steps=True)
    assert [cfg.replaced_steps(k) for k in (1, 2)] == [0, 0]
    assert TrainConfig().replaced_steps(2) == 2
    history = train(cfg, slr_training_data)["history"]
    assert sum(h["loss"] for h in history[-4:]) < sum(h["loss"] for h in history[:4])


def test_train_writes_a_loadable_adapter_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "ad"
    cfg = _tiny_config(tiny_model_dir, out, steps=24, synthetic=4, save_every=12)
    first = train(cfg.model_copy(update={"stop_after": 12}), slr_training_data)
    assert first["steps"] == 12 and (out / "checkpoint.pt").is_file()
    result = train(cfg.model_copy(update={"resume": True}), slr_training_data)
    history = result["history"]
    assert [h["step"] for h in history] == list(range(1, 25))  # 12 then 12 more, resumed
    assert [h["stage"] for h in history][:12] == [1] * 12 and history[-1]["stage"] == 2
    # four problems seen again and again: the adapters must fit them
    assert sum(h["loss"] for h in history[-4:]) < sum(h["loss"] for h in history[12:16])
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["loops"] == 2 and meta["slr"]["feedback"] == "hidden"
    # the server accepts it; a directory without an adapter is refused, naming the flag
    from server.config import ServerConfig

    assert ServerConfig(slr_adapter=[f"math={out}"]).slr_adapter == [f"math={out}"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", "--slr-adapter", f"math={tmp_path}/nope"])
    assert exit_.value.code == 2


def test_training_data_mixes_phrasings_and_leaves_out_every_excluded_set(tiny_model_dir, tmp_path):
    from server.tools.problems import load_problems

    cfg = _tiny_config(tiny_model_dir, tmp_path / "ad", synthetic=30, varied=30, exclude=None)
    mixed = slr_training_data(cfg).problems
    assert len(mixed) == 60 and all(p.rationale for p in mixed)
    held = load_problems("varied:1,seed=1003")[0].question  # one of the 30 varied seeds
    synth = mixed[0].question
    cfg = cfg.model_copy(update={"exclude": "varied:1,seed=1003; synthetic:1,seed=1000"})
    kept = {p.question for p in slr_training_data(cfg).problems}
    assert held not in kept and synth not in kept and len(kept) == 58
