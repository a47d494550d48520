"""`VLASession`: one long-horizon streaming episode of a policy over a bounded KV cache.

The session owns the episode's ``ChunkedKVCache`` (``kv_vla_ros.cache``), its live
reconfiguration and the statistics; the policy (``kv_vla_ros.vla.policy``: the package's own VLA,
or π0) does the model's forward for each control step. One control step is one cache chunk;
history persists across steps until ``reset``.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from kv_vla_ros.cache import make_cache, use_kv_vla_attention
from kv_vla_ros.cache.chunked_cache import static_capacity
from kv_vla_ros.cache.compiled import CompiledDecode
from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.vla.policy import DTYPES, Episode, StreamingPolicy, as_policy, resolve_device_dtype


class VLASession:
    """Streaming inference of a policy with one cache per episode.

    Args:
        model: a ``StreamingPolicy`` (``load_policy``), or a ``VLAModel`` (wrapped in ``KVVLAPolicy``).
        cache_config: defaults to the policy's; ``chunk_size`` must equal the tokens per step (so
            chunks are control steps) and ``sink_tokens`` the instruction prefix (π0: its maximum).
        device: torch device for inference (used when ``model`` is a ``VLAModel``).
        dtype: weights, activations and K/V (float32, bfloat16, float16 on CUDA); default: the
            model's. A ``VLAModel`` is cast to it; a loaded policy must already be in it
            (``load_policy(..., dtype=)``). Frames are normalized in float32 and cast once; the
            gate scores in float32.
        compile: run the decode step compiled (`kv_vla_ros.cache.compiled`: a CUDA graph on a
            GPU, the same prepared step uncompiled on a CPU); needs ``cache_config.static`` and a
            policy with a compiled step (the package's own VLA).
        history: False runs the policy on the current frame alone: the cache is emptied before
            every step (the episode's noise generator goes on), so no information from an earlier
            frame can reach the action. This is the true no-history baseline. A cache that holds
            only the newest step (``window:recent_chunks=1``) is *not* it: that step's keys and
            values at layers >= 1 were computed while the previous step was still held, so up to
            L-1 steps back still reach the action through them.
    """

    def __init__(self, model, cache_config: CacheConfig | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, compile: bool = False, history: bool = True):
        self.policy: StreamingPolicy = as_policy(model, device, dtype)
        self.model = self.policy.model
        self.device, self.dtype = self.policy.device, self.policy.dtype
        self.compile = False
        self._decode = None  # CompiledDecode of the current cache when compile is on
        self.cache_config = self._check_cache_config(cache_config or self.policy.default_cache_config())
        self.pending_cache_config: CacheConfig | None = None  # set_cache_config's change for the next reset
        self._ensure_attention(self.cache_config)
        self.gate = self.policy.gate
        if self.gate is not None:
            self.gate = self.gate.to(self.device)  # stays float32: its scores are compared to thresholds
        self.instruction: str | None = None
        self._episode: Episode | None = None
        self._cache = None
        self.steps = 0
        self.history = bool(history)
        self.latency_ms = {"encode": 0.0, "forward": 0.0, "decode": 0.0, "total": 0.0}
        self.set_compile(compile)

    @functools.cached_property
    def attention_layers(self) -> int:
        """Attention layers whose keys and values the cache holds (one per `layer_budgets` entry)."""
        return len(make_cache(CacheConfig(), self.policy.cache_model_config()).chunked)

    @property
    def last_logits(self) -> torch.Tensor | None:
        """(A, action_vocab) action-token logits of the last step (the package's own VLA only)."""
        return getattr(self.policy, "last_logits", None)

    def _ensure_attention(self, cfg: CacheConfig) -> None:
        """Per-layer budgets and the static cache need the ``kv_vla_*`` attention (registered
        through transformers' AttentionInterface); switch the model to it when asked for."""
        uneven = cfg.layer_budgets is not None and len(set(cfg.layer_budgets)) > 1
        impl = self.policy.cache_model_config()._attn_implementation or ""
        if (uneven or cfg.static) and not impl.startswith("kv_vla_"):
            use_kv_vla_attention(self.policy.attention_model(), "eager" if impl == "eager" else "sdpa")

    def _episode_config(self, cfg: CacheConfig) -> CacheConfig:
        """``cfg`` laid out for the running episode (its prefix as the sink; π0: its step size)."""
        return self.policy.episode_cache_config(cfg, self._episode)

    def _check_cache_config(self, cfg: CacheConfig) -> CacheConfig:
        cfg = self.policy.check_cache_config(cfg)
        if cfg.layer_budgets is not None and len(cfg.layer_budgets) != self.attention_layers:
            # checked here, not only when the next cache is built: a live change must be refused at once
            raise ValueError(f"cache.layer_budgets: {len(cfg.layer_budgets)} budgets for {self.attention_layers} "
                             "attention layers (one budget per attention layer of the model)")
        if self.compile:
            self._check_compilable(cfg)
        return cfg

    def _check_compilable(self, cfg: CacheConfig) -> None:
        from kv_vla_ros.cache import EVICTIONS

        if self.policy.compile_model() is None:
            raise ValueError(f"compile: the {self.policy.model_type} policy has no compiled decode step "
                             "(the package's own VLA has one); use compile: false")
        if not cfg.static:
            raise ValueError("cache.static: compile needs the static-shape cache (cache.static: true, with an "
                             "evicting cache.eviction and a cache.budget_tokens)")
        if self.device.type == "cuda" and EVICTIONS[cfg.eviction].wants_attention:
            raise ValueError(f"cache.eviction: {cfg.eviction!r} reads each step's attention from Python, which a "
                             "CUDA graph does not run; use another policy or compile: false")

    def set_compile(self, on: bool) -> None:
        """Turn the compiled decode step on or off; applies from the next episode (``reset``)."""
        if not isinstance(on, bool):
            raise ValueError(f"compile: expected a bool, got {on!r}")
        if on:
            self._check_compilable(self.cache_config)
        self.compile = on
        self._decode = None
        if self._episode is not None:  # plain forwards until the next reset builds the compiled step
            self._episode.decode = None

    # ---- episode ----------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, instruction: str) -> None:
        """Start a new episode: a fresh cache (and gate state) whose prefix is ``instruction``."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction: expected a non-empty string, got {instruction!r}")
        if self.pending_cache_config is not None:  # a change that waited for a new cache
            self._ensure_attention(self.pending_cache_config)
            self.cache_config, self.pending_cache_config = self.pending_cache_config, None
        episode = self.policy.new_episode(instruction)
        self.policy.episode_cache_config(self.cache_config, episode)  # a bad fit fails before anything changes
        self._episode = episode
        self._new_cache()
        self.policy.start(self._cache, self._episode)
        self.instruction = instruction
        self.steps = 0

    def _new_cache(self) -> None:
        """A cache for the episode. Compiled: the previous cache is reset and reused while its
        slot layout fits, so the captured graphs stay valid (no re-capture across episodes)."""
        cfg, cache = self._episode_config(self.cache_config), self._cache
        if (self._decode is not None and cache is not None and cache.config.static and cfg.static
                and static_capacity(cache.config) == static_capacity(cfg)):
            cache.reset()
            cache.reconfigure(cfg)
        else:
            self._cache = make_cache(cfg, self.policy.cache_model_config(), gate=self.gate)
            self._decode = CompiledDecode(self.policy.compile_model(), self._cache) if self.compile else None
        self._episode.decode = self._decode

    @torch.inference_mode()
    def step_action_chunk(self, images, state: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """One control step: camera frame(s) (+ robot state) -> the policy's action chunk
        ``(action_chunk_length, action_dim)`` (the package's own VLA: one action).

        Args:
            images: one frame (H, W, 3) / (H, W), or a list of ``policy.num_cameras`` frames.
            state: (state_dim,) robot state, for policies that take one (π0).
            kwargs: policy options (π0: ``noise`` (1, chunk, max_action_dim)).
        """
        if self._cache is None:
            raise RuntimeError("VLASession.step: call reset(instruction) first")
        if not self.history and self._episode.steps:  # the current frame alone: forget every earlier step
            self._new_cache()
            self.policy.start(self._cache, self._episode)
            self._episode.steps = 0
        policy_ms, score_ms = self._cache.eviction_ms, self._cache.score_ms
        actions, timings = self.policy.step(self._cache, self._episode, images, state, **kwargs)
        self._episode.steps += 1
        self.steps += 1
        # the part of the step spent choosing what to keep (gate scores + eviction), within forward
        self.latency_ms = {**timings, "cache_policy": self._cache.eviction_ms - policy_ms,
                           "cache_scoring": self._cache.score_ms - score_ms}
        return actions

    def step(self, image, state: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """One control step -> the first action of the action chunk (dim,): int64 (discrete) or float32."""
        return self.step_action_chunk(image, state, **kwargs)[0]

    # ---- introspection / live tuning --------------------------------------------------------
    def stats(self) -> dict:
        """Tokens seen/held, KV bytes held, kept chunk ids, last gate scores, latency (ms)."""
        out = {"steps": self.steps, "tokens_seen": 0, "tokens_held": 0, "bytes_held": 0,
               "kept_chunks": [], "gate_scores": [], "latency_ms": dict(self.latency_ms),
               "eviction": self.cache_config.eviction, "dtype": str(self.dtype).removeprefix("torch."),
               "compiled": self._decode.mode if self._decode is not None else "off"}
        if self._cache is not None:
            cs = dict(self._cache.stats())
            cs.pop("policy", None)
            cs["gate_scores"] = cs["last_gate_scores"]
            out.update(cs)
            if not self.history and self.steps:  # chunk ids of the episode: only the newest step is held
                out["kept_chunks"], out["chunks_scored"] = [], self.steps - 1
        return out

    @property
    def requested_cache_config(self) -> CacheConfig:
        """The config the next episode will use: a pending change if any, else the active one."""
        return self.pending_cache_config or self.cache_config

    @torch.inference_mode()  # the cache's tensors were made under inference mode
    def set_cache_config(self, cfg: CacheConfig) -> bool:
        """Change cache parameters; returns True when applied live (history kept, see
        ``ChunkedKVCache.reconfigure``), False when the change waits for the next ``reset`` (a
        layout change: policy to or from ``window``, ``static``). ``cache_config`` is always the
        config of the running cache; ``pending_cache_config`` the one waiting."""
        cfg = self._check_cache_config(cfg)
        cache = self._cache
        if cache is not None and cache.tokens_seen > 0:
            if self.cache_config.needs_new_cache(cfg):
                # a layout change cannot apply to the history held: it takes effect at reset()
                self.pending_cache_config = cfg
                warnings.warn("the new cache config applies at the next reset() (the running cache cannot take "
                              "it live)", RuntimeWarning, stacklevel=2)
                return False
            self._ensure_attention(cfg)
            cache.reconfigure(self._episode_config(cfg))
            self.cache_config = cfg
        else:
            self._ensure_attention(cfg)
            self.cache_config = cfg
            if cache is not None:  # nothing streamed yet (π0 before its first frame): a new cache
                self._new_cache()
        self.pending_cache_config = None
        return True


__all__ = ["VLASession", "resolve_device_dtype", "DTYPES"]
