"""Loop-wise LoRA (Relaxed Recursive Transformers, Bae et al. 2025) for SLR, per batch row.

A `LoopAdapter` holds one low-rank pair per loop index and target projection, plus the
optional timestep MLP:

    W x  ->  W x + (alpha / r) · B_t (A_t x)      for the rows of loop t

`LoRABank.install(model)` wraps the target `nn.Linear` modules of the model in place
(their weights are neither copied nor changed) so that one batched pass can run every row
with its own adapter and loop, or with none: the caller runs the pass inside
`with bank.rows(slots):` ([B] long, -1 = no adapter). All adapters of a bank share the target
names and rank (several named adapters are stacked into one slot table). Used by the runner
for thought passes and by `latent_ops/train_slr.py`, where the same code carries
gradients. We wrote this instead of using peft: peft applies one adapter to a whole batch
(or, with mixed-adapter batches, per request id) and would need a copy of the module tree
per loop index; here a row's slot picks its pair with one gather.

Saved format (a directory): `adapter.json` (targets, rank, alpha, loops, the SLR settings
it was trained with) and `adapter.safetensors` (tensors `{target}.A` [T, r, in],
`{target}.B` [T, out, r], optional `timestep.*`).
"""

from __future__ import annotations

import json
import types
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class AdapterConfig:
    loops: int
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # SLR settings the adapter was trained with; a request using it takes them as defaults
    slr: dict = field(default_factory=dict)
    timestep_mlp: bool = True


def _key(module_path: str) -> str:
    """A module path as a ParameterDict key ("model.layers.0.mlp.up_proj" -> with "__")."""
    return module_path.replace(".", "__")


def target_modules(model: nn.Module, targets) -> dict[str, nn.Linear]:
    """key -> every nn.Linear of `model` whose own name is in `targets` (one per layer)."""
    return {
        _key(name): module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


class LoopAdapter(nn.Module):
    """Per-loop LoRA pairs for every target linear layer of `model` (one pair per layer and
    loop, as LoRA does per module), and a timestep MLP."""

    def __init__(self, cfg: AdapterConfig, model: nn.Module):
        super().__init__()
        self.cfg = cfg
        modules = target_modules(model, cfg.targets)
        found = {key.rsplit("__", 1)[-1] for key in modules}
        missing = set(cfg.targets) - found
        if missing:
            raise ValueError(f"the model has no linear layers named {sorted(missing)}")
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for leaf, module in modules.items():
            fan_in, fan_out = module.in_features, module.out_features
            a = torch.empty(cfg.loops, cfg.rank, fan_in)
            for t in range(cfg.loops):
                nn.init.kaiming_uniform_(a[t], a=5**0.5)
            self.A[leaf] = nn.Parameter(a)
            self.B[leaf] = nn.Parameter(torch.zeros(cfg.loops, fan_out, cfg.rank))  # starts at W
        d = model.get_input_embeddings().weight.shape[1]
        self.timestep = None
        if cfg.timestep_mlp:  # residual MLP on the sinusoid, zero-initialised output
            self.timestep = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            nn.init.zeros_(self.timestep[2].weight)
            nn.init.zeros_(self.timestep[2].bias)

    def timestep_embedding(self, sinusoid: torch.Tensor) -> torch.Tensor:
        """[d] unit sinusoid -> [d]; identity plus the learned MLP when there is one."""
        if self.timestep is None:
            return sinusoid
        return sinusoid + self.timestep(sinusoid)

    def slr_defaults(self, name: str) -> dict:
        """The SLR settings a request naming this adapter (as `name`) starts from: its
        trained loop count and loop settings (SLRConfig keywords)."""
        return {"max_loops": self.cfg.loops, **self.cfg.slr, "adapter": name}

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"{k}.A": v.detach().contiguous() for k, v in self.A.items()}
        tensors |= {f"{k}.B": v.detach().contiguous() for k, v in self.B.items()}
        if self.timestep is not None:
            tensors |= {
                f"timestep.{k}": v.detach().contiguous()
                for k, v in self.timestep.state_dict().items()
            }
        save_file(tensors, str(path / "adapter.safetensors"))
        meta = asdict(self.cfg) | {"targets": list(self.cfg.targets)}
        (path / "adapter.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> LoopAdapter:
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "adapter.json").read_text())
        meta["targets"] = tuple(meta["targets"])
        adapter = cls(AdapterConfig(**meta), model)
        tensors = load_file(str(path / "adapter.safetensors"))
        with torch.no_grad():
            for k in adapter.A:
                adapter.A[k].copy_(tensors[f"{k}.A"])
                adapter.B[k].copy_(tensors[f"{k}.B"])
            if adapter.timestep is not None:
                adapter.timestep.load_state_dict(
                    {
                        k[len("timestep.") :]: v
                        for k, v in tensors.items()
                        if k.startswith("timestep.")
                    }
                )
        return adapter


