"""deploy/ checked for real: promtool, a live Prometheus scraping a live server, k8s schemas.

The Prometheus test installs Debian's `prometheus` when it is missing (root and apt
needed; otherwise it fails and says so), starts it on loopback with deploy/'s alert rules
and a scrape target rewritten to a tiny-model server, drives plain, refined, rejected and
streamed requests, then asks Prometheus' HTTP API to evaluate every dashboard panel query
and every alert rule: all must evaluate without error, and every panel must return data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
pytestmark = pytest.mark.slow


def _prometheus_bin() -> str:
    if shutil.which("prometheus") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "prometheus"],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            timeout=600,
        )
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("Debian's prometheus is not installed and could not be installed with apt")
    return path


def _dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana/dashboards/latentserve.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def _rule_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_promtool_accepts_config_and_rules():
    _prometheus_bin()
    for args in (
        ["check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        ["check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
    ):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, tmp_path_factory):
    """A tiny-model server with traffic behind it, and a Prometheus that scraped it."""
    from server.app import build_app
    from server.config import ServerConfig
    from tests.support.live import LiveServer, free_port

    binary = _prometheus_bin()
    config = ServerConfig(
        model=str(tiny_model_dir), device="cpu", max_batch_size=1, max_queued_requests=1
    )
    work = tmp_path_factory.mktemp("prometheus")
    with LiveServer(build_app(config)) as live:
        scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
        scrape["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        scrape["rule_files"] = [str(DEPLOY / "prometheus/alerts.yml")]
        scrape["scrape_configs"][0]["static_configs"] = [{"targets": [live.url[len("http://") :]]}]
        (work / "prometheus.yml").write_text(yaml.safe_dump(scrape))
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            _drive(live.url)
            _wait_for_scrapes(api)
            yield api
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _drive(url: str) -> None:
    """Plain, streamed, refined and (with batch 1 and queue 1) rejected requests."""
    plain = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
    refined = {
        **plain,
        "prompt": "What is 3 + 4?",
        "latent": {
            "method": "latentseek",
            "max_steps": 2,
            "fraction": 0.5,
            "reward": {"type": "reference", "reference_answer": "7"},
        },
    }
    statuses: list[int] = []

    def post(body):
        statuses.append(httpx.post(url + "/v1/completions", json=body, timeout=120).status_code)

    for body in (plain, refined, {**plain, "stream": True}):
        post(body)
    burst = [threading.Thread(target=post, args=({**plain, "max_tokens": 64},)) for _ in range(8)]
    for t in burst:
        t.start()
    for t in burst:
        t.join()
    assert 200 in statuses and 503 in statuses, statuses  # some served, some rejected
    for _ in range(3):
        post(refined)


def _wait_for_scrapes(api: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            result = _query(api, "latentserve:request_success_total")
        except (httpx.HTTPError, AssertionError):
            result = []
        if result:
            time.sleep(6)  # a few more scrapes, so rates over the last minute have points
            return
        time.sleep(0.5)
    pytest.fail("Prometheus never scraped the server")


def _query(api: str, expr: str) -> list:
    expr = expr.replace("$__rate_interval", "1m")
    resp = httpx.get(api + "/query", params={"query": expr}, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_every_dashboard_query_evaluates_and_has_data(scraped):
    empty = [title for title, expr in _dashboard_queries() if not _query(scraped, expr)]
    assert not empty, f"panels without data: {empty}"


def test_every_alert_rule_evaluates(scraped):
    for _, expr in _rule_queries():
        _query(scraped, expr)  # raises on a PromQL error
    deadline = time.monotonic() + 20
    while True:  # and Prometheus itself evaluated each rule without error
        groups = httpx.get(scraped + "/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(1)
    assert {r["name"] for r in rules} == {name for name, _ in _rule_queries()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_server_down_alert_fires_on_a_dead_target(tmp_path):
    """The `up == 0` rule, checked with promtool's rule unit tests."""
    tests = {
        "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 'up{job="latentserve",instance="a"}', "values": "0x5"}],
                "alert_rule_test": [
                    {
                        "eval_time": "3m",
                        "alertname": "LatentserveDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "latentserve",
                                    "instance": "a",
                                },
                                "exp_annotations": {
                                    "summary": "latentserve a is not answering /metrics"
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    _prometheus_bin()
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
