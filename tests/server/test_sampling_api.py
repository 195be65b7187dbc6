"""best_of_n, self_consistency and the reference-free rewards over HTTP (tiny model, real
uvicorn, the openai SDK): one engine, the request's own sampling settings, the shared
summary shape, every generated token in usage."""

from __future__ import annotations

import openai
import pytest

from server.app import build_app
from server.config import ServerConfig
from tests.support.live import LiveServer

MODEL = "tiny-model0"


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    config = ServerConfig(model=str(tiny_model_dir), device="cpu", max_batch_size=8, max_samples=6)
    with LiveServer(build_app(config)) as live:
        yield openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def _chat(client, latent, **kwargs):
    args = {"temperature": 0.9, "seed": 5, "max_tokens": 6} | kwargs
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "2 + 5 = ?"}],
        extra_body={"latent": latent},
        **args,
    )


def test_self_consistency_votes_and_counts_every_sample(client):
    out = _chat(client, {"method": "self_consistency", "samples": 4})
    latent = out.model_extra["latent"]
    assert latent["method"] == "self_consistency" and latent["samples"] == 4
    assert 0 <= latent["vote_share"] <= 1 and latent["stopped_reason"] in (
        "max_samples",
        "no_answer",
    )
    assert out.usage.model_extra["refinement_tokens"] > 0
    again = _chat(client, {"method": "self_consistency", "samples": 4})
    assert again.choices[0].message.content == out.choices[0].message.content  # seeded


@pytest.mark.parametrize(
    "reward",
    [
        {"type": "reference", "reference_answer": "7"},
        {"type": "consistency", "samples": 3},
    ],
)
def test_best_of_n_scores_every_sample(client, reward):
    out = _chat(client, {"method": "best_of_n", "samples": 5, "reward": reward})
    latent = out.model_extra["latent"]
    assert latent["method"] == "best_of_n" and latent["samples"] == 5
    assert len(latent["reward_history"]) == 5
    assert latent["final_reward"] == max(latent["reward_history"])
    assert out.usage.model_extra["refinement_tokens"] > 0


def test_latentseek_with_the_consistency_reward(client):
    out = client.completions.create(
        model=MODEL,
        prompt="2 + 5 =",
        max_tokens=6,
        temperature=0,
        extra_body={
            "latent": {
                "method": "latentseek",
                "max_steps": 2,
                "fraction": 1.0,
                "reward": {"type": "consistency", "samples": 3},
            }
        },
    )
    latent = out.model_extra["latent"]
    assert latent["method"] == "latentseek" and -1 <= latent["initial_reward"] <= 0
    assert out.usage.model_extra["refinement_tokens"] > 0  # the reward's samples count


def test_latentseek_best_of_n_pools_latentseek_and_the_samples(client):
    reward = {"type": "reference", "reference_answer": "unreachable"}  # never verified
    latent = {"method": "latentseek_best_of_n", "max_steps": 2, "fraction": 1.0}
    out = _chat(client, latent | {"samples": 3, "reward": reward})
    s = out.model_extra["latent"]
    assert s["method"] == "latentseek_best_of_n" and s["stopped_reason"] == "max_samples"
    assert s["samples"] == 3 and s["latentseek_candidates"] == s["steps"] + 1
    assert len(s["reward_history"]) == s["latentseek_candidates"] + 3
    assert out.usage.model_extra["refinement_tokens"] > 0
    again = _chat(client, latent | {"samples": 3, "reward": reward})
    assert again.choices[0].message.content == out.choices[0].message.content  # seeded


@pytest.mark.parametrize(
    "latent,kwargs,param",
    [
        ({"method": "best_of_n", "samples": 7, "reward": {"type": "self"}}, {}, "latent.samples"),
        ({"method": "best_of_n", "samples": 2}, {}, "latent.reward"),
        ({"method": "self_consistency", "samples": 3}, {"temperature": 0}, "temperature"),
        (
            {
                "method": "self_consistency",
                "reward": {"type": "reference", "reference_answer": "7"},
            },
            {},
            "latent.reward",
        ),
        ({"method": "latentseek", "samples": 3, "reward": {"type": "self"}}, {}, "latent.samples"),
        (
            {"method": "latentseek", "reward": {"type": "consistency", "samples": 99}},
            {"temperature": 0},
            "latent.reward.samples",
        ),
        ({"method": "best_of_n", "samples": 0, "reward": {"type": "self"}}, {}, "latent.samples"),
        ({"method": "latentseek_best_of_n", "samples": 3}, {}, "latent.reward"),
        (
            {"method": "latentseek_best_of_n", "samples": 3, "reward": {"type": "arithmetic"}},
            {"temperature": 0},
            "temperature",
        ),
        (
            {"method": "latentseek_best_of_n", "max_steps": 999, "reward": {"type": "arithmetic"}},
            {},
            "latent.max_steps",
        ),
    ],
)
def test_bad_sampling_requests_are_400s_naming_the_field(client, latent, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, latent, **kwargs)
    assert err.value.body["param"] == param, err.value.body
