"""The GPU check: kernel tests on CUDA, the kernel benchmark at real LM-head shapes, and the
runner's decode with latent capture on a 7B-shaped model, summarised in one table.

    python -m benchmarks.gpu_check [--quick]        # or: bash benchmarks/gpu_check.sh

Run from the repository root on a CUDA machine with torch, triton and transformers; it
needs nothing else (no package registry, no model weights, no install of this package).
Exits 2 at once, with one line on stderr, when torch sees no CUDA device. Parts, each with
its own time limit so that the whole stays under 8 minutes:
1. `pytest tests/kernels` with LATENTSERVE_TEST_DEVICE=cuda and TRITON_INTERPRET unset:
   the latent_pg_step tests on CUDA tensors with the compiled Triton kernels (skipped, and
   said so, when pytest is not installed);
2. parity at real shapes: one latent_pg_step call, Triton against the torch closed form,
   on bf16 LM heads of SmolLM2-135M (d 576, V 49152), Qwen2.5-7B (3584, 152064) and
   Llama-3.1-8B (4096, 128256), 64 rows: the largest relative latent error and the share
   of argmax tokens that agree;
3. `python -m kernels.bench --device cuda --dtype bfloat16` at those three shapes;
4. `server.engine.runner.ModelRunner` on a random-weight Llama of 7B shape (Llama-2-7B:
   d 4096, 32 layers, 32 heads, MLP 11008, V 32000) built on the GPU in bf16 from a
   `LlamaConfig` (nothing downloaded): greedy decode with `capture_latents`, EOS ignored,
   tokens/s at batch 1 and 16, and the captured latents against a full forward pass.
Prints each part's output as it goes, then one Markdown table. Exit status 0 when every
part passed, 1 otherwise. A check and a benchmark: speeds are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("smollm2", "qwen7b", "llama8b")  # kernels/bench.py SHAPES
LIMITS_S = {"tests": 180, "bench": 150}  # the runner part checks its own clock


def _no_cuda_exit() -> None:
    try:
        import torch
    except ImportError:
        sys.stderr.write("gpu_check: torch is not installed; this check needs torch with CUDA\n")
        sys.exit(2)
    if not torch.cuda.is_available():
        sys.stderr.write(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine\n"
        )
        sys.exit(2)


def _child_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # compiled kernels, never the interpreter
    env["LATENTSERVE_TEST_DEVICE"] = "cuda"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _run(cmd: list[str], limit_s: int) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, stdout, seconds); stdout and stderr are echoed."""
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=limit_s
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        print(out or "", flush=True)
        return None, out or "", time.monotonic() - start
    print(proc.stdout + proc.stderr, flush=True)
    return proc.returncode, proc.stdout, time.monotonic() - start


def kernel_tests(rows: list) -> bool:
    try:
        import pytest  # noqa: F401
    except ImportError:
        rows.append(("kernel tests", "tests/kernels on cuda", "SKIPPED", "pytest not installed"))
        return True
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels"]
    rc, out, secs = _run(cmd, LIMITS_S["tests"])
    summary = next((line.strip("= ") for line in reversed(out.splitlines()) if " in " in line), "")
    status = "timeout" if rc is None else ("passed" if rc == 0 else f"FAILED (exit {rc})")
    rows.append(("kernel tests", "tests/kernels on cuda", status, f"{summary} ({secs:.0f} s)"))
    return rc == 0


def parity(rows: list) -> bool:
    import torch

    from kernels import latent_pg_step
    from kernels.bench import SHAPES as BENCH_SHAPES

    ok = True
    device = torch.device("cuda")
    for name in SHAPES:
        d, v = BENCH_SHAPES[name]
        case = f"{name} (d {d}, V {v}), N 64, bf16 head"
        try:
            g = torch.Generator().manual_seed(0)
            weight = (torch.randn(v, d, generator=g) / d**0.5).to(torch.bfloat16).to(device)
            z = torch.randn(64, d, generator=g).to(device)
            reward = -torch.rand(64, generator=g).to(device)
            lr = torch.full((64,), 0.03, device=device)
            step = torch.ones(64, dtype=torch.long, device=device)
            results = {}
            for impl in ("torch", "triton"):
                zi, m, s = z.clone(), torch.zeros_like(z), torch.zeros_like(z)
                tokens = latent_pg_step(zi, weight, reward, lr, m, s, step, impl=impl)
                results[impl] = (zi, tokens)
            torch.cuda.synchronize()
            (z_ref, t_ref), (z_tri, t_tri) = results["torch"], results["triton"]
            update = (z_ref - z).norm(dim=1).clamp_min(1e-12)
            err = float(((z_tri - z_ref).norm(dim=1) / update).max())
            agree = float((t_tri == t_ref).float().mean())
            good = err <= 2e-2  # the bf16 tolerance of tests/kernels; tokens: near ties flip
            ok &= good
            rows.append(
                (
                    "triton vs torch",
                    case,
                    "passed" if good else "FAILED",
                    f"max rel. latent error {err:.1e}, tokens agree {agree:.0%}",
                )
            )
        except Exception as exc:  # report it and go on to the next part
            ok = False
            rows.append(("triton vs torch", case, "FAILED", f"{type(exc).__name__}: {exc}"[:120]))
    return ok