class LoRABank:
    """The adapters installed on one model, stacked into one slot table per target.

    Slot of (adapter name, loop t) = offset[name] + t - 1 (t >= 1); loops past an
    adapter's last one reuse its last pair.
    """

    def __init__(self):
        self.adapters: dict[str, LoopAdapter] = {}
        self.offsets: dict[str, int] = {}
        self.slots = None  # [B] long, set around one forward pass (see the setter)
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._scale = 1.0
        self._installed = False

    def add(self, name: str, adapter: LoopAdapter) -> None:
        if self.adapters:
            first = next(iter(self.adapters.values())).cfg
            if (first.rank, first.targets, first.alpha) != (
                adapter.cfg.rank,
                adapter.cfg.targets,
                adapter.cfg.alpha,
            ):
                raise ValueError("adapters in one bank need the same rank, alpha and targets")
        self.offsets[name] = sum(a.cfg.loops for a in self.adapters.values())
        self.adapters[name] = adapter
        self._scale = adapter.cfg.alpha / adapter.cfg.rank
        self._restack()

    def _restack(self) -> None:
        adapters = list(self.adapters.values())
        self._tables = {
            leaf: (
                torch.cat([a.A[leaf] for a in adapters]),
                torch.cat([a.B[leaf] for a in adapters]),
            )
            for leaf in adapters[0].A
        }

    @property
    def slots(self) -> torch.Tensor | None:
        return self._slots

    @slots.setter
    def slots(self, slots: torch.Tensor | None) -> None:
        """Also derives, once per pass rather than per layer, the table index of each row
        and which rows have an adapter (None when none has)."""
        self._slots = slots
        keep = None if slots is None else slots >= 0
        self._rows = None if keep is None or not bool(keep.any()) else (slots.clamp(min=0), keep)

    def slot(self, name: str, loop: int) -> int:
        adapter = self.adapters[name]
        return self.offsets[name] + min(loop, adapter.cfg.loops) - 1

    @contextmanager
    def rows(self, slots: torch.Tensor | None):
        """Apply `slots` ([B] long, -1 = none) to the passes run inside; None: no adapter."""
        self.slots = slots
        try:
            yield
        finally:
            self.slots = None

    def install(self, model: nn.Module) -> None:
        """Wrap the model's target linear layers (once); a no-op pass-through while
        `slots` is None."""
        if self._installed:
            return
        targets = next(iter(self.adapters.values())).cfg.targets
        for key, module in target_modules(model, targets).items():
            module.forward = types.MethodType(_lora_forward(self, key, module.forward), module)
        self._installed = True

    def delta(self, leaf: str, x: torch.Tensor) -> torch.Tensor | None:
        """The LoRA term of layer `leaf` (a target_modules key) for x [B, S, in] under
        `slots`, or None when no row has one."""
        if self._rows is None:
            return None
        index, keep = self._rows
        if torch.is_grad_enabled():  # training: stack the live parameters, so grads flow
            self._restack()
        a_all, b_all = self._tables[leaf]
        a = a_all[index].to(x.dtype)  # [B, r, in]
        b = b_all[index].to(x.dtype)  # [B, out, r]
        low = torch.einsum("bsi,bri->bsr", x, a)
        out = torch.einsum("bsr,bor->bso", low, b) * self._scale
        return out * keep.to(x.dtype)[:, None, None]


def _lora_forward(bank: LoRABank, leaf: str, base_forward):
    def forward(self, x):
        out = base_forward(x)
        delta = bank.delta(leaf, x)
        return out if delta is None else out + delta

    return forward
