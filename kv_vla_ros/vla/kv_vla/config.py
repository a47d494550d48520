"""`VLAConfig`: everything needed to rebuild a VLA from its checkpoint (saved as config.json).

The token stream of one episode is::

    [prefix: max_instruction_tokens][frame 1: tokens_per_frame][action 1: action_tokens]
    [frame 2]...

so with ``sink_tokens == max_instruction_tokens`` and ``chunk_size == tokens_per_step`` every
cache chunk is exactly one control step.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kv_vla_ros.cache.config import CacheConfig, check_known_fields

# MiniGrid's discrete action set (index = env action id).
MINIGRID_ACTION_NAMES = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def default_backbone() -> dict[str, Any]:
    """A small Llama; sized by measurement so behaviour cloning fits 60 min on 2 CPU cores."""
    return {
        "model_type": "llama",
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 384,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }


@dataclass
class ActionSpaceConfig:
    """Action space and its tokenization.

    Attributes:
        kind: ``"discrete"`` (one token per action id) or ``"continuous"`` (OpenVLA style:
            normalize with q01/q99 to [-1, 1], clip, ``bins`` uniform bins, one token per
            dimension decoded autoregressively, bins shared across dimensions).
        num_actions: discrete only: number of actions.
        dim: continuous only: action dimension.
        bins: continuous only: bins per dimension.
        q01, q99: continuous only: per-dimension 1st/99th percentiles (the normalization stats).
        names: optional names (one per discrete action or per continuous dimension).
    """

    kind: str = "discrete"
    num_actions: int = 7
    dim: int = 1
    bins: int = 256
    q01: list[float] | None = None
    q99: list[float] | None = None
    names: list[str] | None = field(default_factory=lambda: list(MINIGRID_ACTION_NAMES))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"action.kind: expected 'discrete' or 'continuous', got {self.kind!r}")
        if self.kind == "discrete":
            if not isinstance(self.num_actions, int) or self.num_actions < 1:
                raise ValueError(f"action.num_actions: must be an int >= 1, got {self.num_actions!r}")
            if self.names is not None and len(self.names) != self.num_actions:
                raise ValueError(f"action.names: expected {self.num_actions} names, got {len(self.names)}")
            return
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"action.dim: must be an int >= 1, got {self.dim!r}")
        if not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"action.bins: must be an int >= 2, got {self.bins!r}")
        for name in ("q01", "q99"):
            value = getattr(self, name)
            if value is None or len(value) != self.dim:
                raise ValueError(f"action.{name}: expected a list of {self.dim} floats, got {value!r}")
        if any(hi <= lo for lo, hi in zip(self.q01, self.q99)):
            raise ValueError("action.q99: every q99 must be greater than its q01")
        if self.names is not None and len(self.names) != self.dim:
            raise ValueError(f"action.names: expected {self.dim} names, got {len(self.names)}")

    @property
    def tokens_per_action(self) -> int:
        """Action tokens appended to the stream per control step."""
        return 1 if self.kind == "discrete" else self.dim

    @property
    def vocab_size(self) -> int:
        """Action tokens added after the text vocabulary."""
        return self.num_actions if self.kind == "discrete" else self.bins


@dataclass
class ProcessorConfig:
    """Frame normalization (LeRobot style: normalize in, un-normalize out); stats from data."""

    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("processor.mean/std: expected 3 values (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"processor.std: must be > 0, got {self.std}")


@dataclass
class VLAConfig:
    """The VLA architecture (vision encoder + any decoder-only causal LM + action tokenizer).

    Attributes:
        backbone: a transformers config as a dict (``model_type`` + kwargs); ``vocab_size`` is
            set from the tokenizers, never taken from here.
        image_size: frames are resized to ``image_size`` x ``image_size``.
        patch_size: square patches; ``(image_size // patch_size) ** 2`` patch features per frame.
        frame_tokens: visual tokens per frame fed to the backbone: ``None`` feeds every patch
            feature; ``K`` pools the patch features into ``K`` tokens (learned queries attending
            over the patches). Few tokens per frame make long histories cheap and, measured on
            the Memory tasks, let a small policy learn to recall a cue at all.
        frame_pooling: how ``frame_tokens`` are pooled: ``"linear"`` (one learned linear map of
            the whole frame's patch features) or ``"attention"`` (learned queries over the patches).
        vision_hidden: width of the patch MLP.
        vision_frame_context: add a learned projection of the frame's mean patch feature to
            every token of the frame (a frame summary each token carries).
        action: the action space (see ``ActionSpaceConfig``).
        processor: frame normalization stats.
        max_instruction_tokens: the instruction prefix is padded/truncated to exactly this
            many tokens (== the cache's ``sink_tokens``).
        text_vocab_size: size of the word-level text vocabulary (set when the tokenizer is built).
        cache: the default cache configuration of a session.
    """

    backbone: dict[str, Any] = field(default_factory=default_backbone)
    image_size: int = 56
    patch_size: int = 8
    frame_tokens: int | None = None
    frame_pooling: str = "linear"
    vision_hidden: int = 256
    vision_frame_context: bool = False
    action: ActionSpaceConfig = field(default_factory=ActionSpaceConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    max_instruction_tokens: int = 32
    text_vocab_size: int = 0
    cache: CacheConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.action, dict):
            self.action = ActionSpaceConfig(**self.action)
        if isinstance(self.processor, dict):
            self.processor = ProcessorConfig(**self.processor)
        if isinstance(self.cache, dict):
            self.cache = CacheConfig.from_dict(self.cache)
        self.validate()
        if self.cache is None:
            self.cache = CacheConfig(
                eviction="full",
                chunk_size=self.tokens_per_step,
                sink_tokens=self.max_instruction_tokens,
                budget_tokens=None,
            )

    def validate(self) -> None:
        if not isinstance(self.backbone, dict) or "model_type" not in self.backbone:
            raise ValueError("backbone: expected a dict with a 'model_type' key")
        for name in ("image_size", "patch_size", "vision_hidden", "max_instruction_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} does not divide image_size {self.image_size}")
        if self.frame_pooling not in ("linear", "attention"):
            raise ValueError(f"frame_pooling: expected 'linear' or 'attention', got {self.frame_pooling!r}")
        if self.frame_tokens is not None:
            ft = self.frame_tokens
            if isinstance(ft, bool) or not isinstance(ft, int) or not 1 <= ft <= self.patches_per_frame:
                raise ValueError(f"frame_tokens: must be None or an int in [1, {self.patches_per_frame}] "
                                 f"(the patches per frame), got {ft!r}")
        if self.cache is not None:
            if self.cache.sink_tokens != self.max_instruction_tokens:
                raise ValueError(
                    f"cache.sink_tokens: {self.cache.sink_tokens} != max_instruction_tokens "
                    f"{self.max_instruction_tokens} (the prefix must be the sink)"
                )
            if self.cache.chunk_size != self.tokens_per_step:
                raise ValueError(
                    f"cache.chunk_size: {self.cache.chunk_size} != tokens per step {self.tokens_per_step}"
                )

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens per frame in the backbone's stream."""
        return self.frame_tokens or self.patches_per_frame

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_frame + self.action.tokens_per_action

    @property
    def vocab_size(self) -> int:
        """Backbone vocabulary: text words, then action tokens."""
        return self.text_vocab_size + self.action.vocab_size

    @property
    def action_token_offset(self) -> int:
        return self.text_vocab_size

    def backbone_config(self):
        """The transformers config of the backbone (vocab sized for text + action tokens)."""
        from transformers import AutoConfig

        kwargs = copy.deepcopy(self.backbone)
        model_type = kwargs.pop("model_type")
        kwargs["vocab_size"] = self.vocab_size
        try:
            return AutoConfig.for_model(model_type, **kwargs)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"backbone.model_type: {model_type!r} is not a transformers model type: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cache"] = self.cache.to_dict() if self.cache is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAConfig":
        check_known_fields(cls, data, "VLA config")
        return cls(**copy.deepcopy(data))


__all__ = ["VLAConfig", "ActionSpaceConfig", "ProcessorConfig", "default_backbone", "MINIGRID_ACTION_NAMES"]
