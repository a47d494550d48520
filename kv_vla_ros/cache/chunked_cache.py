"""`ChunkedKVCache`: the bounded, chunked KV cache of one long-horizon session.

A `transformers.Cache` of `ChunkedLayer`s. Every layer's `update` appends and returns the
pre-eviction K/V; after the last attention layer of a forward, the container scores the chunks
that just left the recent window (the eviction), decides what stays (threshold, budget, per-layer
budgets, summaries: here, once, for every eviction) and evicts in all layers at once, so K and V,
and by default all layers, share one decision per chunk.
"""

from __future__ import annotations

import math
import threading
import time

import torch
from transformers.cache_utils import Cache

from .config import CacheConfig
from .shapes import head_dim_of, kv_bytes_per_token, static_capacity, text_config  # noqa: F401 (API)
from .gate import ChunkGate, gate_input_dim
from .layer import ChunkedLayer, build_layers
from .static_layer import StaticChunkedLayer
from .eviction import make_eviction
from .eviction.base import Eviction
from .keep_ledger import KEPT, SUMMARY, KeepLedger, KeepRule

# The layer whose `update` ran last on this thread: the `kv_vla_*` attention functions use it to
# hand this step's attention back to the cache (the attention call follows `update` directly).
ACTIVE = threading.local()


