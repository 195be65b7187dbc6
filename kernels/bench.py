"""Benchmark of `latent_pg_step` against its floor and the per-request autograd pattern.

    python -m kernels.bench [--device cuda] [--dtype bfloat16] [--shapes smollm2,qwen7b,llama8b]
                            [--n 64,512,4096] [--impl auto] [--repeats 5]

For each LM-head shape (d, V) and row count N, in one run on one device:
- the floor: max(bytes of W read once / measured bandwidth, FLOPs / measured matmul rate),
  with FLOPs = 6 N V d (logits, W^T p, logits of the updated latents);
- the achieved time of one `latent_pg_step` call over all N rows (`--impl`);
- the per-request autograd pattern of the paper's code: 16 requests of N/16 rows, each
  its own logits [N/16, V], log_softmax, backward, torch.optim.Adam step and argmax.
Bandwidth is measured with a device copy of W, the matmul rate with one [N, d] x [d, V]
product in W's dtype. Times are medians of `--repeats` after a warm-up. Prints a Markdown
table (and JSON with --json). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from kernels import latent_pg_step

SHAPES = {  # name: (d, V) of the LM head
    "smollm2": (576, 49_152),
    "qwen7b": (3_584, 152_064),
    "llama8b": (4_096, 128_256),
}
REQUESTS = 16


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(n, d, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(dtype).to(device)
    z = torch.randn(n, d, generator=g).to(device)
    reward = -torch.rand(n, generator=g).to(device)
    lr = torch.full((n,), 0.03, device=device)
    step = torch.ones(n, dtype=torch.long, device=device)
    return z, weight, reward, lr, step


def per_request_autograd(z, weight, reward, lr, requests=REQUESTS):
    """The paper's pattern: each request's rows through autograd and torch.optim.Adam."""
    out = []
    for rows, r, rate in zip(z.chunk(requests), reward.chunk(requests), lr.chunk(requests)):
        param = torch.nn.Parameter(rows.clone())
        opt = torch.optim.Adam([param], lr=float(rate[0]))
        logp = torch.log_softmax((param.to(weight.dtype) @ weight.T).float(), dim=-1)
        loss = -(r * logp.gather(1, logp.argmax(1, keepdim=True)).squeeze(1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            out.append((param.to(weight.dtype) @ weight.T).argmax(1))
    return torch.cat(out)


def measure(name, n, dtype, device, impl, repeats) -> dict:
    d, v = SHAPES[name]
    z, weight, reward, lr, step = _inputs(n, d, v, dtype, device)
    elt = weight.element_size()
    copy_s = _median_time(lambda: weight.clone(), device, repeats)
    bandwidth = 2 * weight.numel() * elt / copy_s  # read + write
    a = torch.randn(n, d, device=device).to(dtype)
    mm_s = _median_time(lambda: a @ weight.T, device, repeats)
    flop_rate = 2 * n * v * d / mm_s
    flops = 6 * n * v * d
    floor = max(weight.numel() * elt / bandwidth, flops / flop_rate)

    m, s = torch.zeros_like(z), torch.zeros_like(z)

    def ours():
        latent_pg_step(z.clone(), weight, reward, lr, m.clone(), s.clone(), step, impl=impl)

    ours_s = _median_time(ours, device, repeats)
    autograd_s = _median_time(lambda: per_request_autograd(z, weight, reward, lr), device, repeats)
    return {
        "shape": name,
        "d": d,
        "V": v,
        "N": n,
        "dtype": str(dtype).replace("torch.", ""),
        "bandwidth_GBps": bandwidth / 1e9,
        "matmul_TFLOPs": flop_rate / 1e12,
        "floor_ms": floor * 1e3,
        "latent_pg_step_ms": ours_s * 1e3,
        "of_floor": ours_s / floor,
        "per_request_autograd_ms": autograd_s * 1e3,
        "speedup_vs_autograd": autograd_s / ours_s,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--shapes", default="smollm2,qwen7b,llama8b")
    parser.add_argument("--n", default="64,512,4096", help="rows per call, comma-separated")
    parser.add_argument("--impl", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {where}, weights {dtype_name}, impl {args.impl}\n")
    print(
        "| shape (d, V) | N | floor ms | latent_pg_step ms | x floor | per-request autograd ms "
        "| speedup | GB/s | TFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.shapes.split(","):
        for n in (int(x) for x in args.n.split(",")):
            r = measure(name, n, dtype, device, args.impl, args.repeats)
            rows.append(r)
            print(
                f"| {name} ({r['d']}, {r['V']}) | {n} | {r['floor_ms']:.2f} "
                f"| {r['latent_pg_step_ms']:.2f} | {r['of_floor']:.1f} "
                f"| {r['per_request_autograd_ms']:.2f} | {r['speedup_vs_autograd']:.1f}x "
                f"| {r['bandwidth_GBps']:.0f} | {r['matmul_TFLOPs']:.2f} |",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
