"""Tiny random configs of real transformers decoder-only models, and streaming helpers for the
cache tests (an explicit-mask reference forward replays exactly what each step could see)."""

from __future__ import annotations

import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": False}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 16}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
}


def tiny_model(arch: str = "llama", attn: str = "sdpa", seed: int = 0):
    config_cls, model_cls, extra = ARCHS[arch]
    config = config_cls(**COMMON, **extra)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    return model


@torch.no_grad()
def stream(model, cache, ids: torch.Tensor, block: int):
    """Feed ``ids [1, T]`` in blocks; return per-step logits and the held positions before each step."""
    logits, seen_before = [], []
    for start in range(0, ids.shape[1], block):
        held = sorted(cache.held_positions().tolist()) if start else []
        seen_before.append((start, held))
        out = model(input_ids=ids[:, start : start + block], past_key_values=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1), seen_before


def explicit_mask(seen_before, total: int) -> torch.Tensor:
    """``[total, total]`` bool: the query at position p sees what was held before its step, plus
    its own block causally."""
    mask = torch.zeros(total, total, dtype=torch.bool)
    starts = [s for s, _ in seen_before] + [total]
    for (start, held), end in zip(seen_before, starts[1:]):
        if held:
            mask[start:end, torch.tensor(held)] = True
        mask[start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
    return mask


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor, mask: torch.Tensor, attn: str) -> torch.Tensor:
    """One no-cache forward over the whole stream under ``mask`` (additive float under eager,
    where a boolean 4D mask would be silently wrong)."""
    dtype = model.dtype
    if attn.endswith("eager"):
        full = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    else:
        full = mask
    return model(input_ids=ids, attention_mask=full[None, None], use_cache=False).logits
