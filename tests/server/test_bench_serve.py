"""`latentserve bench serve` against a tiny-model server: every request answered, the
refined share as asked, plain and refined latency reported apart, and --compare-plain
running both loads in one run."""

from __future__ import annotations

import json

from server.app import build_app
from server.cli import main
from server.config import ServerConfig
from tests.support.live import LiveServer


def test_compare_plain_runs_both_loads(tiny_model_dir, tmp_path, capsys):
    config = ServerConfig(model=str(tiny_model_dir), device="cpu", max_batch_size=4)
    out = tmp_path / "bench.json"
    with LiveServer(build_app(config)) as live:
        args = ["--url", live.url, "--num-requests", "8", "--concurrency", "4"]
        args += ["--max-tokens", "4", "--latent-fraction", "0.25", "--refine-steps", "1"]
        assert main(["bench", "serve", *args, "--compare-plain", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    plain, mixed = report["plain_only"], report["mixed"]
    assert plain["successful_requests"] == mixed["successful_requests"] == 8
    assert plain["refined_requests"] == 0 and mixed["refined_requests"] == 2
    assert plain["refined_e2e_latency_ms"]["p99"] is None
    assert mixed["refined_e2e_latency_ms"]["p99"] > 0
    ratio = report["plain_latency_ratio"]["p99"]
    assert ratio == mixed["plain_e2e_latency_ms"]["p99"] / plain["plain_e2e_latency_ms"]["p99"]
    assert "mixed / plain-only" in capsys.readouterr().out
