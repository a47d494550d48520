"""The trained gate keeps what a later decision needs, where recency-based eviction drops it; the
end-to-end distillation target (attention bias from the gate's scores) is exact at its limits."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from cache_models import tiny_model
from kv_vla_ros.cache import CacheConfig, chunk_features, gate_input_dim, make_cache
from kv_vla_ros.sim import Episode
from kv_vla_ros.train.gate_data import EpisodeAttention, episode_attention
from kv_vla_ros.train.gate_distill import chunk_bias, distill_item, distill_loss, train_gate_distill
from kv_vla_ros.train.gate_train import train_gate
from kv_vla_ros.vla import VLAConfig, VLAModel

PREFIX, CHUNK, CHUNKS, MARK = 4, 4, 12, 5  # MARK: the token id that fills the one needed chunk


def marked_stream(rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """``[1, PREFIX + CHUNKS*CHUNK]`` ids: random chunks, one of them (early) all ``MARK``."""
    ids = rng.integers(10, 90, PREFIX + CHUNKS * CHUNK)
    marked = int(rng.integers(1, 6))
    ids[PREFIX + marked * CHUNK: PREFIX + (marked + 1) * CHUNK] = MARK
    return torch.as_tensor(ids).unsqueeze(0), marked


@torch.no_grad()
def training_item(model, rng) -> EpisodeAttention:
    """Features as the cache pools them; the last step's queries need only the marked chunk."""
    ids, marked = marked_stream(rng)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    feats = []
    for c in range(CHUNKS):
        sl = slice(PREFIX + c * CHUNK, PREFIX + (c + 1) * CHUNK)
        feats.append(chunk_features([(layer.keys[..., sl, :], layer.values[..., sl, :]) for layer in cache.layers]))
    mass = torch.full((1, 1, CHUNKS, CHUNKS), 0.01).tril(-1)
    mass[0, 0, -1, marked] = 1.0
    return EpisodeAttention(torch.stack(feats), mass, torch.zeros(1, CHUNKS), "synthetic", True)


@torch.no_grad()
def held_at_end(model, ids, config: CacheConfig, gate=None) -> list[int]:
    cache = make_cache(config, model.config, gate=gate)
    for start in range(0, ids.shape[1], CHUNK):
        model(input_ids=ids[:, start: start + CHUNK], past_key_values=cache, use_cache=True)
    st = cache.stats()
    return sorted(set(st["kept_chunks"]) | set(range(st["chunks_scored"], CHUNKS)))


def test_trained_gate_keeps_the_needed_chunk_where_window_drops_it():
    model = tiny_model("llama")
    rng = np.random.default_rng(0)
    items = [training_item(model, rng) for _ in range(40)]
    cfg = model.config
    in_dim = gate_input_dim(cfg.num_hidden_layers, cfg.hidden_size // cfg.num_attention_heads)
    gate, log = train_gate(items, recent_chunks=1, in_dim=in_dim, epochs=15, lr=3e-3, hidden=32, progress=False)
    assert log["val_loss"][-1] < log["val_loss"][0]
    budget = PREFIX + 2 * CHUNK  # the prefix, the open chunk and ONE old chunk
    base = CacheConfig(eviction="gated", chunk_size=CHUNK, recent_chunks=1, sink_tokens=PREFIX, budget_tokens=budget)
    kept_gate = kept_window = 0
    for _ in range(10):
        ids, marked = marked_stream(rng)
        kept_gate += marked in held_at_end(model, ids, base, gate)
        kept_window += marked in held_at_end(model, ids, base.replace(eviction="sink_window"))
    assert kept_gate >= 9 and kept_window == 0, (kept_gate, kept_window)


def tiny_vla() -> VLAModel:
    torch.manual_seed(0)
    tiny = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048}
    return VLAModel(VLAConfig(backbone=tiny, image_size=24, patch_size=8, vision_hidden=32, frame_tokens=2,
                              max_instruction_tokens=8)).eval()


def episode(seed: int, steps: int = 10) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode("MiniGrid-MemoryS7-v0", seed, "go to the red ball",
                   rng.integers(0, 256, (steps, 24, 24, 3), dtype=np.uint8), rng.integers(0, 7, steps), True)


def test_chunk_bias_of_zero_score_equals_dropping_the_chunk():
    """log(score) -> -inf on a chunk is the explicit mask without it, for the queries that judge it."""
    model = tiny_vla()
    n, recent, dropped = 8, 1, 2
    log_scores = torch.zeros(n)
    log_scores[dropped] = torch.finfo(torch.float32).min
    p, c = model.config.max_instruction_tokens, model.config.tokens_per_step
    total = p + n * c
    bias = chunk_bias(log_scores, p, c, recent, total)
    allowed = torch.ones(total, total).tril().bool()
    allowed[p + (dropped + recent) * c:, p + dropped * c: p + (dropped + 1) * c] = False
    assert torch.equal(bias > torch.finfo(torch.float32).min / 2, allowed)
    assert (bias[allowed] == 0).all()


def test_distillation_is_exact_at_full_scores_and_lowers_its_loss():
    model = tiny_vla()
    items = []
    for seed in range(6):
        ep = episode(seed)
        items.append(distill_item(model, ep, episode_attention(model, ep).features))

    class Keep(torch.nn.Module):  # every chunk scored 1: the biased forward is the full one
        def logits(self, features, state=None):
            return torch.full(features.shape[:2], 60.0), None

    model.backbone.set_attn_implementation("eager")
    _, kl, _ = distill_loss(model, Keep(), items[0], recent_chunks=1, budget_weight=0.0)
    assert kl < 1e-6
    model.backbone.set_attn_implementation("sdpa")
    in_dim = items[0].features.shape[-1]
    gate, log = train_gate_distill(model, items, recent_chunks=1, in_dim=in_dim, epochs=6, lr=1e-2, hidden=16,
                                   budget_weight=0.5, progress=False)
    assert log["val_loss"][-1] < log["val_loss"][0]
    assert model.backbone.config._attn_implementation == "sdpa"  # restored
    assert all(p.requires_grad for p in model.parameters())  # the VLA is left as it was
