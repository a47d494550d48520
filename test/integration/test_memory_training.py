"""Issue: a policy that uses its memory. Pooled frame tokens, privileged auxiliary targets and the
Memory diagnostics (cue visibility, the decision at the junction), on real MiniGrid episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from kv_vla_ros.sim import SimRobot, load_episodes, save_episodes
from kv_vla_ros.sim.minigrid.memory import MemoryEpisodeProbe, aux_targets, cue_class
from kv_vla_ros.train import TrainConfig, train
from kv_vla_ros.train.aux import AUX_HEADS_FILE, AuxHeads
from kv_vla_ros.train.data import EpisodeSampler, demonstrations, expert_for
from kv_vla_ros.vla import VLAConfig, VLAModel, VLASession

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048}


def pooled_model(frame_tokens: int = 4, seed: int = 0) -> VLAModel:
    torch.manual_seed(seed)
    cfg = VLAConfig(backbone=dict(TINY), image_size=24, patch_size=8, vision_hidden=32, frame_tokens=frame_tokens,
                    max_instruction_tokens=8, vision_frame_context=True)
    return VLAModel(cfg).eval()


def test_session_with_pooled_frame_tokens_equals_teacher_forced_forward():
    model = pooled_model(frame_tokens=2)
    assert model.config.tokens_per_frame == 2 and model.config.tokens_per_step == 3
    frames = np.random.default_rng(0).integers(0, 256, (15, 24, 24, 3), dtype=np.uint8)
    session = VLASession(model)
    session.reset("go to the red ball")
    actions, logits = [], []
    for f in frames:
        actions.append(int(session.step(f)[0]))
        logits.append(session.last_logits.clone())
    ref = model.episode_action_logits("go to the red ball", frames, np.asarray(actions))
    assert torch.allclose(torch.stack(logits), ref, atol=1e-5), (torch.stack(logits) - ref).abs().max()
    assert session.stats()["tokens_seen"] == 8 + 15 * 3 - 1


@pytest.mark.parametrize("bad", [0, 10, True, 2.0])
def test_frame_tokens_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match="frame_tokens"):
        VLAConfig(backbone=dict(TINY), image_size=24, patch_size=8, frame_tokens=bad)  # 9 patches


def test_checkpoint_without_frame_tokens_still_loads(tmp_path):
    """Checkpoints written before the field existed (every patch a token) load unchanged."""
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(backbone=dict(TINY), image_size=24, patch_size=8, vision_hidden=32,
                               max_instruction_tokens=8)).eval()
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["frame_tokens"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = VLAModel.from_pretrained(tmp_path)
    assert loaded.config.frame_tokens is None and loaded.config.tokens_per_frame == 9
    x = torch.zeros(1, 3, 24, 24)
    assert torch.equal(model.vision(x), loaded.vision(x))


def test_memory_probe_sees_the_cue_and_the_expert_decides_right():
    robot = SimRobot("MiniGrid-MemoryS37")
    expert = expert_for(robot)
    for seed in (0, 1, 2):
        robot.reset(seed)
        probe = MemoryEpisodeProbe(robot)
        t = 0
        while not robot.done:
            probe.observe(t)
            robot.step(expert.act())
            probe.after_step()
            t += 1
        assert robot.success and probe.decision_correct is True
        assert probe.cue_steps and probe.decision_step - max(probe.cue_steps) >= 30  # the long variant's promise
    robot.close()


def test_memory_probe_scores_a_wrong_turn_as_a_wrong_decision():
    robot = SimRobot("MiniGrid-MemoryS7")
    robot.reset(3)
    env = robot.env
    probe = MemoryEpisodeProbe(robot)
    probe.observe(0)
    # teleport to the junction facing the failure side, then step into it
    fx, fy = env.failure_pos
    env.agent_pos = np.array((fx, env.height // 2))
    env.agent_dir = 3 if fy < env.height // 2 else 1
    robot.step(2)
    probe.after_step()
    assert probe.decision_step == 0 and probe.decision_correct is False and not robot.success


def test_demonstrations_carry_cue_labels_that_survive_save_and_load(tmp_path):
    eps = demonstrations("MiniGrid-MemoryS7-v0", 4, scan_turns=4)
    robot = SimRobot("MiniGrid-MemoryS7")
    for ep in eps:
        labels = ep.aux["cue"]
        robot.reset(ep.seed)
        assert labels.shape == ep.actions.shape
        seen = labels >= 0
        assert seen.any() and not seen[: np.argmax(seen)].any() and seen[np.argmax(seen):].all()  # from first sight on
        assert set(labels[seen]) == {cue_class(robot.env)}
        view = ep.aux["cue_view"]  # every step: 0 = no cue in view, 1 + type = in view
        assert (view >= 0).all() and set(view[view > 0]) == {1 + cue_class(robot.env)}
        assert np.argmax(view > 0) == np.argmax(seen)  # the first sighting starts the recall labels
    save_episodes(tmp_path / "d.npz", eps + demonstrations("BabyAI-GoToObj-v0", 2))
    again = load_episodes(tmp_path / "d.npz")
    assert all(np.array_equal(a.aux["cue"], b.aux["cue"]) for a, b in zip(eps, again))
    assert (again[-1].aux["cue"] == -1).all()  # a task without the target: no label anywhere


def test_demonstrations_saved_before_a_target_existed_are_relabelled_by_replay(tmp_path):
    eps = demonstrations("MiniGrid-MemoryS7-v0", 3, scan_turns=4, cache_dir=tmp_path)
    path = next(tmp_path.glob("*.npz"))
    stripped = [ep for ep in eps]
    for ep in stripped:
        ep.aux = {"cue": ep.aux["cue"]}  # as written before "cue_view" existed
    save_episodes(path, stripped)
    again = demonstrations("MiniGrid-MemoryS7-v0", 3, scan_turns=4, cache_dir=tmp_path)
    fresh = demonstrations("MiniGrid-MemoryS7-v0", 3, scan_turns=4)
    assert all(np.array_equal(a.aux["cue_view"], b.aux["cue_view"]) for a, b in zip(again, fresh))
    assert "cue_view" in load_episodes(path)[0].aux  # saved back


def test_training_on_a_memory_task_without_its_labels_is_refused():
    eps = demonstrations("MiniGrid-MemoryS7-v0", 2, scan_turns=4)
    for ep in eps:
        ep.aux = {}
    model = pooled_model()
    with pytest.raises(ValueError, match=r"aux\['cue'\]"):
        EpisodeSampler(model, eps, batch_tokens=2000, aux=aux_targets("MiniGrid-MemoryS7"))


def test_negative_aux_weight_is_refused():
    with pytest.raises(ValueError, match="aux_weight"):
        TrainConfig(aux_weight=-0.5).validate()


def test_aux_loss_lowers_and_heads_stay_out_of_the_saved_policy(tmp_path):
    cfg = TrainConfig(tasks={"MiniGrid-MemoryS7-v0": 12}, backbone=dict(TINY),
                      vla={"vision_hidden": 32, "frame_tokens": 2, "max_instruction_tokens": 16},
                      lr=1e-2, warmup_steps=2, batch_tokens=3000, max_steps=60, minutes=3.0, dagger_at=[],
                      data_dir=str(tmp_path / "data"), scan_turns=4, aux_weight=1.0)
    out = tmp_path / "run"
    train(cfg, out, progress_bar=False)
    summary = json.loads((out / "train_summary.json").read_text())
    first = summary["first_aux_loss"]
    assert summary["aux"]["loss"] < 0.8 * first, summary  # the cue is read from the frames that show it
    assert not (out / AUX_HEADS_FILE).exists() and (out / "checkpoint" / AUX_HEADS_FILE).is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not any("head" in n and "lm_head" not in n for n in names)
    assert VLAModel.from_pretrained(out).config.frame_tokens == 2


def test_aux_heads_ignore_unlabelled_steps():
    heads = AuxHeads({"cue": 2}, hidden_size=4)
    hidden = torch.randn(2, 3, 4)
    labels = {"cue": torch.tensor([[-1, -1, -1], [-1, -1, -1]])}
    loss, stats = heads.loss(hidden, labels)
    assert loss.item() == 0.0 and stats == {"cue": (0, 0)}
    labels = {"cue": torch.tensor([[-1, 1, 0], [-1, -1, 1]])}
    loss, stats = heads.loss(hidden, labels)
    assert loss.item() > 0 and stats["cue"][1] == 3
