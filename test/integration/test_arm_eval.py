"""`kv-vla eval` on the arm tasks: a tiny random π0 that fits the arm (one camera, 9 joint positions, 4
actions; pi0_models.arm_pi0_checkpoint) drives the real PyBullet arm in closed loop under every
eviction, in process and on Ray workers, with the task's success, decision accuracy and cue-held
columns; and a checkpoint that does not fit the arm is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pi0_models import arm_pi0_checkpoint

from kv_vla_ros.cli import main
from kv_vla_ros.sim.arm.task import INSTRUCTION
from kv_vla_ros.vla import VLASession, load_policy
from kv_vla_ros.vla.pi0 import write_pi0_checkpoint

TASK = "Arm-CueCarryShort-v0"
# Every eviction strategy at a budget that keeps only the newest frames of a 30-step episode
# (prompt + 16 tokens per inference): the cue frames are dropped by the end.
SPECS = ["full", "window:budget_tokens=80", "sink_window:budget_tokens=80", "h2o:budget_tokens=80",
         "key_norm:budget_tokens=80", "random:budget_tokens=80", "gated:budget_tokens=80,gate=untrained"]


@pytest.fixture(scope="module")
def arm_ckpt(tmp_path_factory):
    return arm_pi0_checkpoint(tmp_path_factory.mktemp("arm") / "pi0")


def eval_rows(ckpt, out, *extra) -> list[dict]:
    args = ["eval", "--model", str(ckpt), "--tasks", TASK, "--episodes", "3", "--max-steps", "30", "--out",
            str(out), "--no-progress", *extra]
    for spec in SPECS:
        args += ["--cache", spec]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())["results"]


def test_every_eviction_runs_the_arm_closed_loop_with_memory_columns(arm_ckpt, tmp_path):
    rows = eval_rows(arm_ckpt, tmp_path / "eval", "--workers", "1")
    assert [r["policy"] for r in rows] == SPECS and all("error" not in r for r in rows)
    for row in rows:
        assert row["episodes"] == 3 and row["mean_length"] == 30 and row["success_rate"] == 0.0  # never placed
        # the drift takes the hand out of the lane's band at its end: every episode decides
        made = row["per_episode"]["decision_correct"]
        assert row["decisions"] == 3 and row["decision_accuracy"] == sum(made) / 3, row
    full, *evicting = rows
    assert full["cue_held_at_decision"] == 1.0 and full["peak_tokens_held"] > 80
    for row in evicting:  # others may keep a cue chunk; the windows keep only the newest frames
        held = row["per_episode"]["cue_held_at_decision"]
        assert row["peak_tokens_held"] <= 80 and row["cue_held_at_decision"] == sum(held) / 3, row["policy"]
        if row["policy"].startswith(("window", "sink_window")):
            assert row["cue_held_at_decision"] == 0.0
    # one π0 chunk of 4 actions, 2 executed per inference: 15 inferences of one step's tokens each,
    # every one of them held by the full cache at the end
    session = VLASession(load_policy(arm_ckpt))
    session.reset(INSTRUCTION)  # the task's: the prompt is part of every step
    session.step_action_chunk([np.zeros((64, 64, 3), np.uint8)], np.zeros(9, np.float32))
    step_tokens = session.stats()["tokens_seen"]  # the images and the prompt of one step
    assert full["per_episode"]["length"] == [30] * 3
    assert full["per_episode"]["tokens_seen"] == [15 * step_tokens] * 3 and full["peak_tokens_held"] == 15 * step_tokens
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "decision acc" in table and "cue held" in table


def test_ray_workers_give_the_in_process_rows(arm_ckpt, tmp_path):
    local = eval_rows(arm_ckpt, tmp_path / "one", "--workers", "1")
    ray = eval_rows(arm_ckpt, tmp_path / "two", "--workers", "2")
    keys = ("success_rate", "decision_accuracy", "cue_held_at_decision", "mean_tokens_held", "per_episode")
    for a, b in zip(local, ray):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, a["policy"]


def test_a_checkpoint_that_does_not_fit_the_arm_is_named(tmp_path):
    ckpt = write_pi0_checkpoint(tmp_path / "pi0", num_cameras=1, state_dim=3, action_dim=2)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(ckpt), "--tasks", TASK, "--episodes", "1", "--out", str(out),
                 "--no-progress", "--workers", "1"]) == 0
    error = json.loads((out / "results.json").read_text())["results"][0]["error"]
    assert error == (f"model: {TASK} takes 4-dimensional continuous actions (dx, dy, dz, gripper); this pi0 "
                     "checkpoint has 2-dimensional actions")


def test_bag_eval_replays_an_arm_bag_with_its_joint_states(arm_ckpt, tmp_path):
    from kv_vla_ros.data.generate import generate_bag

    bag = tmp_path / "arm"
    generate_bag(bag, TASK, 2, max_steps=8, storage="mcap", split="train", start_time_ns=10**18)
    out = tmp_path / "bag_eval"
    assert main(["bag", "eval", str(bag), "--model", str(arm_ckpt), "--state-topic", "/joint_states", "--cache",
                 "full", "--cache", "window:budget_tokens=80", "--out", str(out), "--no-progress", "--workers", "1",
                 "--flops-every", "0"]) == 0
    result = json.loads((out / "bag_eval.json").read_text())
    assert result["meta"]["episodes"] == 2 and result["meta"]["steps"] == 16
    assert result["meta"]["state_topic"] == "/joint_states"
    full, window = result["results"]
    assert full["agreement_recorded"]["n"] == 16 and window["peak_tokens_held"] <= 80 < full["peak_tokens_held"]


def test_bag_eval_infers_on_the_checkpoints_schedule(arm_ckpt, tmp_path, capsys):
    """One inference per actions_per_inference recorded frames (the checkpoint's 2 by default, as the
    node and the closed loop run it): half the blocks of inferring on every frame, and every frame's
    action is the next row of the chunk being executed."""
    from kv_vla_ros.data.generate import generate_bag

    bag = tmp_path / "arm"
    generate_bag(bag, TASK, 1, max_steps=8, storage="sqlite3", split="train", start_time_ns=10**18)
    seen = {}
    for per_inference in (None, "1"):
        out = tmp_path / f"every_{per_inference}"
        extra = ["--actions-per-inference", per_inference] if per_inference else []
        assert main(["bag", "eval", str(bag), "--model", str(arm_ckpt), "--state-topic", "/joint_states", "--out",
                     str(out), "--no-progress", "--workers", "1", "--flops-every", "1", *extra]) == 0
        result = json.loads((out / "bag_eval.json").read_text())
        full = result["results"][0]
        seen[per_inference] = (result["meta"]["actions_per_inference"], full["mean_tokens_seen"], full["flops_steps"],
                               full["agreement_recorded"]["n"])
    (k2, tokens2, flops2, n2), (k1, tokens1, flops1, n1) = seen[None], seen["1"]
    assert (k2, k1) == (2, 1) and (n2, n1) == (8, 8)  # every recorded frame still gets its action compared
    assert tokens1 == 2 * tokens2 and (flops2, flops1) == (4, 8)  # 4 inferences instead of 8
    assert main(["bag", "eval", str(bag), "--model", str(arm_ckpt), "--state-topic", "/joint_states", "--out",
                 str(tmp_path / "bad"), "--actions-per-inference", "0"]) == 1
    assert "--actions-per-inference: must be >= 1, got 0" in capsys.readouterr().err


def test_budget_sweep_runs_cells_down_to_the_floor_and_merges_seed_counts(arm_ckpt, tmp_path):
    """`kv-vla bench budget-sweep`: the floor holds the recent window + one old step (measured step
    tokens), the no-history row holds one step, a later run's cells merge beside the earlier ones
    with their own seed counts, and a merge onto another task is refused by name."""
    out = tmp_path / "sweep"
    common = ["bench", "budget-sweep", "--model", str(arm_ckpt), "--task", TASK, "--max-steps", "20",
              "--workers", "1", "--out", str(out), "--no-progress"]
    assert main([*common, "--episodes", "2", "--cells", "h2o@floor", "window@1/8"]) == 0
    assert main([*common, "--episodes", "1", "--cells", "random@floor", "--baselines", "--merge"]) == 0
    result = json.loads((out / "results.json").read_text())
    rows = {(r["eviction"], r["budget"]): r for r in result["rows"]}
    step = result["meta"]["step_tokens"]
    assert set(rows) == {("full", "-"), ("one_step", "-"), ("no_history", "-"), ("h2o", "floor"),
                         ("window", "1/8"), ("random", "floor")}
    assert rows[("random", "floor")]["episodes"] == 1 and rows[("h2o", "floor")]["episodes"] == 2
    for ev in ("h2o", "random"):
        assert rows[(ev, "floor")]["budget_tokens"] == 3 * step >= rows[(ev, "floor")]["peak_tokens_held"]
    assert rows[("no_history", "-")]["peak_tokens_held"] == step == rows[("one_step", "-")]["peak_tokens_held"]
    assert rows[("full", "-")]["peak_tokens_held"] > 3 * step
    table = (out / "results.md").read_text()
    assert "| floor | " in table and "(1)" in table and (out / "results.png").stat().st_size > 0
    assert main([*common, "--task", "Arm-CueCarryLong", "--episodes", "1", "--merge"]) != 0  # another task
