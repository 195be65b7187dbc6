"""`latentserve train-slr`: train SLR loop adapters (loop LoRAs + timestep MLP), base frozen.

COCONUT-style distillation (Hao et al. 2024), one thought per reasoning step: an example
is a question with its worked solution (steps s_1..s_n, answer N). At curriculum stage k
the first min(k, n) steps are replaced by k latent loops: the prompt is run (no
gradient), then k thought passes (`latent_ops.slr.loop_input` as at inference, loop t
with its LoRA), then the remaining steps and "The answer is \\boxed{N}." are teacher
forced after the thoughts with the base model (as the server decodes), and the loss is
their cross-entropy. Gradients reach the adapters through the thoughts' keys and values.
With `--keep-steps` no step is replaced: the k thoughts precede the whole solution, so
the loops learn a question-conditioned prefix (prompt tuning through the loop) rather than
COCONUT's stand-in for steps. Stages run in order over `--steps` (stage k for the k-th equal share; the last stage,
k = `--loops`, is what the server runs). Data: the seeded synthetic generator (seeds from
1000 on, so evaluation sets with small seeds stay unseen), with `--varied N` the second
generator's problems (seeds from 1000 on too), and with `--gsm8k` GSM8K rows.

Lives beside the method it trains (`latent_ops.slr.loop_input` and `latent_ops.lora`, the
code the server runs). It imports nothing from server/: the model, its tokenizer, the prompt
of a problem and the problems come from a `setup(cfg) -> TrainingData` the caller passes
(`server.cli.slr_training_data`: the server's loader, chat template, eval's question text
and problem sets).
Writes an adapter directory (`latent_ops/lora.py` format) the server loads with
`--slr-adapter NAME=DIR`, and a resumable `checkpoint.pt` beside it every `--save-every`
steps (`--resume` continues from it). Batches rows of one stage together; left-pads
prompts as the runner does. Not a general fine-tuning tool: the base weights never move.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from latent_ops.choices import Feedback, Residual


class TrainConfig(BaseModel):
    out: str = Field("slr-adapter", description="adapter directory to write")
    model: str = Field("default", description="base model, as for serve")
    loops: int = Field(4, ge=1, le=16, description="thought loops (= curriculum stages)")
    rank: int = Field(8, ge=1, le=256, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale alpha/rank)")
    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    feedback: Feedback = Field("hidden", description="loop feedback")
    residual: Residual = Field("h0", description="loop residual")
    beta: float = Field(0.1, ge=0, description="residual weight")
    timestep_scale: float = Field(0.1, ge=0, description="timestep embedding scale")
    synthetic: int = Field(4000, ge=0, description="synthetic problems (1-3 steps) to draw")
    varied: int = Field(
        0, ge=0, description="also this many of the second generator's problems (varied:)"
    )
    gsm8k: str | None = Field(None, description="also train on this GSM8K-format file")
    exclude: str | None = Field(
        "synthetic:200,steps=2-3",
        description="problem sets (as eval's --data, several separated by ';') whose "
        "questions are left out of training",
    )
    keep_steps: bool = Field(
        False,
        description="thoughts precede the whole solution (no step replaced): the loops learn "
        "a question-conditioned prefix instead of standing in for steps",
    )
    max_target_tokens: int = Field(64, ge=8, description="cap on the distilled target")
    save_every: int = Field(50, ge=1, description="checkpoint every N steps")
    resume: bool = Field(False, description="continue from OUT/checkpoint.pt")
    time_limit_min: float | None = Field(None, gt=0, description="stop (and save) after this")
    stop_after: int | None = Field(
        None, ge=1, description="stop (and save) after N steps of this run; --resume goes on"
    )
    seed: int = Field(0, description="data order and init")

    def replaced_steps(self, stage: int) -> int:
        """Reasoning steps the thoughts stand in for at curriculum stage `stage`."""
        return 0 if self.keep_steps else stage


@dataclass
class TrainingData:
    """What training reads from outside latent_ops, built by the caller's `setup(cfg)`."""

    model: Any  # a transformers causal LM (its weights are frozen here)
    tokenizer: Any
    prompt: Callable[[Any], list[int]]  # a problem -> its chat prompt's token ids
    problems: list  # objects with .question, .rationale (steps) and .answer


def target_text(rationale, answer: str, k: int) -> str:
    """What is distilled after k thoughts: the steps not replaced, then the answer."""
    rest = list(rationale[min(k, len(rationale)) :])
    return "\n".join([*rest, f"The answer is \\boxed{{{answer}}}."])