def _long(values: list[int], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


class ChunkedKVCache(Cache):
    """See the module docstring. Build it with `make_cache`."""

    def __init__(self, config: CacheConfig, model_config, gate: ChunkGate | None = None) -> None:
        config.validate()
        cfg = text_config(model_config)
        layers = build_layers(config, cfg)
        super().__init__(layers=layers)
        self.config = config
        self.chunked = [i for i, layer in enumerate(layers) if isinstance(layer, (ChunkedLayer, StaticChunkedLayer))]
        if not self.chunked:
            window = getattr(cfg, "sliding_window", None)
            raise ValueError("model_config.layer_types: the model has no full-attention layer to cache" + (
                f" (every layer slides over its own window of {window} tokens, already bounded: use transformers' "
                "DynamicCache)" if window else ""))
        self.head_dim = head_dim_of(cfg)
        self._model_config = model_config  # its attention may switch to kv_vla_* later (`attn_implementation`)
        self._check_layer_budgets(config)
        if config.static and not self.attn_implementation.startswith("kv_vla_"):
            raise ValueError(
                "static: the static-shape cache needs the 'kv_vla_sdpa' or 'kv_vla_eager' attention "
                f"(model uses {self.attn_implementation!r}); call kv_vla_ros.cache.use_kv_vla_attention(model) first"
            )
        in_dim = gate_input_dim(len(self.chunked), self.head_dim)
        if config.eviction_class.needs_gate:
            gate = gate if gate is not None else ChunkGate.untrained(in_dim, seed=config.seed)
            if gate.config.in_dim != in_dim:
                raise ValueError(
                    f"gate: in_dim {gate.config.in_dim} does not match the model ({len(self.chunked)} layers x 2 x "
                    f"head_dim {self.head_dim} = {in_dim})"
                )
        self.gate = gate
        # With the kv_vla_* attention the real attention of each step is reported to the eviction.
        self.attention_hooked = self.attn_implementation.startswith("kv_vla_")
        self._all_dynamic = all(type(self.layers[i]) is ChunkedLayer for i in self.chunked)  # not static
        self.eviction = make_eviction(config.eviction, self)
        self.external_step = False  # a forward prepared by `begin_step` (compiled decode) is under way
        self._clear()

    @property
    def attn_implementation(self) -> str:
        """The model's attention now: a session switches it to ``kv_vla_*`` when a live change asks
        for uneven per-layer budgets, so the check reads it at each reconfiguration."""
        return getattr(self._model_config, "_attn_implementation", None) or ""

    def _check_layer_budgets(self, config: CacheConfig) -> None:
        if config.layer_budgets is None:
            return
        if len(config.layer_budgets) != len(self.chunked):
            raise ValueError(f"layer_budgets: {len(config.layer_budgets)} budgets for {len(self.chunked)} attention "
                             "layers")
        if len(set(config.layer_budgets)) > 1 and not self.attn_implementation.startswith("kv_vla_"):
            raise ValueError(
                "layer_budgets: layers holding different lengths need the 'kv_vla_sdpa' or 'kv_vla_eager' attention "
                f"(model uses {self.attn_implementation!r}); call kv_vla_ros.cache.use_kv_vla_attention(model) first"
            )

    # ----------------------------------------------------------------- bookkeeping
    @property
    def sink(self) -> int:
        return self.config.prefix_tokens

    def _groups(self) -> list[list[int]]:
        """Layers sharing one keep decision: all of them, or each alone with per-layer budgets."""
        if self.config.layer_budgets is None:
            return [self.chunked]
        return [[i] for i in self.chunked]

    def _clear(self) -> None:
        self.eviction_ms = 0.0  # time spent scoring and evicting (see `_after_step`)
        self.score_ms = 0.0  # the scoring part of it (the gate, for `gated`)
        self.ledger = KeepLedger(groups=len(self._groups()))  # which old chunks stay (`keep_ledger`)

    @property
    def scores(self) -> torch.Tensor:
        """``[n_tracked]`` float32 utility of each tracked old chunk (columns: ``ledger.ids``)."""
        return torch.tensor(self.ledger.scores, dtype=torch.float32)

    @property
    def states(self) -> torch.Tensor:
        """``[groups, n_tracked]`` int8 state (KEPT, SUMMARY, DROPPED) of each tracked old chunk."""
        return torch.tensor(self.ledger.states, dtype=torch.int8).view(len(self.ledger.states), len(self.ledger.ids))

    def _keep_rule(self) -> KeepRule:
        cfg = self.config
        return KeepRule(cfg.chunk_size, cfg.gate_threshold, cfg.summarize, cfg.summary_threshold,
                        self.eviction.uses_threshold)

    def reset(self) -> None:
        """New episode: drop every token and the gate/eviction state."""
        super().reset()
        self.end_step(evict=False)
        self._clear()
        self.eviction.reset()

    @property
    def tokens_seen(self) -> int:
        return self.layers[self.chunked[0]].seen

    # ----------------------------------------------------------------- transformers API
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        keys, values = self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)
        if layer_idx in self.chunked:
            ACTIVE.cache, ACTIVE.layer_idx = self, layer_idx
            if self.eviction.wants_attention:
                self.eviction.observe_update(layer_idx, keys, key_states.shape[-2])
            if layer_idx == self.chunked[-1] and not self.external_step:
                # The returned `keys`/`values` are tensors of their own: evicting now leaves this
                # layer's attention over the pre-eviction states untouched.
                self._after_step()
        return keys, values

    # ----------------------------------------------------------------- prepared forwards
    def begin_step(self, q: int) -> torch.Tensor:
        """Prepare a forward of ``q`` tokens outside the model (the compiled decode step): every
        static layer claims its slots and uploads its table now, so the forward is pure device
        work; eviction waits for `end_step`. Returns the block's absolute positions ``[q]`` (a
        device buffer with a fixed address, to pass as ``position_ids``)."""
        if self.external_step:
            raise RuntimeError("begin_step: the previous prepared step was not ended (end_step)")
        layers = [self.layers[i] for i in self.chunked]
        if not self.config.static or len(layers) != len(self.layers):
            raise ValueError("static: a prepared (compiled) step needs the static cache on every layer")
        if not all(layer.is_initialized for layer in layers):
            raise ValueError("begin_step: feed the prefix through the model first (it sizes the slot buffers)")
        shared = self.config.layer_budgets is None  # one decision for all layers: one table
        for layer in layers:
            layer.external = True
            layer.prepare(q, share=layers[0] if shared and layer is not layers[0] else None)
        self.external_step = True
        return layers[0].bound[2]

    def end_step(self, evict: bool = True) -> None:
        """End a prepared step: apply the eviction (``evict=False`` after a failed forward)."""
        for i in self.chunked:
            self.layers[i].external = False
        self.external_step = False
        if evict:
            self._after_step()

    # ----------------------------------------------------------------- eviction
    def _after_step(self) -> None:
        t0 = time.perf_counter()
        try:
            self._score_and_evict()
        finally:
            # the eviction's own cost (scoring + eviction), summed over the episode
            self.eviction_ms += (time.perf_counter() - t0) * 1e3

    def _score_and_evict(self) -> None:
        cfg, seen, sink = self.config, self.tokens_seen, self.sink
        n_total = math.ceil(max(0, seen - sink) / cfg.chunk_size)
        first_recent = max(0, n_total - cfg.recent_chunks)
        new_ids = list(range(self.ledger.scored, first_recent))
        if new_ids:
            t0 = time.perf_counter()
            new_scores = self.eviction.score(new_ids).float().tolist()
            self.score_ms += (time.perf_counter() - t0) * 1e3
            self.ledger.add(new_ids, new_scores)
        self._evict()

    def _evict(self, force: bool = False) -> None:
        """Apply the keep rule to every old chunk still held, in every layer. The layers' tensors
        are touched only where some chunk's state changed (``force``: always, after a
        reconfiguration)."""
        ledger = self.ledger
        if not self.eviction.evicts or not ledger.ids:
            return
        cfg, seen, sink = self.config, self.tokens_seen, self.sink
        scores = ledger.scores
        if type(self.eviction).rescore is not Eviction.rescore:  # dynamic scores (h2o)
            rescored = self.eviction.rescore(list(ledger.ids), torch.tensor(scores, dtype=torch.float32))
            scores = rescored.float().tolist()
        recent_start = sink + ledger.scored * cfg.chunk_size
        fixed = min(seen, sink) + max(0, seen - recent_start)  # prefix + recent window
        rule = self._keep_rule()
        for g, group in enumerate(self._groups()):
            budget = cfg.layer_budgets[g] if cfg.layer_budgets is not None else cfg.budget_tokens
            changed, new_summaries = ledger.decide(g, rule, scores, None if budget is None else budget - fixed)
            if changed or force:
                self._apply(group, g, recent_start, new_summaries)
        gone = ledger.forget_dropped()
        if gone:
            self.eviction.forget(gone)

    def reconfigure(self, config: CacheConfig) -> None:
        """Change the eviction, budgets, window or thresholds live, keeping the episode's history.

        Tightening takes effect at once (the excess is evicted now); evicted tokens never come
        back. A new eviction re-scores the old chunks that every layer still holds (in chunk order)
        and ranks the others lowest. ``chunk_size`` and ``sink_tokens`` define the chunk layout
        of the history, so they change only with a new cache (next episode): ``ValueError``.
        """
        config.validate()
        for name in ("chunk_size", "sink_tokens"):
            if getattr(config, name) != getattr(self.config, name) and self.tokens_seen > 0:
                raise ValueError(f"{name}: cannot change in the middle of an episode (applies to a new cache)")
        if config.static != self.config.static:  # the layers' kind is fixed when the cache is built
            raise ValueError("static: switching the static-shape cache on or off applies to a new cache")
        if config.eviction_class.holds_prefix != self.config.eviction_class.holds_prefix and self.tokens_seen > 0:
            raise ValueError(f"eviction: switching from {self.config.eviction!r} to {config.eviction!r} changes the "
                             "prefix layout (one holds the prefix, the other not); it applies to a new cache")
        self._check_layer_budgets(config)
        slots = min((getattr(self.layers[i], "capacity", 1 << 62) for i in self.chunked), default=1 << 62)
        if static_capacity(config) > slots and config.static:
            raise ValueError(
                f"budget_tokens: the static cache has {slots} slots per layer, this budget needs "
                f"{static_capacity(config)}; a larger budget needs a new cache"
            )
        old_eviction = self.config.eviction
        self.config = config
        self.ledger.regroup(len(self._groups()))
        if config.eviction != old_eviction:
            if config.eviction_class.needs_gate and self.gate is None:
                in_dim = gate_input_dim(len(self.chunked), self.head_dim)
                self.gate = ChunkGate.untrained(in_dim, seed=config.seed)
            self.eviction = make_eviction(config.eviction, self)
            everywhere = self.ledger.held_everywhere()
            held_everywhere = [c for c, e in zip(self.ledger.ids, everywhere) if e]
            new_scores = iter(self.eviction.score(held_everywhere).float().tolist() if held_everywhere else [])
            self.ledger.scores = [next(new_scores) if e else float("-inf") for e in everywhere]
        self._evict(force=True)

    def _apply(self, group: list[int], g: int, recent_start: int, new_summaries: list[int]) -> None:
        """Make the layers of group ``g`` hold what the ledger says."""
        cfg, sink = self.config, self.sink
        kept, summarized = self.ledger.chunks(g, KEPT), self.ledger.chunks(g, SUMMARY)
        pos_done = index = None
        for layer_idx in group:
            layer = self.layers[layer_idx]
            summary_kv = [self._summary(layer, c) for c in new_summaries]
            pos = layer.positions
            # The layers of a group hold the same positions (one decision): one index for all.
            if pos_done is None or pos.shape != pos_done.shape or not torch.equal(pos, pos_done):
                keep = ((pos >= 0) & (pos < sink)) | (pos >= recent_start)
                old = (pos >= sink) & (pos < recent_start)
                keep |= old & torch.isin((pos - sink) // cfg.chunk_size, _long(kept, pos.device))
                if summarized:
                    keep |= (pos < 0) & torch.isin(-pos - 1, _long(summarized, pos.device))
                pos_done, index = pos, keep.nonzero().flatten()
            layer.keep(index)
            for c, (k, v) in zip(new_summaries, summary_kv):
                layer.append_summary(c, k, v)

    def _summary(self, layer: ChunkedLayer, chunk_id: int):
        """One token ``[b, h, 1, d]`` standing for a chunk: the mean of its keys and of its values.

        The chunk has one utility score, so the "score-weighted" mean of docs/method.md ("The cache",
        summaries) reduces to a plain mean over its tokens; the score decides whether the summary exists at all.
        """
        k, v = self._chunk_kv(layer, chunk_id)
        # Accumulate in float32: a half-precision sum over a chunk loses digits.
        return (k.mean(dim=-2, keepdim=True, dtype=torch.float32).to(k.dtype),
                v.mean(dim=-2, keepdim=True, dtype=torch.float32).to(v.dtype))

    def _chunk_span(self, layer: ChunkedLayer, chunk_id: int) -> tuple[int, int] | None:
        """``(index, tokens)`` of a chunk lying side by side in a dynamic layer, found without a
        search (a chunk that just left the window is usually followed by newer tokens only), or
        ``None``: search by position."""
        start = self.sink + chunk_id * self.config.chunk_size
        n = min(self.config.chunk_size, layer.seen - start)
        i = layer.held - (layer.seen - start)
        if n > 0 and i >= 0 and layer.positions[i:i + n].tolist() == list(range(start, start + n)):
            return i, n
        return None

    def _chunk_kv(self, layer: ChunkedLayer, chunk_id: int):
        if isinstance(layer, ChunkedLayer):
            span = self._chunk_span(layer, chunk_id)
            if span is not None:
                return layer.keys.narrow(-2, *span), layer.values.narrow(-2, *span)
        start = self.sink + chunk_id * self.config.chunk_size
        pos = layer.positions
        return layer.select(((pos >= start) & (pos < start + self.config.chunk_size)).nonzero().flatten())

    def chunk_states(self, chunk_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per attention layer ``(keys, values)`` ``[b, h, tokens, d]`` of a chunk that is held."""
        layers = [self.layers[i] for i in self.chunked]
        if self.config.layer_budgets is None and self._all_dynamic:
            # One keep decision for all layers (same appends, same evictions, same summaries):
            # their positions agree, so one look finds the chunk in every layer.
            span = self._chunk_span(layers[0], chunk_id)
            if span is not None:
                return [(layer.keys.narrow(-2, *span), layer.values.narrow(-2, *span)) for layer in layers]
        return [self._chunk_kv(layer, chunk_id) for layer in layers]

    # ----------------------------------------------------------------- reporting
    def held_positions(self, layer_idx: int | None = None) -> torch.Tensor:
        """Absolute positions ``[held]`` of one layer (default: the first attention layer); summaries < 0."""
        return self.layers[self.chunked[0] if layer_idx is None else layer_idx].positions

    def tokens_held(self, layer_idx: int | None = None) -> int:
        return self.layers[self.chunked[0] if layer_idx is None else layer_idx].held

    def nbytes(self) -> int:
        total = 0
        for layer in self.layers:
            if isinstance(layer, (ChunkedLayer, StaticChunkedLayer)):
                total += layer.nbytes()
            elif layer.is_initialized and layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total

    def stats(self) -> dict:
        """Tokens seen and held, bytes held, kept chunks (ids and absolute ranges), last gate scores."""
        cfg = self.config
        kept = self.ledger.chunks(0, KEPT)
        return {
            "eviction": cfg.eviction,
            "tokens_seen": self.tokens_seen,
            "tokens_held": self.tokens_held(),
            "tokens_held_per_layer": [self.layers[i].held for i in self.chunked],
            "bytes_held": self.nbytes(),
            "chunks_scored": self.ledger.scored,
            "kept_chunks": kept,
            "kept_ranges": [[self.sink + c * cfg.chunk_size, self.sink + (c + 1) * cfg.chunk_size] for c in kept],
            "summary_chunks": self.ledger.chunks(0, SUMMARY),
            "last_gate_scores": dict(self.ledger.last_scores),
            "keep_ratio": self.tokens_held() / max(1, self.tokens_seen),
        }


def make_cache(config: CacheConfig, model_config, gate: ChunkGate | None = None) -> ChunkedKVCache:
    """A `transformers.Cache` for ``model_config`` (any decoder-only model) following ``config``.

    Pass it as ``past_key_values`` to ``model(...)`` or ``model.generate(...)``.
    """
    if not isinstance(config, CacheConfig):
        raise ValueError(f"config: expected a CacheConfig, got {type(config).__name__}")
    return ChunkedKVCache(config, model_config, gate=gate)
