"""Per-step cost at a fixed held size does not grow with the history: counted, not timed.

At a fixed budget a step holds the same number of tokens whether the episode is 10 or 100 chunks
long, so it must dispatch the same aten ops over the same number of elements and make the same
Python calls. Bookkeeping over every chunk ever seen (states, scores, attention mass, rankings)
makes these counts grow with the history; this test fails on it whatever the machine's load.
"""

import pytest
import torch

from cache_models import tiny_model
from kv_vla_ros.cache import CacheConfig, make_cache, use_kv_vla_attention
from kv_vla_ros.cache.work import StepWork

CHUNK = 8
CASES = {
    "gated": dict(eviction="gated", gate_threshold=0.0),
    "gated-summaries": dict(eviction="gated", gate_threshold=0.5, summarize=True, summary_threshold=0.2),
    "h2o": dict(eviction="h2o"),
    "key_norm-per-layer-budgets": dict(eviction="key_norm", layer_budgets=[60, 36, 44]),
    "gated-static": dict(eviction="gated", gate_threshold=0.0, static=True),
}


def step_work(model, cache, ids, checkpoints):
    """Stream ``ids`` chunk by chunk; count the work of the step right after each checkpoint
    (one uncounted count first, once eviction runs: first calls initialise things lazily)."""
    out = {}
    with torch.inference_mode():
        model(input_ids=ids[:, :4], past_key_values=cache, use_cache=True)  # the prefix
        for step in range(max(checkpoints) + 1):
            block = ids[:, 4 + step * CHUNK: 4 + (step + 1) * CHUNK]
            if step == 10:
                with StepWork():
                    model(input_ids=block, past_key_values=cache, use_cache=True)
            elif step in checkpoints:
                with StepWork() as work:
                    model(input_ids=block, past_key_values=cache, use_cache=True)
                out[step] = (work.as_dict(), cache.stats()["tokens_held"])
            else:
                model(input_ids=block, past_key_values=cache, use_cache=True)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_work_is_independent_of_history(case):
    model = use_kv_vla_attention(tiny_model("llama", seed=3))
    cfg = CacheConfig(chunk_size=CHUNK, recent_chunks=2, sink_tokens=4, budget_tokens=52, **CASES[case])
    cache = make_cache(cfg, model.config)
    ids = torch.randint(0, 97, (1, 4 + 130 * CHUNK), generator=torch.Generator().manual_seed(4))
    early, late = list(range(20, 26)), list(range(122, 128))
    work = step_work(model, cache, ids, checkpoints=early + late)
    held = {step: h for step, (_, h) in work.items()}
    assert len(set(held.values())) == 1, f"the held size must be the same at every checkpoint: {held}"
    for metric in ("aten_ops", "elements", "python_calls"):
        # Decisions may vary step to step (summaries, thresholds); what must not happen is growth.
        first = max(work[s][0][metric] for s in early)
        last = max(work[s][0][metric] for s in late)
        assert last <= first, f"{metric} per step grows with the history: {first} at ~20 chunks, {last} at ~125"
    # the bookkeeping tracks only what is still held, never the whole history
    assert len(cache.ledger.ids) <= cfg.budget_tokens // CHUNK
    assert cache.stats()["chunks_scored"] >= 120


def test_counter_sees_history_dependent_work():
    """The counter itself: a full cache's step over a longer history touches more elements."""
    model = tiny_model("llama", seed=3)
    cache = make_cache(CacheConfig(eviction="full", chunk_size=CHUNK, sink_tokens=4, budget_tokens=None), model.config)
    ids = torch.randint(0, 97, (1, 4 + 40 * CHUNK), generator=torch.Generator().manual_seed(5))
    work = step_work(model, cache, ids, checkpoints=[5, 30])
    assert work[30][0]["elements"] > work[5][0]["elements"]
    assert work[30][0]["aten_ops"] > 0 and work[30][0]["python_calls"] > 0
