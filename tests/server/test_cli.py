"""CLI flags are generated from ServerConfig; errors are one line."""

import subprocess
import sys

import pytest

from server.cli import build_parser, config_from_args
from server.config import ServerConfig


def _serve_config(argv):
    ns = build_parser().parse_args(["serve", *argv])
    return config_from_args(ServerConfig, ns)


def test_every_field_is_a_flag_with_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for name, field in ServerConfig.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
        assert field.description


def test_defaults_come_from_the_config_only(monkeypatch):
    monkeypatch.delenv("LATENTSERVE_API_KEY", raising=False)
    assert _serve_config([]) == ServerConfig()
    assert ServerConfig().host == "127.0.0.1" and ServerConfig().port == 8000


def test_flags_parse_to_typed_values():
    cfg = _serve_config(
        ["--port", "9001", "--max-batch-size", "3", "--dtype", "bfloat16", "--max-model-len", "256"]
    )
    assert (cfg.port, cfg.max_batch_size, cfg.dtype, cfg.max_model_len) == (
        9001,
        3,
        "bfloat16",
        256,
    )
    urls = ["http://127.0.0.1:9000/grade", "https://grader.example.com"]
    assert _serve_config(["--reward-url-allowlist", *urls]).reward_url_allowlist == urls
    assert _serve_config([]).reward_url_allowlist == []


def test_api_key_from_env_and_flag_wins(monkeypatch):
    monkeypatch.setenv("LATENTSERVE_API_KEY", "from-env")
    assert _serve_config([]).api_key == "from-env"
    assert _serve_config(["--api-key", "flag"]).api_key == "flag"


def test_choices_are_enforced():
    with pytest.raises(SystemExit):
        _serve_config(["--device", "tpu"])


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_invalid_value_is_one_line_exit_2():
    proc = _cli("serve", "--max-batch-size", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "latentserve: error: --max-batch-size: Input should be greater than or equal to 1 (got 0)"
    ]


@pytest.mark.parametrize("model", ["/no/such/model", "/etc/hostname", "/tmp"])
def test_unusable_model_is_one_line_exit_1(model):
    proc = _cli("serve", "--model", model, "--port", "0")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentserve: error: ")
    assert "Traceback" not in proc.stderr


def test_unreadable_model_weights_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    proc = _cli("serve", "--model", str(tmp_path), "--port", "0")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
