"""Bags -> training episodes (exact frames, states, actions, boundaries; sqlite3 and mcap, raw and
compressed, one and two cameras), one-line refusals of bad bags while the others train, and
``kv-vla train --bags`` lowering a tiny π0's loss, with its log, curves and --resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pi0_bags import INSTRUCTION, write_memory_bag

from kv_vla_ros.data.episodes import BagTopics
from kv_vla_ros.train.bag_episodes import read_bags

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("storage,cameras,compressed", [("sqlite3", 1, False), ("mcap", 2, True)])
def test_bag_episodes_are_exact(tmp_path, storage, cameras, compressed):
    cues = [0, 1, 1]
    written = write_memory_bag(tmp_path / "b", cues, steps=6, storage=storage, cameras=cameras, compressed=compressed)
    topics = BagTopics(image=written["topics"][0], extra_images=tuple(written["topics"][1:]), state="/joint_states")
    data = read_bags([tmp_path / "b"], topics, progress=False)
    assert len(data.episodes) == len(cues) and not data.refused  # one episode per instruction message
    for ep, frames, states, actions in zip(data.episodes, written["frames"], written["states"], written["actions"]):
        assert ep.instruction == INSTRUCTION and ep.frames.shape == (6, cameras, 32, 32, 3)
        assert np.array_equal(ep.frames, np.asarray(frames))
        np.testing.assert_array_equal(ep.states, states)
        np.testing.assert_array_equal(ep.actions, actions)


def test_control_rate_resamples_by_header_stamp(tmp_path):
    write_memory_bag(tmp_path / "b", [0], steps=8)
    topics = BagTopics(image="/camera0/image", state="/joint_states")
    data = read_bags([tmp_path / "b"], topics, control_rate_hz=5.0, progress=False)  # the camera runs at 10 Hz
    ep = data.episodes[0]
    assert len(ep) == 4 and data.counters["frames_between_control_steps"] == 4
    np.testing.assert_array_equal(ep.states[:, 0], np.array([0, 2, 4, 6]) / 8)


def _bad_bags(root: Path) -> dict[str, Path]:
    bags = {"good": root / "good", "nostate": root / "nostate", "truncated": root / "truncated"}
    write_memory_bag(bags["good"], [0, 1], steps=6)
    write_memory_bag(bags["nostate"], [0], steps=6, with_state=False)
    write_memory_bag(bags["truncated"], [0, 1], steps=6, storage="mcap")
    mcap = next(bags["truncated"].glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    return bags


def test_bad_bags_are_refused_in_one_line_and_the_others_load(tmp_path):
    bags = _bad_bags(tmp_path)
    lines = []
    data = read_bags(list(bags.values()), BagTopics(image="/camera0/image", state="/joint_states"), progress=False,
                     log=lines.append)
    assert len(data.episodes) == 2 and len(lines) == 2
    assert all("\n" not in line for line in lines)
    assert f"bag {bags['nostate']}: no state topic '/joint_states'" in lines[0]
    assert str(bags["truncated"]) in lines[1] and ("corrupt" in lines[1] or "truncated" in lines[1])
    with pytest.raises(ValueError, match="--bags: no usable bag among 1"):
        read_bags([bags["nostate"]], BagTopics(image="/camera0/image", state="/joint_states"), progress=False,
                  log=lines.append)


def _train(bags, out, *extra):
    cmd = [sys.executable, "-m", "kv_vla_ros.cli", "train", "--bags", *map(str, bags), "--out", str(out),
           "--image-topic", "/camera0/image", "--state-topic", "/joint_states", "--threads", "1",
           "--no-progress", "--chunk-size", "4", "--actions-per-inference", "2", "--episodes-per-step", "2",
           "--evict-from", "0", "--lr", "3e-3", "--pi0-model",
           json.dumps({"text": {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64},
                       "vision": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}}), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_train_from_bags_lowers_the_loss_logs_and_resumes(tmp_path):
    bags = _bad_bags(tmp_path / "bags")
    out = tmp_path / "pi0"
    proc = _train(bags.values(), out, "--max-steps", "80", "--minutes", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("refused: ")]
    assert len(refusals) == 2 and "/joint_states" in refusals[0]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 80 and (out / "train_curves.png").stat().st_size > 0
    first, last = rows[0]["probe_loss"], rows[-1]["probe_loss"]  # same noise and times: no sampling noise
    assert last < 0.7 * first, (first, last)
    from kv_vla_ros.vla import VLASession, load_policy

    policy = load_policy(out)  # a π0 checkpoint the session and the node load
    assert policy.state_dim == 2 and policy.action_dim == 2 and policy.default_actions_per_inference == 2
    assert policy.state_names == ["joint_0", "joint_1"]  # recorded at training: later reads go by name
    assert policy.control_rate_hz == pytest.approx(10.0)  # the bags' frame rate (one step per frame)
    session = VLASession(policy)
    session.reset(INSTRUCTION)
    assert np.isfinite(session.step_action_chunk(np.zeros((32, 32, 3), np.uint8), np.zeros(2))).all()
    proc = _train([bags["good"]], out, "--max-steps", "90", "--minutes", "5", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows].count(80) == 1 and rows[-1]["step"] == 90  # continued, not restarted
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()


def test_init_from_a_pi0_checkpoint_fine_tunes_it(tmp_path):
    """--init-from: the checkpoint's weights are the start (frames resized to its processor's size), the
    bags' statistics replace its processor's, and the result loads as a π0 policy."""
    from kv_vla_ros.vla import load_policy
    from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

    base = write_pi0_checkpoint(tmp_path / "base", num_cameras=1, state_dim=2, action_dim=2)  # 32 px, 8 px patches
    policy_file = base / "kv_vla_policy.json"  # the base recorded its joints in the other order: read by name
    policy_file.write_text(json.dumps({**json.loads(policy_file.read_text()), "state_names": ["joint_1", "joint_0"]}))
    write_memory_bag(tmp_path / "bag", [0, 1], steps=6, side=48)  # another frame size than the checkpoint's
    out = tmp_path / "tuned"
    proc = _train([tmp_path / "bag"], out, "--init-from", str(base), "--max-steps", "3", "--minutes", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = load_policy(base), load_policy(out)
    assert after.image_seq_length == before.image_seq_length == 16
    changed = [not torch.equal(a, b) for a, b in zip(before.model.state_dict().values(),
                                                      after.model.state_dict().values())]
    assert any(changed)
    assert after.processor.actions_mean != before.processor.actions_mean
    np.testing.assert_allclose(after.processor.state_mean, [0.5, 0.4167], atol=1e-3)  # joint_1, joint_0 by name
    assert after.state_names == ["joint_1", "joint_0"]
