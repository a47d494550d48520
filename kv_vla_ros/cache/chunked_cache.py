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

KEPT, SUMMARY, DROPPED = 0, 1, 2

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
        # Per-step work must not grow with the episode: only the old chunks that some layer still
        # holds are tracked (``old_ids``); a chunk dropped everywhere is forgotten for good.
        # Plain lists, not tensors: a handful of entries, read and written one by one on every
        # control step, where a tensor op per element would cost more than the gate itself.
        self.eviction_ms = 0.0  # time spent scoring and evicting (see `_after_step`)
        self.score_ms = 0.0  # the scoring part of it (the gate, for `gated`)
        self.n_old = 0  # chunks that have left the recent window (each scored once): a count only
        self.old_ids: list[int] = []  # [n_tracked] ascending ids of old chunks held by some group
        self._scores: list[float] = []  # [n_tracked] utility per tracked chunk
        self._states: list[list[int]] = [[] for _ in self._groups()]  # [groups][n_tracked] KEPT/SUMMARY/DROPPED
        self.last_scores: dict[int, float] = {}

    @property
    def scores(self) -> torch.Tensor:
        """``[n_tracked]`` float32 utility of each tracked old chunk (columns: ``old_ids``)."""
        return torch.tensor(self._scores, dtype=torch.float32)

    @property
    def states(self) -> torch.Tensor:
        """``[groups, n_tracked]`` int8 state (KEPT, SUMMARY, DROPPED) of each tracked old chunk."""
        return torch.tensor(self._states, dtype=torch.int8).view(len(self._states), len(self.old_ids))

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
        new_ids = list(range(self.n_old, first_recent))
        if new_ids:
            t0 = time.perf_counter()
            new_scores = self.eviction.score(new_ids).float().tolist()
            self.score_ms += (time.perf_counter() - t0) * 1e3
            self.last_scores = dict(zip(new_ids, new_scores))
            self.old_ids += new_ids
            self._scores += new_scores
            for state in self._states:
                state += [KEPT] * len(new_ids)
            self.n_old = first_recent
        self._evict()

    def _evict(self, force: bool = False) -> None:
        """Apply the keep rule to every old chunk still held, in every layer. The layers' tensors
        are touched only where some chunk's state changed (``force``: always, after a
        reconfiguration)."""
        if not self.eviction.evicts or not self.old_ids:
            return
        cfg, seen, sink = self.config, self.tokens_seen, self.sink
        scores = self._scores
        if type(self.eviction).rescore is not Eviction.rescore:  # dynamic scores (h2o)
            rescored = self.eviction.rescore(list(self.old_ids), torch.tensor(scores, dtype=torch.float32))
            scores = rescored.float().tolist()
        recent_start = sink + self.n_old * cfg.chunk_size
        fixed = min(seen, sink) + max(0, seen - recent_start)  # prefix + recent window
        for g, group in enumerate(self._groups()):
            budget = cfg.layer_budgets[g] if cfg.layer_budgets is not None else cfg.budget_tokens
            changed, new_summaries = self._decide(g, scores, None if budget is None else budget - fixed)
            if changed or force:
                self._apply(group, g, recent_start, new_summaries)
        self._forget_dropped()

    def _forget_dropped(self) -> None:
        """Stop tracking chunks that no layer holds any more (their tokens are gone for good)."""
        alive = [any(state[j] != DROPPED for state in self._states) for j in range(len(self.old_ids))]
        if all(alive):
            return
        self.eviction.forget([c for c, a in zip(self.old_ids, alive) if not a])
        self.old_ids = [c for c, a in zip(self.old_ids, alive) if a]
        self._scores = [x for x, a in zip(self._scores, alive) if a]
        self._states = [[x for x, a in zip(state, alive) if a] for state in self._states]

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
        n_groups_old = len(self._states)
        old_eviction = self.config.eviction
        self.config = config
        n_groups = len(self._groups())
        if n_groups != n_groups_old:
            # Shared -> per layer: every layer starts from the shared decision. Per layer ->
            # shared: a chunk counts as held if any layer still holds it (the best state).
            self._states = ([list(self._states[0]) for _ in range(n_groups)] if n_groups_old == 1
                            else [[min(col) for col in zip(*self._states)] if self.old_ids else []])
        if config.eviction != old_eviction:
            if config.eviction_class.needs_gate and self.gate is None:
                in_dim = gate_input_dim(len(self.chunked), self.head_dim)
                self.gate = ChunkGate.untrained(in_dim, seed=config.seed)
            self.eviction = make_eviction(config.eviction, self)
            everywhere = [all(state[j] == KEPT for state in self._states) for j in range(len(self.old_ids))]
            held_everywhere = [c for c, e in zip(self.old_ids, everywhere) if e]
            new_scores = iter(self.eviction.score(held_everywhere).float().tolist() if held_everywhere else [])
            self._scores = [next(new_scores) if e else float("-inf") for e in everywhere]
        self._evict(force=True)

    def _decide(self, g: int, scores: list[float], room: int | None) -> tuple[bool, list[int]]:
        """Update ``_states[g]`` (columns: ``old_ids``); return whether any state changed and the
        chunk ids that just became summaries (their K/V still held). O(tracked chunks), never
        O(history)."""
        cfg, state, ids = self.config, self._states[g], self.old_ids
        kept = [j for j, st in enumerate(state) if st == KEPT]  # column indices
        evicted = []
        if self.eviction.uses_threshold:
            evicted = [j for j in kept if scores[j] < cfg.gate_threshold]
            kept = [j for j in kept if scores[j] >= cfg.gate_threshold]
        used = 0
        if room is not None:
            # Highest utility first; among equals, the newer chunk.
            kept.sort(key=lambda j: (-scores[j], -ids[j]))
            fits = max(0, room // cfg.chunk_size)
            evicted += kept[fits:]
            kept = kept[:fits]
            used = len(kept) * cfg.chunk_size
        for j in evicted:
            state[j] = SUMMARY if cfg.summarize and scores[j] >= cfg.summary_threshold else DROPPED
        changed = bool(evicted)
        new_summaries = [j for j in evicted if state[j] == SUMMARY]
        summaries = [j for j, st in enumerate(state) if st == SUMMARY]
        if room is not None and len(summaries) > room - used:
            summaries.sort(key=lambda j: (-scores[j], -ids[j]))
            for j in summaries[max(0, room - used):]:
                state[j] = DROPPED
                changed = True
            new_summaries = [j for j in new_summaries if state[j] == SUMMARY]
        return changed, [ids[j] for j in new_summaries]

    def _apply(self, group: list[int], g: int, recent_start: int, new_summaries: list[int]) -> None:
        """Make the layers of group ``g`` hold what ``_states[g]`` says."""
        cfg, sink, state = self.config, self.sink, self._states[g]
        kept = [c for c, st in zip(self.old_ids, state) if st == KEPT]
        summarized = [c for c, st in zip(self.old_ids, state) if st == SUMMARY]
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
        kept = [c for c, st in zip(self.old_ids, self._states[0]) if st == KEPT]
        return {
            "eviction": cfg.eviction,
            "tokens_seen": self.tokens_seen,
            "tokens_held": self.tokens_held(),
            "tokens_held_per_layer": [self.layers[i].held for i in self.chunked],
            "bytes_held": self.nbytes(),
            "chunks_scored": self.n_old,
            "kept_chunks": kept,
            "kept_ranges": [[self.sink + c * cfg.chunk_size, self.sink + (c + 1) * cfg.chunk_size] for c in kept],
            "summary_chunks": [c for c, st in zip(self.old_ids, self._states[0]) if st == SUMMARY],
            "last_gate_scores": dict(self.last_scores),
            "keep_ratio": self.tokens_held() / max(1, self.tokens_seen),
        }


def make_cache(config: CacheConfig, model_config, gate: ChunkGate | None = None) -> ChunkedKVCache:
    """A `transformers.Cache` for ``model_config`` (any decoder-only model) following ``config``.

    Pass it as ``past_key_values`` to ``model(...)`` or ``model.generate(...)``.
    """
    if not isinstance(config, CacheConfig):
        raise ValueError(f"config: expected a CacheConfig, got {type(config).__name__}")
    return ChunkedKVCache(config, model_config, gate=gate)
