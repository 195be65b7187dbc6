"""Refinement profiles selected by model id (server/profiles.py): parsing at start-up,
/v1/models, a profile applied and overridden field by field, unknown ids, server maxima,
and a third-party client (LangChain's ChatOpenAI) that can only set the model name."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import ValidationError

from server.app import build_app
from server.config import ServerConfig
from server.profiles import parse_profiles
from tests.support.live import LiveServer, metric

BASE = "tiny-model0"
MATH = {"method": "latentseek", "reward": {"type": "arithmetic"}, "max_steps": 2, "fraction": 1.0}
PROFILES = [
    "math=" + json.dumps(MATH),
    'vote={"method": "self_consistency", "samples": 3}',
    'greedy={"method": "none"}',
    'toolong={"method": "latentseek", "reward": {"type": "arithmetic"}, "max_steps": 999}',
]


def test_profiles_parse_from_entries_and_files(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "check:\n  method: best_of_n\n  samples: 4\n  reward: {type: arithmetic}\n"
    )
    (tmp_path / "p.json").write_text(json.dumps({"sc": {"method": "self_consistency"}}))
    got = parse_profiles([*PROFILES[:2], str(tmp_path / "p.yaml"), str(tmp_path / "p.json")])
    assert list(got) == ["math", "vote", "check", "sc"] and got["check"]["samples"] == 4


@pytest.mark.parametrize(
    "entry",
    [
        'bad={"method": "magic"}',
        'bad={"method": "latentseek", "unknown_field": 1}',
        "bad={not json",
        'a:b={"method": "none"}',
        "/no/such/file.yaml",
    ],
)
def test_a_bad_profile_stops_the_server_at_start_up(entry):
    with pytest.raises(ValidationError):
        ServerConfig(model="x", refinement_profile=[entry])


@pytest.fixture(scope="module")
def live(tiny_model_dir):
    config = ServerConfig(
        model=str(tiny_model_dir), device="cpu", max_samples=6, refinement_profile=PROFILES
    )
    with LiveServer(build_app(config)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)


def _chat(client, model, **kwargs):
    args = {"max_tokens": 6, "temperature": 0.7, "seed": 3} | kwargs
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "2 + 5 = ?"}], **args
    )


def test_models_lists_the_base_and_each_profile(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [BASE, *(f"{BASE}:{n}" for n in ("math", "vote", "greedy", "toolong"))]


def test_a_profile_runs_by_model_name_alone(client):
    out = _chat(client, f"{BASE}:math")
    latent = out.model_extra["latent"]
    assert out.model == f"{BASE}:math"
    assert latent["method"] == "latentseek" and latent["budget"]["asked"]["max_steps"] == 2
    vote = _chat(client, f"{BASE}:vote").model_extra["latent"]
    assert vote["method"] == "self_consistency" and vote["samples"] == 3
    plain = _chat(client, f"{BASE}:greedy")
    assert plain.model_extra.get("latent") is None and plain.model == f"{BASE}:greedy"
    assert _chat(client, BASE).model_extra.get("latent") is None  # the base model: no profile


def test_explicit_latent_fields_override_the_profile_one_by_one(client):
    out = _chat(client, f"{BASE}:math", extra_body={"latent": {"max_steps": 1}})
    latent = out.model_extra["latent"]
    assert latent["method"] == "latentseek" and latent["budget"]["asked"]["max_steps"] == 1
    reward = {"type": "reference", "reference_answer": "7"}
    out = _chat(client, f"{BASE}:math", extra_body={"latent": {"reward": reward}})
    assert out.model_extra["latent"]["budget"]["asked"]["max_steps"] == 2  # kept
    samples = _chat(client, f"{BASE}:vote", extra_body={"latent": {"samples": 2}})
    assert samples.model_extra["latent"]["samples"] == 2


def test_unknown_profiles_and_server_maxima(client):
    with pytest.raises(openai.NotFoundError) as err:
        _chat(client, f"{BASE}:nope")
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        _chat(client, "other-model:math")
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, f"{BASE}:toolong")
    assert err.value.body["param"] == "latent.max_steps"


def test_langchain_selects_a_profile_by_model_name(live):
    from langchain_openai import ChatOpenAI

    before = metric(live.url, 'latentserve:refinement_stop_total{method="self_consistency"')
    llm = ChatOpenAI(
        model=f"{BASE}:vote",
        base_url=live.url + "/v1",
        api_key="x",
        temperature=0.7,
        max_tokens=6,
        max_retries=0,
    )
    reply = llm.invoke("2 + 5 = ?")
    assert isinstance(reply.content, str)
    assert reply.response_metadata["model_name"] == f"{BASE}:vote"
    after = metric(live.url, 'latentserve:refinement_stop_total{method="self_consistency"')
    assert after == before + 1  # the profile's method ran
