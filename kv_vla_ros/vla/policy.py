"""The policy interface that `VLASession` (and through it the evaluators, the benchmarks and the
node) drives, its registry by checkpoint ``model_type``, and the package's own VLA as one
implementation. π0 (``kv_vla_ros.vla.pi0``) is the other.

A policy streams one episode over a ``ChunkedKVCache`` that the session owns:

- ``new_episode(instruction)``: tokenizes; returns an ``Episode`` (per-session state, so one
  loaded model can serve several sessions, e.g. the lockstep configs of ``bag eval``) whose
  ``prefix_tokens`` is the always-held sink of this episode.
- ``start(cache, episode)``: whatever must enter the cache before the first frame.
- ``step(cache, episode, images, state) -> (actions (n, action_dim) float32, timings)``: appends
  one control step (one cache chunk) to the history and predicts an action chunk of
  ``n = action_chunk_length`` actions.

Device and dtype are resolved once (``resolve_device_dtype``) when a policy is built or loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.vla.kv_vla.processor import check_image

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    """``(torch.device, torch.dtype)`` for a device and a dtype (name or torch dtype); a
    ``ValueError`` naming the field when they do not fit this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but CUDA is not available on this machine")
    names = {v: k for k, v in DTYPES.items()}
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype not in names:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == torch.float16 and dev.type == "cpu":
        raise ValueError("dtype: float16 needs a CUDA device (device is cpu); use bfloat16 or float32 on a CPU")
    return dev, dtype


@dataclass
class Episode:
    """Per-episode state of a policy in one session. ``data`` holds the policy's own fields;
    ``decode`` is the session's compiled decode step over this episode's cache (``CompiledDecode``,
    the session owns it with the cache), None for plain forwards."""

    instruction: str
    prefix_tokens: int
    steps: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    decode: Callable | None = None


