"""docker-compose and Dockerfile, checked without a Docker daemon (none runs here)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_compose_wires_server_prometheus_and_grafana():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"latentserve", "prometheus", "grafana"}
    assert (DEPLOY / services["latentserve"]["build"] / "Dockerfile").is_file()
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            host = volume.split(":")[0]
            assert (DEPLOY / host).exists(), volume
    # Prometheus scrapes the compose service name, Grafana reads from the Prometheus service
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["latentserve:8000"]
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text()
    )
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounted


def test_dockerfile_runs_unprivileged_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.split()[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert lines.count("FROM") == 1 and "nvidia/cuda" in text
    assert lines[-1] == "ENTRYPOINT" and "USER" in lines[lines.index("EXPOSE") - 3 :]
    assert "USER latentserve" in text and "HEALTHCHECK" in text and "/health" in text
    assert 'ENTRYPOINT ["latentserve", "serve"' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)
