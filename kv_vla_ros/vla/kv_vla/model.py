"""The VLA: a patch vision encoder + any transformers decoder-only causal LM + action tokens.

Episode stream (see config.py)::

    [prefix P][frame 1: F][action 1: A][frame 2: F][action 2: A] ...

Action token ``j`` of step ``t`` is predicted from the hidden state at position
``P + t*(F+A) + F - 1 + j`` (the last frame token for ``j == 0``), over action-token logits only.
Training (teacher forcing, one no-cache forward) and ``VLASession`` (streaming) share this layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from kv_vla_ros.vla.kv_vla.config import VLAConfig
from kv_vla_ros.vla.kv_vla.processor import ImageProcessor
from kv_vla_ros.vla.kv_vla.tokenization import ActionTokenizer, TextTokenizer, build_text_tokenizer

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
FORMAT_VERSION = 1


class AttentionPooling(nn.Module):
    """Patch features (T, N, vh) -> K tokens (T, K, vh): K learned queries attend over the patches
    (multi-head attention pooling, as in Perceiver / Set Transformer's PMA)."""

    def __init__(self, num_tokens: int, num_patches: int, width: int, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tokens, width) * width ** -0.5)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        kv = self.norm(x)
        return q + self.attn(q, kv, kv, need_weights=False)[0]


class LinearPooling(nn.Module):
    """Patch features (T, N, vh) -> K tokens (T, K, vh) by one learned linear map of the whole
    frame: nothing is averaged away, so a one-patch object (a MiniGrid key) stays readable.
    Attention pooling starts near a uniform mean over the patches, where a single object's
    features are diluted 1/N, and a small policy did not learn to read the cue from it."""

    def __init__(self, num_tokens: int, num_patches: int, width: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(num_patches * width)
        self.proj = nn.Linear(num_patches * width, num_tokens * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x.flatten(1))).unflatten(1, (self.num_tokens, -1))


FRAME_POOLING = {"linear": LinearPooling, "attention": AttentionPooling}


class VisionEncoder(nn.Module):
    """Normalized frames (T, 3, S, S) -> visual tokens (T, F, D): the N = (S / patch)^2 patch
    features, or ``config.frame_tokens`` tokens pooled from them."""

    def __init__(self, config: VLAConfig, hidden_size: int):
        super().__init__()
        p, vh = config.patch_size, config.vision_hidden
        self.patch = nn.Conv2d(3, vh, kernel_size=p, stride=p)
        self.pos = nn.Parameter(torch.randn(config.patches_per_frame, vh) * 0.02)
        self.mlp = nn.Sequential(nn.LayerNorm(vh), nn.Linear(vh, hidden_size), nn.GELU(),
                                 nn.Linear(hidden_size, hidden_size))
        # Every token also carries a summary of its whole frame, so a later query can recall
        # "what that frame showed" from any of its 49 tokens (memory tasks learn much faster).
        self.frame_context = nn.Linear(vh, vh) if config.vision_frame_context else None
        self.pool = (FRAME_POOLING[config.frame_pooling](config.frame_tokens, config.patches_per_frame, vh)
                     if config.frame_tokens else None)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.patch(frames).flatten(2).transpose(1, 2) + self.pos  # (T, N, vh)
        if self.frame_context is not None:
            x = x + self.frame_context(x.mean(dim=1, keepdim=True))
        if self.pool is not None:
            x = self.pool(x)  # (T, K, vh)
        return self.mlp(x)


