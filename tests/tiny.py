"""A tiny random Llama and a byte-level tokenizer, built locally for fast tests.

Nothing is downloaded: the tokenizer is byte-level BPE with no merges (256 byte symbols
plus three chat specials) and the model is randomly initialised from a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # the library returns a random order
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Untied head, 25x the default scale: with a tied head a random model copies its last
    # input token forever; this one wanders over the vocabulary (so bugs that feed a
    # stale token show up), its greedy logits lead by a clear margin (no argmax ties
    # between batched and solo runs) and sampling keeps some entropy.
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    return model.eval()


def make_tiny_model_dir(path: Path, seed: int = 0, **shape) -> Path:
    """shape: build_model's layers/hidden/heads (vLLM's CPU attention wants head_dim 64:
    hidden=128, heads=2)."""
    path = Path(path)
    tok = build_tokenizer()
    model = build_model(len(tok), seed=seed, **shape)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