def train(cfg: TrainConfig, setup: Callable[[TrainConfig], TrainingData], progress=None) -> dict:
    import torch
    from transformers import DynamicCache

    from latent_ops.lora import AdapterConfig, LoopAdapter, LoRABank
    from latent_ops.slr import SLRConfig, loop_input

    torch.manual_seed(cfg.seed)
    data = setup(cfg)
    model, tok = data.model, data.tokenizer
    model.requires_grad_(False)
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    embed = model.get_input_embeddings().weight
    embed_norm = float(embed.norm(dim=-1).mean())
    slr_settings = {
        "feedback": cfg.feedback,
        "residual": cfg.residual,
        "beta": cfg.beta,
        "timestep_scale": cfg.timestep_scale,
    }
    slr_cfg = SLRConfig(max_loops=cfg.loops, **slr_settings)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    adapter = LoopAdapter(
        AdapterConfig(loops=cfg.loops, rank=cfg.rank, alpha=cfg.alpha, slr=slr_settings), model
    )
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=0.0)
    start_step, history = 0, []
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        adapter.load_state_dict(state["adapter"])
        opt.load_state_dict(state["optimizer"])
        start_step, history = state["step"], state["history"]
    bank = LoRABank()
    bank.add("train", adapter)
    bank.install(model)

    problems = data.problems
    rng = random.Random(cfg.seed)
    order = list(range(len(problems)))
    rng.shuffle(order)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def stage(step: int) -> int:  # 1..loops, equal shares of the run
        return min(cfg.loops, 1 + step * cfg.loops // cfg.steps)

    def batch(step: int, k: int):
        rows = [
            problems[order[(step * cfg.batch_size + i) % len(order)]] for i in range(cfg.batch_size)
        ]
        prompts = [data.prompt(p) for p in rows]
        targets = [
            tok(
                target_text(p.rationale, p.answer, cfg.replaced_steps(k)),
                add_special_tokens=False,
            )["input_ids"][: cfg.max_target_tokens]
            for p in rows
        ]
        return prompts, targets

    def loss_of(prompts, targets, k: int):
        b, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            h = decoder(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache
            ).last_hidden_state[:, -1]
        anchor = embed[ids[:, -1]]
        logits = lm_head(h)
        next_pos = mask.sum(-1)  # [b]
        prev = None
        for t in range(1, k + 1):
            x = loop_input(
                slr_cfg,
                t,
                h,
                torch.log_softmax(logits, -1),
                anchor,
                prev,
                embed,
                embed_norm,
                adapter,
            )
            prev = x
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            with bank.rows(torch.full((b,), bank.slot("train", t), dtype=torch.long)):
                h = decoder(
                    inputs_embeds=x[:, None],
                    attention_mask=mask,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                ).last_hidden_state[:, -1]
            next_pos = next_pos + 1
            logits = lm_head(h)
        tw = max(len(t) for t in targets)
        tids = torch.full((b, tw), pad, dtype=torch.long)
        labels = torch.full((b, tw), -100, dtype=torch.long)
        tmask = torch.zeros((b, tw), dtype=torch.long)
        for row, tgt in enumerate(targets):
            tids[row, : len(tgt)] = torch.tensor(tgt)
            labels[row, : len(tgt)] = torch.tensor(tgt)
            tmask[row, : len(tgt)] = 1
        mask = torch.cat([mask, tmask], dim=1)
        tpos = next_pos[:, None] + torch.arange(tw)[None]
        states = decoder(
            input_ids=tids, attention_mask=mask, position_ids=tpos, past_key_values=cache
        ).last_hidden_state  # [b, tw, d]
        # the first target token is predicted by the last thought, the rest by the targets
        all_logits = torch.cat([logits[:, None], lm_head(states[:, :-1])], dim=1)
        return torch.nn.functional.cross_entropy(
            all_logits.reshape(-1, all_logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )

    def save(step: int) -> None:
        adapter.save(out)
        torch.save(
            {
                "adapter": adapter.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "history": history,
                "config": cfg.model_dump(),
            },
            ckpt_path,
        )
        (out / "train-log.json").write_text(json.dumps(history))

    started = time.monotonic()
    step = start_step
    for step in range(start_step, cfg.steps):
        k = stage(step)
        prompts, targets = batch(step, k)
        loss = loss_of(prompts, targets, k)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        history.append({"step": step + 1, "stage": k, "loss": round(loss.item(), 5)})
        if progress is not None:
            progress.update(1)
            progress.set_postfix(stage=k, loss=f"{float(loss):.3f}")
        if (step + 1) % cfg.save_every == 0:
            save(step + 1)
        if cfg.time_limit_min and time.monotonic() - started > cfg.time_limit_min * 60:
            break
        if cfg.stop_after and step + 1 - start_step >= cfg.stop_after:
            break
    save(step + 1)
    return {"steps": step + 1, "history": history, "out": str(out)}


def main(cfg: TrainConfig, setup: Callable[[TrainConfig], TrainingData]) -> int:
    from tqdm import tqdm

    with tqdm(total=cfg.steps, desc="train-slr", unit="step") as bar:
        if cfg.resume:
            bar.update(0)
        result = train(cfg, setup, bar)
    last = result["history"][-10:]
    mean = sum(h["loss"] for h in last) / max(len(last), 1)
    print(
        f"wrote {result['out']} after {result['steps']} steps; mean loss of the last 10: {mean:.4f}"
    )
    return 0
