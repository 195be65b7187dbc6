"""Loop-wise LoRA: per-row slots equal merged weights, save/load round trip, SLR through
the engine with an adapter."""

import torch

from latent_ops.lora import AdapterConfig, LoopAdapter, LoRABank
from latent_ops.program import SamplingParams
from latent_ops.slr import SLRConfig, slr
from server.engine.build import run_programs as engine_run
from server.engine.engine import Engine
from server.engine.runner import ModelRunner
from tests.tiny import build_model


def _randomise(adapter: LoopAdapter, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_rows_use_their_own_loop_pair(tok):
    model = build_model(len(tok), seed=3)
    adapter = LoopAdapter(AdapterConfig(loops=3, rank=4, alpha=8.0, targets=("q_proj",)), model)
    _randomise(adapter, 0)
    bank = LoRABank()
    bank.add("a", adapter)
    bank.install(model)
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(4, 1, layer.in_features)
    bank.slots = torch.tensor([-1, 0, 2, 1])
    with torch.no_grad():
        out = layer(x)
    bank.slots = None
    for row, t in enumerate([-1, 0, 2, 1]):
        w = layer.weight
        if t >= 0:
            key = "model__layers__0__self_attn__q_proj"
            w = w + 2.0 * adapter.B[key][t] @ adapter.A[key][t]
        torch.testing.assert_close(out[row], x[row] @ w.T, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ layer.weight.T, rtol=1e-5, atol=1e-6)
    # one pair per layer: layer 1's q_proj has its own
    assert len(adapter.A) == len(model.model.layers)
    assert not torch.equal(
        adapter.A["model__layers__0__self_attn__q_proj"],
        adapter.A["model__layers__1__self_attn__q_proj"],
    )
    assert bank.slot("a", 1) == 0 and bank.slot("a", 9) == 2  # past the last loop: the last


def test_save_load_round_trip(tok, tmp_path):
    model = build_model(len(tok), seed=3)
    adapter = LoopAdapter(AdapterConfig(loops=2, rank=2, slr={"feedback": "hidden"}), model)
    _randomise(adapter, 1)
    adapter.save(tmp_path / "ad")
    again = LoopAdapter.load(tmp_path / "ad", model)
    assert again.cfg == adapter.cfg
    for (n1, p1), (n2, p2) in zip(
        adapter.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)


def test_slr_with_an_adapter_runs_its_loras_only_on_thought_passes(tok):
    model = build_model(len(tok), seed=3)
    ids = tok("What is 2 + 3? Answer:")["input_ids"]
    params = SamplingParams(max_tokens=8)
    cfg = SLRConfig(max_loops=2, feedback="hidden", residual="h0", timestep_scale=0.5)

    def run(programs, bank=None):
        runner = ModelRunner(model, eos_token_ids={2})
        runner.lora = bank
        engine = Engine(runner, tok)
        engine.start()
        try:
            return engine_run(engine, programs, timeout=60)
        finally:
            engine.shutdown()

    [base] = run([slr(ids, params, cfg)])
    adapter = LoopAdapter(AdapterConfig(loops=2, rank=4), model)
    bank = LoRABank()
    bank.add("ad", adapter)
    bank.install(model)
    # B starts at zero and the MLP's output layer too: an untrained adapter changes nothing
    [fresh] = run([slr(ids, params, SLRConfig(**{**vars(cfg), "adapter": "ad"}))], bank)
    assert fresh.generation.token_ids == base.generation.token_ids
    _randomise(adapter, 2)
    bank._restack()
    adapted, plain = run(
        [slr(ids, params, SLRConfig(**{**vars(cfg), "adapter": "ad"})), slr(ids, params, cfg)],
        bank,
    )
    assert plain.generation.token_ids == base.generation.token_ids  # its neighbour: no LoRA
    assert adapted.loops["loop_deltas"] != base.loops["loop_deltas"]


def test_contrastive_moves_loop_states_by_the_strong_weak_difference(tok):
    model = build_model(len(tok), seed=4)
    ids = tok("Tom has 4 apples and buys 7 more.")["input_ids"]
    params = SamplingParams(max_tokens=8, ignore_eos=True)  # same length: passes comparable
    adapter = LoopAdapter(AdapterConfig(loops=3, rank=4), model)
    _randomise(adapter, 5)
    bank = LoRABank()
    bank.add("ad", adapter)
    bank.install(model)
    base = SLRConfig(max_loops=3, feedback="hidden", adapter="ad")

    def run(cfg):
        runner = ModelRunner(model, eos_token_ids={2})
        runner.lora = bank
        engine = Engine(runner, tok)
        engine.start()
        try:
            [out] = engine_run(engine, [slr(ids, params, cfg)], timeout=60)
        finally:
            engine.shutdown()
        return out, runner.forward_passes

    (strong, passes) = run(base)
    (still, passes_c0) = run(SLRConfig(**{**vars(base), "contrastive": True, "eta": 0.0}))
    (moved, passes_c) = run(SLRConfig(**{**vars(base), "contrastive": True, "eta": 2.0}))
    assert still.method == moved.method == "contrastive" and strong.method == "slr"
    # eta = 0: g stays 0, so the states and the answer are the strong loop's
    assert still.generation.token_ids == strong.generation.token_ids
    assert still.loops["loop_deltas"] == strong.loops["loop_deltas"]
    assert moved.loops["loop_deltas"] != strong.loops["loop_deltas"]
    assert passes_c0 == passes + 3 == passes_c  # one weak pass per loop
