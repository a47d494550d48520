"""kv-vla bag eval and kv-vla eval with π0 (tiny random checkpoints): a rosbag2 file (real, written
with rosbags) with two camera topics, a JointState topic and recorded actions replayed through
``kv-vla bag eval``; the closed-loop evaluator loading π0 through the policy interface; the action
queue that executes π0's chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kv_vla_ros.data.bagio import AtomicBagWriter
from kv_vla_ros.data.messages import FLOAT32_ARRAY, IMAGE, JOINT_STATE, STRING, make_action, make_image, \
    make_joint_state, make_string
from kv_vla_ros.cli import main
from kv_vla_ros.vla.action_queue import ActionQueue
from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

PERIOD = 100_000_000  # 10 Hz


def write_two_camera_bag(path, storage: str, episodes: int = 2, steps: int = 5) -> None:
    rng = np.random.default_rng(0)
    t = 1_700_000_000_000_000_000
    with AtomicBagWriter(path, storage) as bag:
        ts = bag.typestore
        for e in range(episodes):
            bag.write("/instruction", t, make_string(ts, "pick up the red cube" if e % 2 == 0 else "open the drawer"),
                      STRING)
            t += PERIOD
            for _ in range(steps):
                bag.write("/wrist/image", t - 5_000_000, make_image(ts, rng.integers(0, 256, (24, 32, 3), np.uint8),
                                                                    t - 5_000_000, "wrist"), IMAGE)
                bag.write("/joint_states", t - 2_000_000, make_joint_state(ts, rng.normal(size=3), t), JOINT_STATE)
                bag.write("/front/image", t, make_image(ts, rng.integers(0, 256, (30, 40, 3), np.uint8), t), IMAGE)
                bag.write("/action", t + 3_000_000, make_action(ts, rng.normal(size=2), source_stamp_ns=t),
                          FLOAT32_ARRAY)
                t += PERIOD


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_eval_with_two_cameras_and_state_through_pi0(tmp_path, storage, capsys):
    ckpt = write_pi0_checkpoint(tmp_path / "pi0", num_cameras=2, state_dim=3, action_dim=2)
    bag = tmp_path / f"bag_{storage}"
    write_two_camera_bag(bag, storage)
    out = tmp_path / "out"
    rc = main(["bag", "eval", str(bag), "--model", str(ckpt), "--image-topic", "/front/image", "--image-topic",
               "/wrist/image", "--state-topic", "/joint_states", "--cache", "full", "--cache",
               "sink_window:budget_tokens=112", "--flops-every", "3", "--out", str(out), "--no-progress",
               "--workers", "1", "--actions-per-inference", "1"])  # an inference on every frame: 5 blocks
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "bag_eval.json").read_text())
    meta, rows = result["meta"], result["results"]
    assert meta["policy_type"] == "pi0" and meta["episodes"] == 2 and meta["steps"] == 10
    assert meta["extra_image_topics"] == ["/wrist/image"] and meta["state_topic"] == "/joint_states"
    full, window = rows
    assert full["agreement_recorded"]["n"] == 10 and np.isfinite(full["agreement_recorded"]["l1"])
    assert full["agreement_full"]["l1"] == 0.0  # the reference against itself
    # 2 cameras x 16 tokens per step: the window holds fewer tokens than the full cache by the end
    assert window["peak_tokens_held"] <= 112 < full["peak_tokens_held"]
    assert full["flops_per_step"] > 0


def test_bag_eval_names_a_missing_state_topic(tmp_path, capsys):
    ckpt = write_pi0_checkpoint(tmp_path / "pi0", num_cameras=2, state_dim=3, action_dim=2)
    bag = tmp_path / "bag"
    write_two_camera_bag(bag, "sqlite3", episodes=1, steps=2)
    rc = main(["bag", "eval", str(bag), "--model", str(ckpt), "--image-topic", "/front/image", "--image-topic",
               "/wrist/image", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "state topic: the policy takes a robot state of dimension 3" in capsys.readouterr().err
    rc = main(["bag", "eval", str(bag), "--model", str(ckpt), "--image-topic", "/front/image", "--state-topic",
               "/joint_states", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "image topics: 1 given, the policy takes 2 camera(s)" in capsys.readouterr().err


def test_action_queue_executes_chunks_and_applies_actions_per_inference_live():
    q = ActionQueue(actions_per_inference=3)
    chunk = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert q.needs_inference
    q.push(chunk, source=7)
    got = [q.pop() for _ in range(4)]
    assert [g.tolist() for g in got[:3]] == chunk[:3].tolist() and got[3] is None and q.needs_inference
    q.push(chunk)
    q.set_actions_per_inference(1)  # live: trims the current chunk too
    assert len(q) == 1 and q.pop().tolist() == [0.0, 1.0] and q.needs_inference
    q.push(chunk)
    q.clear()
    assert q.needs_inference and q.chunks == 0
    with pytest.raises(ValueError, match="actions_per_inference"):
        q.set_actions_per_inference(0)
    with pytest.raises(ValueError, match="chunk"):
        q.push(np.zeros((0, 2)))


def test_closed_loop_eval_loads_pi0_through_the_interface_and_names_the_action_mismatch(tmp_path, capsys):
    ckpt = write_pi0_checkpoint(tmp_path / "pi0", num_cameras=1, action_dim=1)
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(ckpt), "--tasks", "MiniGrid-MemoryS7-v0", "--episodes", "1", "--out", str(out),
               "--no-progress", "--workers", "1"])
    assert rc == 0
    row = json.loads((out / "results.json").read_text())["results"][0]
    assert "MiniGrid tasks take discrete actions; this pi0 checkpoint has continuous ones" in row["error"]
