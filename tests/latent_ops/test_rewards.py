"""Rewards on their own: answer extraction, allowlists, the webhook against a real server."""

import asyncio

import pytest

from latent_ops.rewards import RewardError, WebhookReward, checked_reward
from latent_ops.urls import url_allowed

ALLOW = ["http://127.0.0.1:9000/grade", "https://grader.example.com"]


@pytest.mark.parametrize(
    "url, ok",
    [
        ("http://127.0.0.1:9000/grade", True),
        ("http://127.0.0.1:9000/grade/math", True),
        ("http://127.0.0.1:9000/grade/math?x=1", False),  # no query strings (latent_ops/urls.py)
        ("https://grader.example.com/anything", True),
        ("https://GRADER.example.com:443/x", True),
        ("http://127.0.0.1:9001/grade", False),  # other port
        ("http://127.0.0.1:9000/other", False),  # other path
        ("https://127.0.0.1:9000/grade", False),  # other scheme
        ("http://grader.example.com/", False),  # http, not https
        ("https://grader.example.com@169.254.169.254/", False),  # userinfo trick
        ("https://grader.example.com.evil.net/", False),
        ("http://localhost:9000/grade", False),  # loopback under another name
        ("http://169.254.169.254/latest/meta-data", False),  # link-local
        ("http://[::1]:9000/grade", False),
        ("file:///etc/passwd", False),
        ("gopher://127.0.0.1:9000/grade", False),
        ("http://127.0.0.1:99999/grade", False),  # bad port
        ("not a url", False),
    ],
)
def test_url_allowlist(url, ok):
    assert url_allowed(url, ALLOW) is ok


def test_empty_allowlist_allows_nothing():
    assert not url_allowed("http://127.0.0.1:9000/grade", [])


def test_webhook_posts_prompt_and_answer(grader):
    reward = WebhookReward(grader.url + "/reward", timeout=5)
    assert asyncio.run(reward.post("3 + 4?", "it is 7")) == 0.0
    assert asyncio.run(reward.post("3 + 4?", "it is 8")) == -1.0
    assert grader.calls[-1] == ("/reward", {"prompt": "3 + 4?", "answer": "it is 8"})


@pytest.mark.parametrize(
    "path", ["/garbage", "/nan", "/huge", "/slow", "/trickle", "/redirect", "/error"]
)
def test_webhook_failures_are_reward_errors(grader, path):
    with pytest.raises(RewardError):
        asyncio.run(WebhookReward(grader.url + path, timeout=1).post("p", "a"))


@pytest.mark.parametrize("value", [-1e300, 1e39, float("nan"), float("inf"), True, "0", None])
def test_rewards_must_be_numbers_finite_in_float32(value):
    with pytest.raises(RewardError):
        checked_reward(value)
    assert checked_reward(-3.4e38) == -3.4e38 and checked_reward(0) == 0.0


def test_webhook_down_is_a_reward_error(grader):
    from tests.support.live import free_port

    port = free_port()  # nobody listens on it
    with pytest.raises(RewardError):
        asyncio.run(WebhookReward(f"http://127.0.0.1:{port}/reward", timeout=1).post("p", "a"))