class StreamingPolicy:
    """Base class. Attributes every implementation sets:

    model (nn.Module), gate (``ChunkGate`` or None), device, num_cameras (images per step),
    state_dim (0: no state input), action_dim, num_actions (discrete: the number of action ids;
    0 otherwise), action_chunk_length (actions one inference returns: its action chunk),
    default_actions_per_inference, discrete (actions are ids), action_names, frame_size (frames
    may be shrunk to this square when decoded, as the model resizes them anyway; None: keep the
    camera's size, the policy's processor resizes).
    """

    model_type = "base"
    num_cameras = 1
    state_dim = 0
    action_chunk_length = 1
    default_actions_per_inference = 1
    discrete = False
    num_actions = 0
    action_names: list[str] | None = None
    state_names: list[str] | None = None  # the state's joints as trained (JointState read by name)
    control_rate_hz: float | None = None  # the rate of the recordings it was trained on
    frame_size: int | None = None
    supports_guide = False  # a flow policy whose sampling real-time chunking can guide (``guide=``)

    # ---- cache ------------------------------------------------------------------------------
    def default_cache_config(self) -> CacheConfig:
        raise NotImplementedError

    def check_cache_config(self, cfg: CacheConfig) -> CacheConfig:
        """Validate ``cfg`` against the model; ValueError naming the field."""
        if not isinstance(cfg, CacheConfig):
            raise ValueError(f"cache_config: expected a CacheConfig, got {type(cfg).__name__}")
        return cfg

    def episode_cache_config(self, cfg: CacheConfig, episode: "Episode") -> CacheConfig:
        """The cache config of one episode: ``cfg`` with the episode's prefix as the sink (its
        instruction's length); a policy whose chunks vary by episode sets them here too."""
        n = episode.prefix_tokens
        return cfg if cfg.sink_tokens == n else cfg.replace(sink_tokens=n)

    def cache_model_config(self):
        """The transformers config of the decoder whose K/V the cache holds (``make_cache``'s)."""
        raise NotImplementedError

    def attention_model(self):
        """The module whose attention implementation must switch to ``kv_vla_*`` when the cache
        needs it (per-layer budgets, static slots)."""
        raise NotImplementedError

    def compile_model(self):
        """The causal LM whose one-block forward ``CompiledDecode`` runs (None: this policy has no
        compiled decode step)."""
        return None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ---- episode ----------------------------------------------------------------------------
    def new_episode(self, instruction: str) -> Episode:
        raise NotImplementedError

    def start(self, cache, episode: Episode) -> None:
        """Feed what precedes the first frame (default: nothing)."""

    def step(self, cache, episode: Episode, images: list[np.ndarray], state: np.ndarray | None,
             **kwargs) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    # ---- inputs -----------------------------------------------------------------------------
    def check_images(self, images) -> list[np.ndarray]:
        """One frame (H, W, 3) or a list of ``num_cameras`` frames -> list of float32 (H, W, 3)."""
        frames = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(frames) != self.num_cameras:
            raise ValueError(f"images: expected {self.num_cameras} camera frame(s) per step, got {len(frames)}")
        return [check_image(f) for f in frames]

    def check_state(self, state) -> np.ndarray | None:
        """``state`` (state_dim,) finite -> float32; None when the policy takes no state."""
        if self.state_dim == 0:
            return None
        if state is None:
            raise ValueError(f"state: this checkpoint expects a robot state of dimension {self.state_dim}, got None")
        arr = np.asarray(state, dtype=np.float64).reshape(-1) if np.ndim(state) <= 1 else None
        if arr is None or arr.shape[0] != self.state_dim:
            raise ValueError(f"state: expected a vector of dimension {self.state_dim}, got shape {np.shape(state)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("state: contains NaN or inf values")
        return arr.astype(np.float32)


# ---- the package's own VLA -----------------------------------------------------------------------
class KVVLAPolicy(StreamingPolicy):
    """``VLAModel``: per step the previous step's action token(s) and the new frame's tokens go
    through the backbone in one forward; the action is decoded from the last position's
    action-token logits (argmax), autoregressively per dimension for continuous actions."""

    model_type = "kv_vla"

    def __init__(self, model, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
        self.device, dtype = resolve_device_dtype(device, dtype if dtype is not None else model.dtype)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.gate = getattr(model, "gate", None)
        cfg = model.config
        self.discrete = cfg.action.kind == "discrete"
        self.action_dim = 1 if self.discrete else cfg.action.dim
        self.num_actions = cfg.action.num_actions if self.discrete else 0
        self.action_names = cfg.action.names
        self.frame_size = cfg.image_size
        self.last_logits: torch.Tensor | None = None  # (A, action_vocab) of the last step

    @classmethod
    def from_pretrained(cls, directory, device="cpu", dtype=None) -> "KVVLAPolicy":
        from kv_vla_ros.vla.kv_vla.model import VLAModel

        return cls(VLAModel.from_pretrained(directory, device=device), device, dtype)

    def default_cache_config(self) -> CacheConfig:
        return self.model.config.cache

    def check_cache_config(self, cfg: CacheConfig) -> CacheConfig:
        cfg = super().check_cache_config(cfg)
        mc = self.model.config
        if cfg.sink_tokens != mc.max_instruction_tokens:
            raise ValueError(f"cache.sink_tokens: must equal the instruction prefix length "
                             f"{mc.max_instruction_tokens}, got {cfg.sink_tokens}")
        if cfg.chunk_size != mc.tokens_per_step:
            raise ValueError(f"cache.chunk_size: must equal the tokens per step {mc.tokens_per_step}, "
                             f"got {cfg.chunk_size}")
        return cfg

    def cache_model_config(self):
        # backbone.config carries the attention implementation the cache must know about
        return self.model.backbone.config

    def attention_model(self):
        return self.model.backbone

    def compile_model(self):
        return self.model.backbone

    def new_episode(self, instruction: str) -> Episode:
        ids = torch.as_tensor(self.model.text_tokenizer.encode(instruction), device=self.device)
        return Episode(instruction, int(ids.shape[0]), data={"ids": ids, "pending": []})

    def start(self, cache, episode: Episode) -> None:
        self.model.backbone(inputs_embeds=self.model.embed_ids(episode.data["ids"]).unsqueeze(0),
                            past_key_values=cache, use_cache=True)

    def step(self, cache, episode, images, state=None, **kwargs):
        """Frame(s) -> actions (1, dim): int64 ids for discrete actions, float32 robot units otherwise.
        ``state`` is accepted and not used by this model."""
        t0 = time.perf_counter()
        frame = self.check_images(images)[0]
        model = self.model
        # normalized in float32, cast once to the model's dtype
        embeds = model.vision(model.processor(frame[None], self.device).to(self.dtype))  # (1, F, D)
        pending = episode.data["pending"]
        if pending:
            pend = torch.as_tensor(pending, device=self.device).unsqueeze(0)
            embeds = torch.cat([model.embed_actions(pend), embeds], dim=1)
        t1 = time.perf_counter()
        tokens, logits_rows, decode_s = [], [], 0.0
        for j in range(model.config.action.tokens_per_action):
            last = self._last_logits(cache, episode, embeds)
            td = time.perf_counter()
            logits = model.action_logits(last).float()
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            logits_rows.append(logits)
            if j + 1 < model.config.action.tokens_per_action:  # feed this token to predict the next
                embeds = model.embed_actions(torch.tensor([[tok]], device=self.device))
            decode_s += time.perf_counter() - td
        t2 = time.perf_counter()
        episode.data["pending"] = [tokens[-1]]
        action = model.action_tokenizer.decode(np.asarray(tokens))
        t3 = time.perf_counter()
        self.last_logits = torch.stack(logits_rows)
        timings = {"encode": (t1 - t0) * 1e3, "forward": (t2 - t1 - decode_s) * 1e3,
                   "decode": (t3 - t2 + decode_s) * 1e3, "total": (t3 - t0) * 1e3}
        return np.asarray(action).reshape(1, -1), timings

    def _last_logits(self, cache, episode: Episode, embeds: torch.Tensor) -> torch.Tensor:
        """Backbone over ``embeds [1, q, D]`` appended to the cache -> last position's logits ``[V]``."""
        if episode.decode is not None:
            return episode.decode(embeds)[0]
        # logits_to_keep=1: only the last position predicts; skip the LM head elsewhere
        out = self.model.backbone(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{Path(path).name}: not valid JSON ({path}): {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{Path(path).name}: expected a JSON object ({path})")
    return data


def checkpoint_model_type(directory: str | Path) -> str:
    """``model_type`` of a checkpoint directory's config.json (the package's own format: ``kv_vla``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model_path: checkpoint directory not found: {directory}")
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config.json: missing from checkpoint directory {directory}")
    meta = read_json_object(path)
    if meta.get("architecture") == "kv_vla_ros.VLAModel":
        return "kv_vla"
    return str(meta.get("model_type", "kv_vla"))


def as_policy(model_or_policy, device: str | torch.device = "cpu", dtype=None) -> StreamingPolicy:
    """A ``StreamingPolicy`` as is (``dtype``, if given, must be the one it was loaded in); a
    ``VLAModel`` wrapped in ``KVVLAPolicy`` (moved to ``device``, cast to ``dtype``)."""
    if not isinstance(model_or_policy, StreamingPolicy):
        return KVVLAPolicy(model_or_policy, device, dtype)
    if dtype is not None and resolve_device_dtype(model_or_policy.device, dtype)[1] != model_or_policy.dtype:
        # a loaded policy may serve several sessions: casting it here would change them all
        raise ValueError(f"dtype: the {model_or_policy.model_type} policy was loaded in "
                         f"{str(model_or_policy.dtype).removeprefix('torch.')}; load it with "
                         f"load_policy(..., dtype={dtype!r}) instead")
    return model_or_policy


__all__ = ["DTYPES", "resolve_device_dtype", "Episode", "StreamingPolicy", "KVVLAPolicy",
           "checkpoint_model_type", "read_json_object", "as_policy"]
