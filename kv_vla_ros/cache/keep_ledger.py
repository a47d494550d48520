"""`KeepLedger`: which old chunks a `ChunkedKVCache` keeps, summarizes or has dropped, and why.

Plain bookkeeping, no tensors and no layers: the cache scores the chunks that leave the recent
window, the ledger records their utilities and applies the keep rule (threshold, budget, summaries)
per group of layers that share one decision, and the cache then makes its layers hold what the
ledger says. Per-step work must not grow with the episode: only the old chunks that some group
still holds are tracked; a chunk dropped everywhere is forgotten for good. Plain lists, not
tensors: a handful of entries, read and written one by one on every control step, where a tensor
op per element would cost more than the gate itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KEPT, SUMMARY, DROPPED = 0, 1, 2


@dataclass
class KeepRule:
    """What the keep rule reads from the cache config (`CacheConfig` fields of the same names)."""

    chunk_size: int
    gate_threshold: float
    summarize: bool
    summary_threshold: float
    uses_threshold: bool  # the eviction's scores are utilities in [0, 1] (`Eviction.uses_threshold`)


@dataclass
class KeepLedger:
    """Tracked old chunks (columns): ``ids`` ascending, one utility each, one state per group."""

    groups: int = 1
    scored: int = 0  # chunks that have left the recent window (each scored once): a count only
    ids: list[int] = field(default_factory=list)  # [n_tracked] ascending ids of old chunks held by some group
    scores: list[float] = field(default_factory=list)  # [n_tracked] utility per tracked chunk
    states: list[list[int]] = field(default_factory=list)  # [groups][n_tracked] KEPT / SUMMARY / DROPPED
    last_scores: dict[int, float] = field(default_factory=dict)  # the newest chunks' scores (diagnostics)

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [[] for _ in range(self.groups)]

    def add(self, new_ids: list[int], new_scores: list[float]) -> None:
        """Chunks that just left the recent window, with their utilities: kept until the rule says."""
        self.last_scores = dict(zip(new_ids, new_scores))
        self.ids += new_ids
        self.scores += new_scores
        for state in self.states:
            state += [KEPT] * len(new_ids)
        if new_ids:
            self.scored = new_ids[-1] + 1

    def regroup(self, groups: int) -> None:
        """Shared -> per layer: every layer starts from the shared decision. Per layer -> shared: a
        chunk counts as held if any layer still holds it (the best state)."""
        if groups == len(self.states):
            return
        self.states = ([list(self.states[0]) for _ in range(groups)] if len(self.states) == 1
                       else [[min(col) for col in zip(*self.states)]] if self.ids else [[]])
        self.groups = groups

    def held_everywhere(self) -> list[bool]:
        """[n_tracked] whether every group keeps the chunk (verbatim)."""
        return [all(state[j] == KEPT for state in self.states) for j in range(len(self.ids))]

    def chunks(self, group: int, state: int) -> list[int]:
        """Ids of the tracked chunks in ``state`` (KEPT, SUMMARY) in one group."""
        return [c for c, st in zip(self.ids, self.states[group]) if st == state]

    def decide(self, group: int, rule: KeepRule, scores: list[float], room: int | None) -> tuple[bool, list[int]]:
        """Apply the keep rule to one group (``scores``: current utilities, ``room``: tokens left for
        old chunks after the prefix and the recent window, None: no budget); return whether any state
        changed and the chunk ids that just became summaries (their K/V still held).
        O(tracked chunks), never O(history)."""
        state, ids = self.states[group], self.ids
        kept = [j for j, st in enumerate(state) if st == KEPT]  # column indices
        evicted = []
        if rule.uses_threshold:
            evicted = [j for j in kept if scores[j] < rule.gate_threshold]
            kept = [j for j in kept if scores[j] >= rule.gate_threshold]
        used = 0
        if room is not None:
            # Highest utility first; among equals, the newer chunk.
            kept.sort(key=lambda j: (-scores[j], -ids[j]))
            fits = max(0, room // rule.chunk_size)
            evicted += kept[fits:]
            kept = kept[:fits]
            used = len(kept) * rule.chunk_size
        for j in evicted:
            state[j] = SUMMARY if rule.summarize and scores[j] >= rule.summary_threshold else DROPPED
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

    def forget_dropped(self) -> list[int]:
        """Stop tracking chunks that no group holds any more (their tokens are gone for good);
        returns their ids."""
        alive = [any(state[j] != DROPPED for state in self.states) for j in range(len(self.ids))]
        if all(alive):
            return []
        gone = [c for c, a in zip(self.ids, alive) if not a]
        self.ids = [c for c, a in zip(self.ids, alive) if a]
        self.scores = [x for x, a in zip(self.scores, alive) if a]
        self.states = [[x for x, a in zip(state, alive) if a] for state in self.states]
        return gone


__all__ = ["KEPT", "SUMMARY", "DROPPED", "KeepLedger", "KeepRule"]
