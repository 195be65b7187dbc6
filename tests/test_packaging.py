"""Our top-level packages shadow nothing, and importing them loads nothing heavy."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("server", "latent_ops", "kernels")


def _python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_no_other_distribution_provides_our_packages():
    owners = importlib.metadata.packages_distributions()
    for name in OURS:
        assert set(owners.get(name, ["latentserve"])) <= {"latentserve"}, (name, owners[name])


def test_transformers_does_not_take_our_kernels_for_the_hub_library():
    out = _python(
        "import importlib.util, kernels\n"
        "from transformers.utils import import_utils as iu\n"
        "from transformers.integrations import hub_kernels\n"  # imports `kernels` if it believes
        "print(iu.is_kernels_available(), importlib.util.find_spec('kernels').origin)"
    )
    available, origin = out.split()
    assert available == "False"
    assert Path(origin).resolve() == ROOT / "kernels" / "__init__.py"


def test_importing_the_server_loads_no_model_code():
    out = _python(
        "import sys, server.app, server.cli, server.config, server.protocol, server.metrics\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert out == "[]"


def test_cli_help_is_fast_and_lists_serve():
    out = _python("from server.cli import build_parser; print(build_parser().format_help())")
    assert "serve" in out
