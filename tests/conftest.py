import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run on CPU tensors through the interpreter (read when a kernel is defined).
# LATENTSERVE_TEST_DEVICE=cuda (benchmarks/gpu_check.sh) puts tests/kernels' tensors on CUDA,
# where the kernels are compiled: the interpreter is then not switched on here.
if os.environ.get("LATENTSERVE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tok():
    """The byte-level tokenizer of the tiny test model."""
    from tests.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def model(tok):
    """A tiny random Llama in memory (eval mode; tests must not change its weights)."""
    from tests.tiny import build_model

    return build_model(len(tok), seed=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from server.engine.loader import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32", show_progress=False)


@pytest.fixture(scope="session")
def grader():
    """A reward webhook on loopback (tests/grader.py)."""
    from tests.grader import Grader

    with Grader() as g:
        yield g


def pytest_collection_modifyitems(config, items):
    """`vllm` tests skip without the extra, unless LATENTSERVE_REQUIRE_VLLM=1 (CI)."""
    from server.engine.vllm_runner import vllm_available

    if vllm_available():
        return
    marked = [item for item in items if "vllm" in item.keywords]
    if marked and os.environ.get("LATENTSERVE_REQUIRE_VLLM") == "1":
        raise pytest.UsageError(
            f"LATENTSERVE_REQUIRE_VLLM=1 but vllm is not installed ({len(marked)} vllm "
            "tests would not run): make install-vllm"
        )
    skip = pytest.mark.skip(reason="needs the vllm extra: make install-vllm")
    for item in marked:
        item.add_marker(skip)