def load_gate(directory: Path, backbone_config):
    """The trained gate beside a checkpoint (``gate.safetensors``), checked against the backbone;
    None when there is none (policy ``gated`` then uses an untrained gate)."""
    from kv_vla_ros.cache import GATE_FILE, ChunkGate, gate_input_dim

    path = Path(directory) / GATE_FILE
    if not path.is_file():
        return None
    head_dim = (getattr(backbone_config, "head_dim", None)
                or backbone_config.hidden_size // backbone_config.num_attention_heads)
    return ChunkGate.load(str(path), expected_in_dim=gate_input_dim(backbone_config.num_hidden_layers, head_dim))


class VLAModel(nn.Module):
    """Vision encoder + causal-LM backbone (fed ``inputs_embeds``) + tokenizers + processor."""

    def __init__(self, config: VLAConfig, text_tokenizer: TextTokenizer | None = None):
        super().__init__()
        if text_tokenizer is None:
            text_tokenizer = TextTokenizer(build_text_tokenizer(), config.max_instruction_tokens)
        if config.text_vocab_size == 0:
            config.text_vocab_size = text_tokenizer.vocab_size
        if config.text_vocab_size != text_tokenizer.vocab_size:
            raise ValueError(f"text_vocab_size: config says {config.text_vocab_size}, "
                             f"tokenizer.json has {text_tokenizer.vocab_size} words")
        self.config = config
        self.text_tokenizer = text_tokenizer
        self.action_tokenizer = ActionTokenizer(config.action)
        self.processor = ImageProcessor(config.processor, config.image_size)
        self.backbone_config = config.backbone_config()
        # Eager-free default: sdpa is exact against the cached path on CPU and fast.
        self.backbone = AutoModelForCausalLM.from_config(self.backbone_config, attn_implementation="sdpa")
        self.vision = VisionEncoder(config, self.backbone_config.hidden_size)

    # ---- embeddings -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (..., L) -> embeddings (..., L, D) from the backbone's shared table."""
        return self.backbone.get_input_embeddings()(ids)

    def embed_actions(self, action_tokens: torch.Tensor) -> torch.Tensor:
        """Action-token indices in [0, action_vocab) (..., A) -> (..., A, D)."""
        return self.embed_ids(action_tokens + self.config.action_token_offset)

    def action_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-vocab logits (..., V) -> action-token logits (..., action_vocab)."""
        off = self.config.action_token_offset
        return logits[..., off: off + self.config.action.vocab_size]

    def episode_embeds(self, prefix_ids: torch.Tensor, frames: torch.Tensor,
                       action_tokens: torch.Tensor) -> torch.Tensor:
        """Build the stream.

        Args:
            prefix_ids: (B, P) int64 instruction ids.
            frames: (B, T, 3, S, S) normalized frames.
            action_tokens: (B, T, A) int64 action-token indices.
        Returns:
            (B, P + T*(F+A), D) input embeddings.
        """
        b, t = frames.shape[:2]
        vis = self.vision(frames.flatten(0, 1)).view(b, t, self.config.tokens_per_frame, -1)
        act = self.embed_actions(action_tokens)  # (B, T, A, D)
        steps = torch.cat([vis, act], dim=2).flatten(1, 2)
        return torch.cat([self.embed_ids(prefix_ids), steps], dim=1)

    def action_positions(self, num_steps: int) -> torch.Tensor:
        """(T, A) stream positions whose hidden states predict each action token."""
        cfg = self.config
        p, f, a = cfg.max_instruction_tokens, cfg.tokens_per_frame, cfg.action.tokens_per_action
        t = torch.arange(num_steps).view(-1, 1)
        return p + t * (f + a) + f - 1 + torch.arange(a).view(1, -1)

    def forward(self, prefix_ids: torch.Tensor, frames: torch.Tensor, action_tokens: torch.Tensor,
                return_hidden: bool = False, attention_mask: torch.Tensor | None = None):
        """Teacher-forced action logits (B, T, A, action_vocab), one no-cache forward; with
        ``return_hidden`` also the backbone's last hidden states at the positions predicting each
        step's first action token (B, T, D), where auxiliary heads read during training.
        ``attention_mask``: an additive (B, 1, L, L) mask replacing the causal one (training
        under eviction, ``train.eviction``)."""
        embeds = self.episode_embeds(prefix_ids, frames, action_tokens)
        return self.forward_embeds(embeds, frames.shape[1], attention_mask, return_hidden)

    def forward_embeds(self, embeds: torch.Tensor, num_steps: int, attention_mask: torch.Tensor | None = None,
                       return_hidden: bool = False):
        """``forward`` on a stream already embedded (``episode_embeds``: (B, L, D)): callers that
        replay one episode under many masks embed it (and run the vision encoder) once."""
        pos = self.action_positions(num_steps).to(embeds.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=embeds.device, dtype=embeds.dtype)
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False,
                            output_hidden_states=return_hidden)
        logits = self.action_logits(out.logits[:, pos.flatten()]).unflatten(1, pos.shape)
        if not return_hidden:
            return logits
        return logits, out.hidden_states[-1][:, pos[:, 0]]

    @staticmethod
    def action_loss(logits: torch.Tensor, action_tokens: torch.Tensor, step_mask: torch.Tensor,
                    focal_gamma: float = 0.0) -> torch.Tensor:
        """Mean CE over action tokens of valid steps: logits (B, T, A, V), tokens (B, T, A), step_mask (B, T) bool.

        ``focal_gamma > 0`` weights each token by ``(1 - p_target)^gamma`` (focal loss): the few
        decisions that need memory keep their weight once the many easy steps are learned.
        """
        ce = F.cross_entropy(logits.flatten(0, 2), action_tokens.flatten(), reduction="none")
        if focal_gamma > 0:
            ce = ce * (1.0 - torch.exp(-ce.detach())).pow(focal_gamma)
        mask = step_mask.unsqueeze(-1).expand_as(action_tokens).flatten().float()
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)

    def loss(self, prefix_ids, frames, action_tokens, step_mask, focal_gamma: float = 0.0) -> torch.Tensor:
        """Behaviour-cloning loss of one batch (see ``action_loss``)."""
        return self.action_loss(self(prefix_ids, frames, action_tokens), action_tokens, step_mask, focal_gamma)

    @torch.inference_mode()
    def episode_action_logits(self, instruction: str, frames: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        """Reference (no cache) action logits (T, A, action_vocab) of one episode's history."""
        prefix = torch.as_tensor(self.text_tokenizer.encode(instruction)).unsqueeze(0).to(self.device)
        x = self.processor(frames, self.device).unsqueeze(0)
        tokens = torch.as_tensor(self.action_tokenizer.encode(actions)).unsqueeze(0).to(self.device)
        return self(prefix, x, tokens)[0]

    # ---- checkpoint I/O ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors and tokenizer.json (no pickle anywhere)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "architecture": "kv_vla_ros.VLAModel", **self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        # save_model de-duplicates tied tensors (e.g. Gemma's tied embeddings) safely.
        save_model(self, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.text_tokenizer.save(directory / TOKENIZER_FILE)
        if getattr(self, "gate", None) is not None:
            self.gate.save(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "VLAModel":
        """Load a checkpoint directory (weights cast to ``dtype`` if given; the gate stays float32);
        clear errors name the missing/bad file or field."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model_path: checkpoint directory not found: {directory}")
        for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{name}: missing from checkpoint directory {directory}")
        try:
            meta = json.loads((directory / CONFIG_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config.json: not valid JSON ({directory}): {exc}") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"config.json: expected a JSON object in {directory}")
        version = meta.pop("format_version", None)
        meta.pop("architecture", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"config.json: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        config = VLAConfig.from_dict(meta)
        text = TextTokenizer.load(directory / TOKENIZER_FILE, config.max_instruction_tokens)
        model = cls(config, text)
        try:
            missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=False,
                                             device=str(device))
        except SafetensorError as exc:
            raise ValueError(f"model.safetensors: corrupted or not a safetensors file ({directory}): {exc}") from exc
        except RuntimeError as exc:  # shape mismatch between config.json and the weights
            raise ValueError(f"model.safetensors: does not match config.json: {exc}") from exc
        if missing or unexpected:
            raise ValueError(f"model.safetensors: does not match config.json: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        model.attach_gate(load_gate(directory, model.backbone_config))
        return model.to(device=device, dtype=dtype).eval()

    def attach_gate(self, gate) -> None:
        """Attach a chunk gate (or None). Kept outside the module tree on purpose: the gate has its
        own file (``gate.safetensors``) and the backbone checkpoint stays loadable without it."""
        self.__dict__["gate"] = gate

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["VLAModel", "VisionEncoder", "CONFIG_FILE", "WEIGHTS_FILE", "TOKENIZER_FILE"]
