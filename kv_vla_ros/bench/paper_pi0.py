"""π0 in ``kv-vla bench paper --backbone pi0``: transformers' ``PI0ForConditionalGeneration`` with
random weights, streamed as ``PI0Policy`` streams it (``kv_vla_ros.vla.pi0.streaming``): per step
one frame's image tokens through the VLM into the cache, then the action expert's denoising steps
read the cache transiently, so the per-step figures include the denoising.

Sizes: π0's real dimensions (PaliGemma 3B + the 300 M action expert, bfloat16) on a GPU; on a CPU
the ``small`` config of ``kv_vla_ros.vla.pi0.tiny`` (π0's 18 layers, one KV head and 256 image
tokens per frame, narrow widths, float32). The vision tower is left out, as the other backbones
leave out theirs: random embeddings stand for the image tokens.
"""

from __future__ import annotations

import torch

PROMPT_TOKENS = 48  # PI0Processor pads prompts to 48 tokens


def build_pi0(device: str, dtype: str | None = None):
    """(PI0ForConditionalGeneration, tokens per step, dtype, scale name); ``dtype`` default:
    bfloat16 at full size, float32 small."""
    from transformers import PI0ForConditionalGeneration

    from kv_vla_ros.vla.pi0.tiny import pi0_config

    scale = "full" if device.startswith("cuda") else "small"
    dtype = getattr(torch, dtype) if dtype else torch.bfloat16 if scale == "full" else torch.float32
    config = pi0_config(scale)
    vision = config.vlm_config.vision_config
    torch.manual_seed(0)
    with torch.device(device):
        model = PI0ForConditionalGeneration(config).to(dtype).eval()
    return model, (vision.image_size // vision.patch_size) ** 2, dtype, scale


def pi0_forward(model, dtype, device):
    """``forward(x (1, q, D), cache)``: the prompt block (q == PROMPT_TOKENS on an empty cache) goes
    in alone; every frame block is followed by ``num_inference_steps`` denoising steps."""
    from kv_vla_ros.vla.pi0.streaming import denoise, vlm_block

    mc = model.config
    state = torch.zeros(1, mc.max_state_dim, dtype=dtype, device=device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    noise = torch.randn(1, mc.chunk_size, mc.max_action_dim, generator=gen).to(device)

    def forward(x, cache):
        first = cache.get_seq_length() == 0
        vlm_block(model, cache, x)
        if not first:
            denoise(model, cache, state, noise, mc.num_inference_steps)

    return forward


def pi0_weight_bytes(model) -> int:
    """Weight bytes one streamed step reads, for its bandwidth floor: the VLM's language model once
    and the action expert (with its projections) once per denoising step; neither embedding table
    (the blocks come as embeddings) nor the vision tower (left out here, see above)."""
    def nbytes(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    vlm, lm, dit = model.model.vlm, model.model.vlm.language_model, model.model.dit
    expert = nbytes(model) - nbytes(vlm) - nbytes(dit.get_input_embeddings())
    return nbytes(lm) - nbytes(lm.get_input_embeddings()) + model.config.num_inference_steps * expert


__all__ = ["build_pi0", "pi0_forward", "pi0_weight_bytes", "PROMPT_TOKENS"]
