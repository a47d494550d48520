"""Small random π0 checkpoints (no weights can be downloaded): the tests, the CPU benchmark and a
user trying the π0 path write one with ``write_pi0_checkpoint`` and load it like a real one.

``pi0_config(scale)``: ``"tiny"`` (tests: ~50 k parameters, 16 image tokens per camera),
``"small"`` (CPU benchmark: π0's layer count and head layout, narrow widths) and ``"full"``
(π0's real dimensions: PaliGemma 3B + the 300 M action expert, for a GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

SCALES = {
    "tiny": dict(text=dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             patch_size=8, image_size=32),
                 dit=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2), chunk_size=4,
                 max_dim=8, steps=3),
    "small": dict(text=dict(hidden_size=256, num_hidden_layers=18, intermediate_size=512, num_attention_heads=8,
                            num_key_value_heads=1, head_dim=32),
                  vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                              patch_size=14, image_size=224),
                  dit=dict(hidden_size=128, intermediate_size=256, num_attention_heads=8), chunk_size=50,
                  max_dim=32, steps=10),
    "full": dict(text=dict(hidden_size=2048, num_hidden_layers=18, intermediate_size=16384, num_attention_heads=8,
                           num_key_value_heads=1, head_dim=256),
                 vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             patch_size=14, image_size=224),
                 dit=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=8), chunk_size=50,
                 max_dim=32, steps=10),
}
WORDS = ["pick", "up", "the", "red", "green", "blue", "cube", "ball", "place", "it", "in", "box", "open",
         "drawer", "go", "to", "door", "and", "a", "on", "left", "right"]


def pi0_config(scale: str = "tiny", vocab_size: int | None = None, max_dim: int | None = None):
    """A ``PI0Config`` at ``scale`` (see the module docstring); ``max_dim``: its max state and
    action dimension instead of the scale's (e.g. 16 for the arm's 9 joint positions)."""
    from transformers import PI0Config

    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    s = SCALES[scale]
    vocab = vocab_size or (257152 if scale == "full" else 64)
    text = dict(model_type="gemma", vocab_size=vocab, max_position_embeddings=8192, **s["text"])
    vision = dict(model_type="siglip_vision_model", vision_use_head=False, **s["vision"])
    dit = dict(num_hidden_layers=text["num_hidden_layers"], num_key_value_heads=text["num_key_value_heads"],
               head_dim=text["head_dim"], max_position_embeddings=8192, **s["dit"])
    return PI0Config(vlm_config=dict(text_config=text, vision_config=vision, projection_dim=text["hidden_size"],
                                     image_token_id=vocab + 1),
                     dit_config=dit, chunk_size=s["chunk_size"], max_state_dim=max_dim or s["max_dim"],
                     max_action_dim=max_dim or s["max_dim"], num_inference_steps=s["steps"])


def tiny_tokenizer():
    """A word-level fast tokenizer (``<pad> <unk> <bos> <eos> \\n`` + a few words), ``tokenizers`` only."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<bos>", "<eos>", "\n"] + WORDS
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    # "\n" is a token of π0's prompt (a whitespace split would drop it); spaces separate words
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex("\n"), "isolated"),
                                                 pre_tokenizers.Split(Regex("[ \t]+"), "removed")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_processor(config, state_dim: int = 0, action_dim: int | None = None, seed: int = 0):
    """``PI0Processor`` for ``config`` with random-but-plausible state/action statistics."""
    from transformers import PI0Processor

    from kv_vla_ros.vla.pi0.processing import PI0ImageProcessorPil

    vision = config.vlm_config.vision_config
    side = vision.image_size
    images = PI0ImageProcessorPil(size={"max_height": side, "max_width": side},
                                  pad_size={"height": side, "width": side},
                                  image_seq_length=(side // vision.patch_size) ** 2)
    g = torch.Generator().manual_seed(seed)
    action_dim = action_dim or config.max_action_dim
    stats = {}
    if state_dim:
        stats.update(state_mean=torch.randn(state_dim, generator=g).tolist(),
                     state_std=(torch.rand(state_dim, generator=g) + 0.5).tolist())
    stats.update(actions_mean=torch.randn(action_dim, generator=g).tolist(),
                 actions_std=(torch.rand(action_dim, generator=g) + 0.5).tolist())
    return PI0Processor(image_processor=images, tokenizer=tiny_tokenizer(), max_state_dim=config.max_state_dim,
                        chunk_size=config.chunk_size, **stats)


def write_pi0_checkpoint(directory, scale: str = "tiny", num_cameras: int = 1, state_dim: int = 0,
                         action_dim: int | None = None, seed: int = 0, dtype=torch.float32, max_dim: int | None = None,
                         chunk_size: int | None = None, **policy_fields) -> Path:
    """Write a random π0 checkpoint (weights, processor files, ``kv_vla_policy.json``) to ``directory``
    (``max_dim``: see `pi0_config`; ``chunk_size``: actions per inference, default the scale's)."""
    from transformers import PI0ForConditionalGeneration

    from kv_vla_ros.vla.pi0.config import PI0PolicyConfig

    directory = Path(directory)
    config = pi0_config(scale, max_dim=max_dim)
    if chunk_size is not None:
        config.chunk_size = int(chunk_size)
    processor = make_processor(config, state_dim, action_dim, seed)
    # the model embeds the image features where the processor's tokenizer writes its image token
    config.vlm_config.image_token_id = int(processor.image_token_id)
    torch.manual_seed(seed)
    model = PI0ForConditionalGeneration(config).to(dtype).eval()
    model.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    policy_config = PI0PolicyConfig(num_cameras=num_cameras, state_dim=state_dim, action_dim=action_dim,
                                    **policy_fields)
    policy_config.save(directory)
    return directory


__all__ = ["SCALES", "pi0_config", "tiny_tokenizer", "make_processor", "write_pi0_checkpoint"]
