"""LatentSeek written the way the paper's code runs it: the yardstick for tests and benches.

One request at a time, no KV cache (every new token re-runs the whole sequence), the
answer's latents from a separate forward pass, autograd on
`-R * sum_t log softmax(W z_t)[argmax W z_t]` with `torch.optim.Adam`, argmax tokens back
into the model, greedy continuation, stop when R > threshold, and the last answer returned
(`select="last"`). It shares no code with the engine path (`latent_ops/latentseek.py`,
`server/engine/`) so that agreement between the two means something. Not served.
"""

from __future__ import annotations

import math

import torch


def greedy_uncached(model, ids: list[int], max_new: int, eos: set[int]) -> list[int]:
    """Greedy decoding without a cache: token t costs a forward over all len(ids)+t tokens."""
    out: list[int] = []
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
        if out[-1] in eos:
            break
    return out


def _score(reward, prompt_text: str, text: str) -> float:
    """A reward that needs no model (reference, regex) run without an engine."""
    gen = reward.score(prompt_text, text)
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value
    raise TypeError("paper_latentseek takes rewards that need no model calls")


def paper_latentseek(model, tok, prompt_ids, prompt_text, max_new, cfg, reward, eos):
    """Returns (answer text, reward history, answer token ids)."""
    y = greedy_uncached(model, prompt_ids, max_new, eos)
    history = [_score(reward, prompt_text, tok.decode(y, skip_special_tokens=True))]
    if history[-1] > cfg.threshold:
        return tok.decode(y, skip_special_tokens=True), history, y
    n = min(math.floor(cfg.fraction * len(y)), cfg.max_update_tokens)
    if n == 0:
        return tok.decode(y, skip_special_tokens=True), history, y
    with torch.no_grad():
        states = model.model(torch.tensor([prompt_ids + y[:-1]])).last_hidden_state
    z = torch.nn.Parameter(states[0, len(prompt_ids) - 1 :][:n].clone().float())
    opt = torch.optim.Adam([z], lr=cfg.lr)
    head = model.lm_head.weight.float()
    for _ in range(cfg.max_steps):
        logp = torch.log_softmax(z @ head.T, dim=-1)
        loss = -history[-1] * logp.gather(1, logp.argmax(1, keepdim=True)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            prefix = (z @ head.T).argmax(1).tolist()
        stop_at = next((i for i, t in enumerate(prefix) if t in eos), None)
        if stop_at is not None:
            y = prefix[: stop_at + 1]
        else:
            y = prefix + greedy_uncached(model, prompt_ids + prefix, max_new - len(prefix), eos)
        history.append(_score(reward, prompt_text, tok.decode(y, skip_special_tokens=True)))
        if history[-1] > cfg.threshold:
            break
    return tok.decode(y, skip_special_tokens=True), history, y
