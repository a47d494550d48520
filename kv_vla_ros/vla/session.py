"""`VLASession`: one long-horizon streaming episode of a VLA over a bounded KV cache.

Per ``step``: the previous step's undelivered action token(s) and the new frame's tokens go
through the backbone in one forward (appended to the cache, which applies its policy); the action
is decoded from the last position's action-token logits (argmax), autoregressively per dimension
for continuous actions. History persists across steps until ``reset``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.vla.model import VLAModel
from kv_vla_ros.vla.processor import check_image

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


def make_session_cache(config: CacheConfig, model_config, gate=None):
    """The cache object for one episode (``kv_vla_ros.cache.make_cache``; DynamicCache fallback)."""
    try:
        from kv_vla_ros.cache import make_cache
    except ImportError:  # the cache tier is optional while it is being written: full only
        if config.policy != "full":
            raise ValueError(f"cache.policy: {config.policy!r} needs kv_vla_ros.cache.make_cache") from None
        from transformers import DynamicCache

        return DynamicCache(config=model_config)
    return make_cache(config, model_config, gate=gate)


class VLASession:
    """Streaming inference of ``model`` with one cache per episode.

    Args:
        model: a ``VLAModel`` (put in eval mode here).
        cache_config: defaults to ``model.config.cache``; ``sink_tokens`` must equal the prefix
            length and ``chunk_size`` the tokens per step (so chunks are control steps).
        device: torch device for inference.
        dtype: weights, activations and K/V (float32, bfloat16, float16 on CUDA); default: the
            model's. Frames are normalized in float32 and cast once; the gate scores in float32.
        compile: run the decode step compiled (`kv_vla_ros.cache.compiled`: a CUDA graph on a
            GPU, the same prepared step uncompiled on a CPU); needs ``cache_config.static``.
    """

    def __init__(self, model: VLAModel, cache_config: CacheConfig | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, compile: bool = False):
        self.device, self.dtype = resolve_device_dtype(device, dtype if dtype is not None else model.dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.compile = False
        self._decode = None  # CompiledDecode of the current cache when compile is on
        self.cache_config = self._check_cache_config(cache_config or model.config.cache)
        self._ensure_attention(self.cache_config)
        self.gate = getattr(model, "gate", None)
        if self.gate is not None:
            self.gate = self.gate.to(self.device)  # stays float32: its scores are compared to thresholds
        self.instruction: str | None = None
        self._cache = None
        self._pending: list[int] = []  # action tokens decoded but not yet fed to the backbone
        self.steps = 0
        self.last_logits: torch.Tensor | None = None  # (A, action_vocab) of the last step
        self.latency_ms = {"encode": 0.0, "forward": 0.0, "decode": 0.0, "total": 0.0}
        self.set_compile(compile)

    def _ensure_attention(self, cfg: CacheConfig) -> None:
        """Per-layer budgets and the static cache need the ``kv_vla_*`` attention (registered
        through transformers' AttentionInterface); switch the backbone to it when asked for."""
        uneven = cfg.layer_budgets is not None and len(set(cfg.layer_budgets)) > 1
        impl = self.model.backbone.config._attn_implementation or ""
        if (uneven or cfg.static) and not impl.startswith("kv_vla_"):
            from kv_vla_ros.cache import use_kv_vla_attention

            use_kv_vla_attention(self.model.backbone, "eager" if impl == "eager" else "sdpa")

    def _check_cache_config(self, cfg: CacheConfig) -> CacheConfig:
        if not isinstance(cfg, CacheConfig):
            raise ValueError(f"cache_config: expected a CacheConfig, got {type(cfg).__name__}")
        mc = self.model.config
        if cfg.sink_tokens != mc.max_instruction_tokens:
            raise ValueError(f"cache.sink_tokens: must equal the instruction prefix length "
                             f"{mc.max_instruction_tokens}, got {cfg.sink_tokens}")
        if cfg.chunk_size != mc.tokens_per_step:
            raise ValueError(f"cache.chunk_size: must equal the tokens per step {mc.tokens_per_step}, "
                             f"got {cfg.chunk_size}")
        if self.compile:
            self._check_compilable(cfg)
        return cfg

    def _check_compilable(self, cfg: CacheConfig) -> None:
        from kv_vla_ros.cache import POLICIES

        if not cfg.static:
            raise ValueError("cache.static: compile needs the static-shape cache (cache.static: true, with an "
                             "evicting cache.policy and a cache.budget_tokens)")
        if self.device.type == "cuda" and POLICIES[cfg.policy].wants_attention:
            raise ValueError(f"cache.policy: {cfg.policy!r} reads each step's attention from Python, which a "
                             "CUDA graph does not run; use another policy or compile: false")

    def set_compile(self, on: bool) -> None:
        """Turn the compiled decode step on or off; applies from the next episode (``reset``)."""
        if not isinstance(on, bool):
            raise ValueError(f"compile: expected a bool, got {on!r}")
        if on:
            self._check_compilable(self.cache_config)
        self.compile = on
        self._decode = None

    # ---- episode ----------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, instruction: str) -> None:
        """Start a new episode: a fresh cache (and gate state) whose prefix is ``instruction``."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction: expected a non-empty string, got {instruction!r}")
        ids = torch.as_tensor(self.model.text_tokenizer.encode(instruction), device=self.device)
        self._new_cache()
        self.model.backbone(inputs_embeds=self.model.embed_ids(ids).unsqueeze(0),
                            past_key_values=self._cache, use_cache=True)
        self.instruction = instruction
        self._pending = []
        self.steps = 0
        self.last_logits = None

    def _new_cache(self) -> None:
        """A cache for the new episode. Compiled: the previous cache is reset and reused while its
        slot layout fits, so the captured graphs stay valid (no re-capture across episodes)."""
        from kv_vla_ros.cache.chunked_cache import static_capacity

        cfg, cache = self.cache_config, self._cache
        if (self._decode is not None and cache is not None and cache.config.static and cfg.static
                and static_capacity(cache.config) == static_capacity(cfg)):
            cache.reset()
            cache.reconfigure(cfg)
            return
        # backbone.config carries the attention implementation the cache must know about
        self._cache = make_session_cache(cfg, self.model.backbone.config, gate=self.gate)
        self._decode = None
        if self.compile:
            from kv_vla_ros.cache.compiled import CompiledDecode

            self._decode = CompiledDecode(self.model.backbone, self._cache)

    def _last_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """Backbone over ``embeds [1, q, D]`` appended to the cache -> last position's logits ``[V]``."""
        if self._decode is not None:
            return self._decode(embeds)[0]
        # logits_to_keep=1: only the last position predicts; skip the LM head elsewhere
        out = self.model.backbone(inputs_embeds=embeds, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    @torch.inference_mode()
    def step(self, image: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """One control step: frame (H, W, 3) / (H, W) -> action (1,) int64 or (dim,) float32.

        ``state`` (proprioception) is accepted for API compatibility and not used by this model.
        """
        if self._cache is None:
            raise RuntimeError("VLASession.step: call reset(instruction) first")
        t0 = time.perf_counter()
        frame = check_image(image)
        model = self.model
        # normalized in float32, cast once to the model's dtype
        embeds = model.vision(model.processor(frame[None], self.device).to(self.dtype))  # (1, F, D)
        if self._pending:
            pend = torch.as_tensor(self._pending, device=self.device).unsqueeze(0)
            embeds = torch.cat([model.embed_actions(pend), embeds], dim=1)
        t1 = time.perf_counter()
        a = model.config.action.tokens_per_action
        tokens, logits_rows = [], []
        decode_s = 0.0
        for j in range(a):
            last = self._last_logits(embeds)
            td = time.perf_counter()
            logits = model.action_logits(last).float()
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            logits_rows.append(logits)
            if j + 1 < a:  # feed this dimension's token to predict the next one
                embeds = model.embed_actions(torch.tensor([[tok]], device=self.device))
            decode_s += time.perf_counter() - td
        t2 = time.perf_counter()
        self._pending = [tokens[-1]]
        action = model.action_tokenizer.decode(np.asarray(tokens))
        t3 = time.perf_counter()
        self.last_logits = torch.stack(logits_rows)
        self.steps += 1
        self.latency_ms = {
            "encode": (t1 - t0) * 1e3,
            "forward": (t2 - t1 - decode_s) * 1e3,
            "decode": (t3 - t2 + decode_s) * 1e3,
            "total": (t3 - t0) * 1e3,
        }
        return action

    # ---- introspection / live tuning --------------------------------------------------------
    def stats(self) -> dict:
        """Tokens seen/held, KV bytes held, kept chunk ids, last gate scores, latency (ms)."""
        out = {"steps": self.steps, "tokens_seen": 0, "tokens_held": 0, "bytes_held": 0,
               "kept_chunks": [], "gate_scores": [], "latency_ms": dict(self.latency_ms),
               "policy": self.cache_config.policy, "dtype": str(self.dtype).removeprefix("torch."),
               "compiled": self._decode.mode if self._decode is not None else "off"}
        cache = self._cache
        if cache is None:
            return out
        if hasattr(cache, "stats"):
            cs = dict(cache.stats())
            cs.pop("policy", None)
            if "gate_scores" not in cs and "last_gate_scores" in cs:
                cs["gate_scores"] = cs["last_gate_scores"]
            out.update(cs)
        else:  # DynamicCache fallback
            layers = [(layer.keys, layer.values) for layer in cache.layers if layer.keys is not None]
            out["tokens_seen"] = cache.get_seq_length()
            out["tokens_held"] = layers[0][0].shape[-2] if layers else 0
            out["bytes_held"] = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        return out

    @torch.inference_mode()  # the cache's tensors were made under inference mode
    def set_cache_config(self, cfg: CacheConfig) -> None:
        """Change cache parameters live; keeps the episode's history when the cache supports it."""
        cfg = self._check_cache_config(cfg)
        self._ensure_attention(cfg)
        cache = self._cache
        if cache is not None and cache.get_seq_length() > 0:
            if hasattr(cache, "reconfigure"):  # kv_vla_ros.cache: evicts/re-scores, keeps history
                cache.reconfigure(cfg)
            else:
                # DynamicCache fallback (no chunked cache tier): it cannot evict; the new config
                # takes effect at the next reset().
                warnings.warn("cache has no live reconfiguration: the new cache config applies at the next reset()",
                              RuntimeWarning, stacklevel=2)
        self.cache_config = cfg


__all__ = ["VLASession", "make_session_cache", "resolve_device_dtype", "DTYPES"]
