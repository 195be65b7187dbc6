"""Load-adaptive refinement budgets (server/budgets.py): the arithmetic, the programs a
loaded server builds, what responses report, and the budget-cut counter."""

from __future__ import annotations

import openai
import pytest

from server.app import build_app
from server.budgets import budget_for
from server.config import ServerConfig
from server.protocol import ChatCompletionRequest
from server.refinement import PromptRecord, build_program
from tests.support.live import LiveServer, metric


def test_budgets_scale_with_load_down_to_the_floor():
    assert budget_for("fixed", load=100, target=2).steps(10) == 10
    b = budget_for("adaptive", load=4, target=2)
    assert b.cut and b.steps(10) == 5 and b.samples(3) == 2
    assert b.steps(10, floor=8) == 8 and b.samples(3, floor=5) == 3  # floor, not past asked
    assert budget_for("adaptive", load=2, target=2).steps(10) == 10  # at the target: no cut
    assert budget_for("adaptive", load=1000, target=2).steps(10) == 1  # rounded up


def _program(policy, load, latent):
    config = ServerConfig(model="x", refinement_policy=policy, refinement_load_target=2)
    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "1+1?"}], "temperature": 0.7, "latent": latent}
    )
    program, _ = build_program(body, config, [PromptRecord([1, 2], "1+1?", 8)], None, load=load)
    return program


def test_a_loaded_server_grants_less_and_keeps_the_floor():
    latent = {"method": "best_of_n", "samples": 8, "reward": {"type": "arithmetic"}}
    needs = next(_program("adaptive", 8, latent))
    assert len(needs) == 2  # 8 samples * 2/8
    needs = next(_program("adaptive", 8, latent | {"min_samples": 5}))
    assert len(needs) == 5
    assert len(next(_program("fixed", 8, latent))) == 8


@pytest.fixture(scope="module")
def client_and_url(tiny_model_dir):
    config = ServerConfig(
        model=str(tiny_model_dir),
        device="cpu",
        refinement_policy="adaptive",
        refinement_load_target=1,
        max_batch_size=4,
    )
    with LiveServer(build_app(config)) as live:
        yield openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0), live.url


def test_responses_report_their_budget_and_cuts_are_counted(client_and_url):
    from concurrent.futures import ThreadPoolExecutor

    client, url = client_and_url
    latent = {"method": "latentseek", "max_steps": 6, "fraction": 1.0, "min_steps": 2}
    latent["reward"] = {"type": "reference", "reference_answer": "unreachable"}

    def ask(_):
        out = client.completions.create(
            model="tiny-model0", prompt="2 + 5 =", max_tokens=6, extra_body={"latent": latent}
        )
        return out.model_extra["latent"]

    with ThreadPoolExecutor(6) as pool:
        summaries = list(pool.map(ask, range(6)))
    for s in summaries:
        b = s["budget"]
        assert b["policy"] == "adaptive" and b["asked"]["max_steps"] == 6
        assert 2 <= b["granted"]["max_steps"] <= 6 and s["steps"] <= b["granted"]["max_steps"]
        assert (b["cut_reason"] == "load") == (b["granted"] != b["asked"])
    cuts = sum(s["budget"]["cut_reason"] == "load" for s in summaries)
    assert cuts > 0  # six at once against a load target of one
    counted = metric(url, 'latentserve:refinement_budget_cuts_total{method="latentseek"')
    assert counted == cuts