def kernel_bench(rows: list, quick: bool) -> bool:
    ns = "64,512" if quick else "64,512,4096"
    cmd = [sys.executable, "-m", "kernels.bench", "--device", "cuda", "--dtype", "bfloat16"]
    cmd += ["--shapes", ",".join(SHAPES), "--n", ns, "--repeats", "5", "--json"]
    rc, out, secs = _run(cmd, LIMITS_S["bench"])
    if rc != 0:
        status = "timeout" if rc is None else f"FAILED (exit {rc})"
        tail = out.strip().splitlines()[-1:] or [""]
        rows.append(("kernels.bench", f"{','.join(SHAPES)}, N {ns}", status, tail[0][:120]))
        return False
    figures = json.loads(out[out.index("\n[") :])
    for r in figures:
        rows.append(
            (
                "kernels.bench",
                f"{r['shape']} (d {r['d']}, V {r['V']}), N {r['N']}, {r['dtype']}",
                "ok",
                f"{r['latent_pg_step_ms']:.3f} ms, {r['of_floor']:.1f}x floor, "
                f"{r['speedup_vs_autograd']:.0f}x per-request autograd, "
                f"{r['bandwidth_GBps']:.0f} GB/s",
            )
        )
    return True


def build_7b(device):
    """A random-weight Llama of Llama-2-7B shape, bf16, made on `device` (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32_000,
        hidden_size=4096,
        intermediate_size=11_008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def runner(rows: list, quick: bool, deadline: float, device="cuda", build=build_7b) -> bool:
    import torch

    from latent_ops.program import SamplingParams
    from server.engine.runner import ModelRunner, Sequence

    device = torch.device(device)
    part = "runner, 7B random bf16"
    try:
        start = time.monotonic()
        model = build(device)
        d, vocab = model.config.hidden_size, model.config.vocab_size
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            (
                part,
                "build on cuda",
                "ok",
                f"{params / 1e9:.2f} B params, {time.monotonic() - start:.0f} s",
            )
        )
    except Exception as exc:
        rows.append((part, "build on cuda", "FAILED", f"{type(exc).__name__}: {exc}"[:120]))
        return False
    prompt_len, tokens = 128, (16 if quick else 32)
    g = torch.Generator().manual_seed(1)
    ok = True
    latents_checked = False
    for batch in (1, 16):
        case = f"batch {batch}, prompt {prompt_len}, {tokens} new tokens, capture_latents"
        if time.monotonic() > deadline:
            rows.append((part, case, "SKIPPED", "out of time"))
            ok = False
            continue
        try:
            prompts = [
                torch.randint(3, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)
            ]

            def decode(prompts=prompts, batch=batch):
                run = ModelRunner(model, max_batch_size=batch, eos_token_ids=set())
                sp = SamplingParams(max_tokens=tokens, ignore_eos=True, capture_latents=True)
                seqs = [Sequence(i, p, sp) for i, p in enumerate(prompts)]
                for seq in seqs:
                    run.add(seq)
                while run.has_work:
                    run.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return seqs

            decode()  # warm-up
            start = time.perf_counter()
            seqs = decode()
            secs = time.perf_counter() - start
            shapes_ok = all(
                len(s.output_ids) == tokens
                and s.latents_tensor().shape == (tokens, d)
                and bool(torch.isfinite(s.latents_tensor()).all())
                for s in seqs
            )
            note = f"{batch * tokens / secs:.1f} tokens/s ({secs:.2f} s incl. prefill)"
            if not latents_checked:  # the captured latents against one full forward pass
                seq = seqs[0]
                ids = torch.tensor([seq.prompt_ids + seq.output_ids[:-1]], device=device)
                with torch.inference_mode():
                    full = model.model(input_ids=ids).last_hidden_state[0, prompt_len - 1 :]
                got = seq.latents_tensor().to(device)
                rel = float((got - full.float()).norm() / full.float().norm())
                note += f"; latents vs full forward: rel. error {rel:.1e}"
                shapes_ok &= rel < 0.25  # a misaligned position gives ~1.4; bf16 round-off far less
                latents_checked = True
            ok &= shapes_ok
            rows.append((part, case, "passed" if shapes_ok else "FAILED", note))
        except Exception as exc:
            ok = False
            rows.append((part, case, "FAILED", f"{type(exc).__name__}: {exc}"[:120]))
    model = None  # free the GPU memory before returning
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and tokens")
    args = parser.parse_args(argv)
    _no_cuda_exit()
    import torch

    started = time.monotonic()
    deadline = started + 7 * 60  # the runner part starts no batch after this
    props = torch.cuda.get_device_properties(0)
    print(
        f"gpu_check: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
        f" (CUDA {torch.version.cuda})",
        flush=True,
    )
    rows: list[tuple[str, str, str, str]] = []
    ok = kernel_tests(rows)
    ok &= parity(rows)
    ok &= kernel_bench(rows, args.quick)
    ok &= runner(rows, args.quick, deadline)
    print(f"\n## GPU check: {props.name}, {time.monotonic() - started:.0f} s\n")
    print("| part | case | status | figures |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nall passed" if ok else "\nSOME PARTS FAILED (see the table and the output above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
