"""`latentserve telemetry-plot`: latent trajectories of many requests in 2-D.

    latentserve telemetry-plot --in traces.jsonl --out plot.png [--projection pca|tsne]

Each input line is a JSON response from either completion route (or just its `latent`
object) of a request sent with `"return_trace": true`. Every request's trace points (one
per refinement step or loop: the mean latent, `latent_ops/telemetry.py`) are projected
together to 2-D, each moved to start at the origin (refinement moves latents by a few
percent, so absolute positions would only separate the requests), with PCA (numpy's SVD; t-SNE needs scikit-learn) and drawn as one line per
request, from a circle (start) to a square (end), coloured by the request's final reward
(LatentSeek) or, without rewards, by its number of loops. A second panel shows each
request's distance from its first latents per iteration. Reads files, writes a PNG; no
model, no server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_traces(path: Path) -> list[dict]:
    """The `latent` objects with a trace, one per line that has one."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SystemExit(f"{path}:{n}: not JSON ({exc})") from exc
        latent = row.get("latent", row)
        if isinstance(latent, dict) and (latent.get("trace") or {}).get("points"):
            out.append(latent)
    return out


def project(points, method: str):
    """[n, d] list of lists -> [n, 2] numpy array."""
    import numpy as np

    x = np.asarray(points, dtype=np.float64)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as exc:
            raise SystemExit(
                "--projection tsne needs scikit-learn (pip install scikit-learn)"
            ) from exc
        return TSNE(
            n_components=2, perplexity=min(30, max(2, len(x) - 1)), init="pca"
        ).fit_transform(x)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T if vt.shape[0] >= 2 else np.pad(centred @ vt.T, ((0, 0), (0, 1)))


def plot(traces: list[dict], out: Path, method: str = "pca") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    if not traces:
        raise SystemExit("no request in the input has a trace (send them with return_trace)")
    # Each trajectory from its own start: refinement moves latents a few percent, so
    # absolute positions would show only how requests differ from each other.
    flat = [
        [a - b for a, b in zip(p, t["trace"]["points"][0], strict=True)]
        for t in traces
        for p in t["trace"]["points"]
    ]
    xy = project(flat, method)
    rewarded = all(t.get("final_reward") is not None for t in traces)
    values = [t["final_reward"] if rewarded else (t.get("loops") or 0) for t in traces]
    norm = colors.Normalize(
        min(values), max(values) if max(values) > min(values) else min(values) + 1
    )
    cmap = matplotlib.colormaps["viridis"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    i = 0
    for t, v in zip(traces, values, strict=True):
        n = len(t["trace"]["points"])
        seg = xy[i : i + n]
        i += n
        ax.plot(seg[:, 0], seg[:, 1], "-", color=cmap(norm(v)), lw=1.2, alpha=0.85)
        ax.scatter(seg[0, 0], seg[0, 1], marker="o", s=18, color=cmap(norm(v)))
        ax.scatter(seg[-1, 0], seg[-1, 1], marker="s", s=18, color=cmap(norm(v)))
        ax2.plot(
            range(len(t["trace"]["distance"])),
            t["trace"]["distance"],
            color=cmap(norm(v)),
            alpha=0.85,
        )
    label = "final reward" if rewarded else "loops"
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax2, label=label)
    methods = sorted({t.get("method", "?") for t in traces})
    ax.set_title(
        f"{len(traces)} {'/'.join(methods)} trajectories from their start ({method.upper()}), "
        "o start, ■ end",
        fontsize=10,
    )
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax2.set_title("distance from the first latents")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("‖z_k − z_0‖ / ‖z_0‖")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in", dest="inp", required=True, help="JSONL of responses or latent objects"
    )
    parser.add_argument("--out", default="telemetry.png", help="PNG to write")
    parser.add_argument("--projection", choices=["pca", "tsne"], default="pca")


def run(ns: argparse.Namespace) -> int:
    traces = load_traces(Path(ns.inp))
    plot(traces, Path(ns.out), ns.projection)
    print(f"wrote {ns.out}: {len(traces)} trajectories")
    return 0
