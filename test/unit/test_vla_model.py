"""VLA model + streaming session: exactness against a no-cache forward, checkpoints, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kv_vla_ros.cache.config import CacheConfig
from kv_vla_ros.vla import ActionSpaceConfig, VLAConfig, VLAModel, VLASession

TINY = {
    "llama": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048},
    "mistral": {"model_type": "mistral", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048,
                "sliding_window": None},
    "gemma": {"model_type": "gemma", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 64, "max_position_embeddings": 2048},
}


def tiny_model(arch: str = "llama", action: ActionSpaceConfig | None = None, seed: int = 0) -> VLAModel:
    torch.manual_seed(seed)
    cfg = VLAConfig(backbone=dict(TINY[arch]), image_size=24, patch_size=8, vision_hidden=32,
                    max_instruction_tokens=8, action=action or ActionSpaceConfig(),
                    vision_frame_context=arch in ("llama", "gemma"))
    return VLAModel(cfg).eval()


def frames(n: int, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def run_session(model, instruction, frs, cache_config=None):
    session = VLASession(model, cache_config)
    session.reset(instruction)
    actions, logits = [], []
    for f in frs:
        actions.append(session.step(f))
        logits.append(session.last_logits.clone())
    return session, np.stack(actions), torch.stack(logits)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma"])
def test_full_session_matches_no_cache_forward(arch):
    model = tiny_model(arch)
    frs = frames(12)
    session, actions, logits = run_session(model, "go to the red ball", frs)
    ref = model.episode_action_logits("go to the red ball", frs, actions[:, 0])
    assert torch.allclose(logits, ref, atol=1e-5), (logits - ref).abs().max()
    assert np.array_equal(actions[:, 0], ref[:, 0].argmax(-1).numpy())
    st = session.stats()
    assert st["tokens_seen"] == 8 + 12 * 10 - 1  # the last action token is not fed yet
    assert st["tokens_held"] == st["tokens_seen"] and st["bytes_held"] > 0
    assert set(st["latency_ms"]) >= {"encode", "forward", "decode"}


def test_continuous_actions_decode_autoregressively():
    action = ActionSpaceConfig(kind="continuous", dim=3, bins=16, q01=[-1.0, 0.0, -2.0], q99=[1.0, 1.0, 2.0],
                               names=["vx", "vy", "wz"])
    model = tiny_model("llama", action)
    frs = frames(5)
    _, actions, logits = run_session(model, "go to the key", frs)
    assert actions.shape == (5, 3) and actions.dtype == np.float32
    assert np.all(actions >= np.array(action.q01)) and np.all(actions <= np.array(action.q99))
    ref = model.episode_action_logits("go to the key", frs, actions)
    assert torch.allclose(logits, ref, atol=1e-5)
    tok = model.action_tokenizer
    assert np.array_equal(tok.encode(actions), logits.argmax(-1).numpy())


def test_save_load_round_trip_same_actions(tmp_path):
    model = tiny_model("qwen2")
    frs = frames(6, size=40)  # any frame size: resized to image_size
    _, a1, l1 = run_session(model, "go to the matching object at the end of the hallway", frs)
    model.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded = VLAModel.from_pretrained(tmp_path / "ck")
    _, a2, l2 = run_session(loaded, "go to the matching object at the end of the hallway", frs)
    assert np.array_equal(a1, a2) and torch.equal(l1, l2)


def test_gemma_tied_embeddings_round_trip(tmp_path):
    model = tiny_model("gemma")
    model.save_pretrained(tmp_path)
    loaded = VLAModel.from_pretrained(tmp_path)
    for (n, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), n


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        VLAModel.from_pretrained(tmp_path / "nope")
    model = tiny_model()
    ck = model.save_pretrained(tmp_path / "ck")
    (ck / "tokenizer.json").rename(tmp_path / "tok.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        VLAModel.from_pretrained(ck)
    (tmp_path / "tok.json").rename(ck / "tokenizer.json")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        VLAModel.from_pretrained(ck)
    model.save_pretrained(ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["backbone"]["hidden_size"] = 48
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match config.json"):
        VLAModel.from_pretrained(ck)
    cfg["no_such_field"] = 1
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no_such_field"):
        VLAModel.from_pretrained(ck)


@pytest.mark.parametrize("image, match", [
    (np.zeros((24, 24, 4), np.uint8), "3 channels"),
    (np.zeros((2, 24, 24, 3), np.uint8), "ndim=4"),
    (np.zeros((0, 24, 3), np.uint8), "empty"),
    (np.full((24, 24, 3), np.nan, np.float32), "NaN"),
    (np.full((24, 24, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((24, 24, 3), np.int32), "dtype"),
    ([[0, 1]], "numpy array"),
])
def test_bad_images_raise_naming_image(image, match):
    session = VLASession(tiny_model())
    session.reset("go to the ball")
    with pytest.raises(ValueError, match="image") as info:
        session.step(image)
    assert info.match(match)


def test_accepted_image_formats():
    session = VLASession(tiny_model())
    session.reset("go to the ball")
    for img in (np.zeros((30, 20), np.uint8), np.zeros((24, 24, 1), np.uint8),
                np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)):
        a = session.step(img)
        assert a.shape == (1,) and a.dtype == np.int64 and 0 <= a[0] < 7


@pytest.mark.parametrize("instruction", ["", "   ", None])
def test_empty_instruction_rejected(instruction):
    session = VLASession(tiny_model())
    with pytest.raises(ValueError, match="instruction"):
        session.reset(instruction)


def test_reset_starts_a_fresh_episode():
    model = tiny_model()
    frs = frames(4)
    session, a1, l1 = run_session(model, "go to the red key", frs)
    session.reset("go to the red key")
    l2 = []
    for f in frs:
        session.step(f)
        l2.append(session.last_logits)
    assert torch.allclose(l1, torch.stack(l2), atol=1e-6)
    assert session.stats()["tokens_seen"] == 8 + 4 * 10 - 1


def test_bounded_cache_policy_holds_at_most_budget():
    model = tiny_model()
    cc = model.config.cache.replace(eviction="sink_window", budget_tokens=8 + 3 * 10, recent_chunks=3)
    session, actions, _ = run_session(model, "go to the box", frames(15), cc)
    st = session.stats()
    assert st["tokens_seen"] > st["tokens_held"] and st["tokens_held"] <= 38
    with pytest.raises(ValueError, match="chunk_size"):
        VLASession(model, cc.replace(chunk_size=7))


def test_set_cache_config_keeps_history():
    model = tiny_model()
    session = VLASession(model)
    session.reset("go to the box")
    for f in frames(6):
        session.step(f)
    seen = session.stats()["tokens_seen"]
    session.set_cache_config(model.config.cache.replace(eviction="sink_window", budget_tokens=38, recent_chunks=3))
    st = session.stats()
    assert st["tokens_seen"] == seen and st["tokens_held"] <= 38 and session.cache_config.eviction == "sink_window"
    session.step(frames(1)[0])
    assert session.stats()["tokens_seen"] == seen + 10
    with pytest.raises(ValueError, match="chunk_size"):
        session.set_cache_config(model.config.cache.replace(chunk_size=7))
    assert session.cache_config.eviction == "sink_window"


def test_text_tokenizer_pads_and_truncates():
    model = tiny_model()
    tok = model.text_tokenizer
    ids = tok.encode("Go to the RED ball")
    assert ids.shape == (8,) and ids[0] == tok.bos_id and ids[-1] == tok.pad_id and tok.unk_id not in ids
    long = tok.encode(" ".join(["ball"] * 40))
    assert long.shape == (8,) and tok.pad_id not in long
    assert tok.unk_id in tok.encode("fly to the moon")


def test_config_validation_names_fields():
    with pytest.raises(ValueError, match="patch_size"):
        VLAConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="action.q01"):
        ActionSpaceConfig(kind="continuous", dim=2)
    with pytest.raises(ValueError, match="cache.sink_tokens"):
        VLAConfig(cache=CacheConfig(eviction="full", chunk_size=50, sink_tokens=16, budget_tokens=None))
    with pytest.raises(ValueError, match="backbone.model_type"):
        VLAModel(VLAConfig(backbone={"model_type": "not-a-model"}))


def test_shipped_default_model_loads_and_acts():
    from kv_vla_ros.vla import DEFAULT_MODEL_PATH

    if not (DEFAULT_MODEL_PATH / "model.safetensors").is_file():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL_PATH}")
    model = VLAModel.from_pretrained(DEFAULT_MODEL_PATH)
    cfg = model.config
    assert cfg.tokens_per_step == cfg.cache.chunk_size and cfg.cache.sink_tokens == cfg.max_instruction_tokens
    assert cfg.cache.eviction != "full" and cfg.cache.budget_tokens is not None  # bounded unless asked otherwise
    session = VLASession(model)
    session.reset("go to the matching object at the end of the hallway")
    a = session.step(np.zeros((56, 56, 3), np.uint8))
    assert a.shape == (1,) and 0 <= a[0] < cfg.action.num_actions
