"""``kv-vla train --bags --policy-type kv_vla``: the package's own VLA trained from recorded bags.

MiniGrid-style bags written with the package's own bag writer (``kv_vla_ros.data.generate``'s
``write_rollouts``, as ``kv-vla bag generate`` writes them; sqlite3 and mcap) -> own-VLA episodes
exactly (frames, action ids, boundaries); a few training steps lower the loss of a tiny own VLA and
write a checkpoint that ``load_policy`` loads and ``kv-vla bag eval`` replays; a bag of continuous
actions (the arm's) and one of out-of-range ids are refused in one line each while another trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kv_vla_ros.cli import main
from kv_vla_ros.data.bagio import AtomicBagWriter
from kv_vla_ros.data.episodes import BagTopics
from kv_vla_ros.data.generate import topic_names, write_rollouts
from kv_vla_ros.sim.rollout import Rollout
from kv_vla_ros.train.bag_episodes import read_bags
from kv_vla_ros.train.own_bags import action_check, to_episodes
from kv_vla_ros.vla import ActionSpaceConfig

MINIGRID_ACTIONS = ActionSpaceConfig()  # 7 discrete actions

SIDE = 56  # MiniGrid's frame size
TINY_BACKBONE = {"model_type": "llama", "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 2048}
INSTRUCTIONS = ["go to the matching object at the end of the hallway", "pick up the red key"]


def cue_rollout(k: int, cue: int, steps: int = 8, instruction: str = INSTRUCTIONS[0]) -> Rollout:
    """A memory task in miniature with MiniGrid's discrete actions: a red or blue cue frame for two
    steps, then grey frames with a moving bar (the same after either cue); forward (2) until the
    last step, then left (0) after a red cue and right (1) after a blue one: only memory decides."""
    frames = np.full((steps, SIDE, SIDE, 3), 100, np.uint8)
    frames[:2] = (220, 30, 30) if cue == 0 else (30, 30, 220)
    for t in range(steps):
        frames[t, :, (t * 5) % SIDE] = 200
    actions = np.full((steps, 1), 2.0, np.float32)
    actions[-1] = cue
    return Rollout("MiniGrid-MemoryS7-v0", k, instruction, frames, None, actions, {"success": True})


def write_bag(path: Path, rollouts: list[Rollout], storage: str = "sqlite3") -> Path:
    """The rollouts as ``kv-vla bag generate`` writes them (instruction, frames, labelled actions)."""
    summary = {"episodes": 0, "steps": 0, "successes": 0}
    with AtomicBagWriter(path, storage) as bag:
        write_rollouts(bag, rollouts, topic_names(None), 100_000_000, 10**18, summary)
    return path


def arm_like_rollout(steps: int = 6, seed: int = 1) -> Rollout:
    """Continuous 4-d commands and a joint state, 64-pixel frames: what an arm bag records."""
    rng = np.random.default_rng(seed)
    return Rollout("Arm-CueCarry", 0, "pick up the red key", rng.integers(0, 255, (steps, 64, 64, 3), np.uint8),
                   rng.random((steps, 3)).astype(np.float32), rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                   {"success": True})


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_minigrid_bag_gives_own_vla_episodes_exactly(tmp_path, storage):
    rng = np.random.default_rng(0)
    rollouts = []
    for k, text in enumerate([INSTRUCTIONS[0], INSTRUCTIONS[0], INSTRUCTIONS[1]]):  # a repeated text: 2 episodes
        steps = 5 + k
        rollouts.append(Rollout("MiniGrid-MemoryS7-v0", k, text, rng.integers(0, 255, (steps, SIDE, SIDE, 3), np.uint8),
                                None, rng.integers(0, 7, (steps, 1)).astype(np.float32), {"success": True}))
    bag = write_bag(tmp_path / "bag", rollouts, storage)
    data = read_bags([bag], BagTopics(), progress=False, check=action_check(MINIGRID_ACTIONS, "/action"))
    episodes = to_episodes(data.episodes, MINIGRID_ACTIONS)
    assert len(episodes) == 3 and not data.refused
    for ep, ro in zip(episodes, rollouts):
        assert ep.instruction == ro.instruction and len(ep) == len(ro)
        assert ep.frames.dtype == np.uint8 and np.array_equal(ep.frames, ro.frames)
        assert ep.actions.dtype == np.int64 and np.array_equal(ep.actions, ro.actions[:, 0].astype(np.int64))
        assert ep.aux == {}  # bags carry no privileged labels


def _train(bags, out, *extra) -> int:
    return main(["train", "--bags", *map(str, bags), "--out", str(out), "--policy-type", "kv_vla", "--threads", "1",
                 "--no-progress", "--backbone", json.dumps(TINY_BACKBONE), "--vla", json.dumps({"vision_hidden": 32}),
                 "--lr", "3e-3", "--batch-tokens", "2400", "--evict-from", "0", *extra])


def test_train_from_bags_refuses_continuous_actions_lowers_the_loss_and_evaluates(tmp_path, capsys):
    from kv_vla_ros.eval.bag_eval import evaluate_bag
    from kv_vla_ros.vla import VLASession, load_policy

    bags = tmp_path / "bags"
    arm = write_bag(bags / "arm", [arm_like_rollout()])  # first: the refusal must not depend on the order
    out_of_range = Rollout("MiniGrid-MemoryS7-v0", 0, INSTRUCTIONS[1], np.zeros((4, SIDE, SIDE, 3), np.uint8), None,
                           np.array([[2], [9], [2], [2]], np.float32), {"success": True})
    ids = write_bag(bags / "ids", [out_of_range])
    good = write_bag(bags / "good", [cue_rollout(k, k % 2) for k in range(8)], storage="mcap")
    out = tmp_path / "own"
    assert _train([arm, ids, good], out, "--max-steps", "40") == 0
    err = capsys.readouterr().err
    refusals = [line for line in err.splitlines() if line.startswith("refused: ")]
    assert len(refusals) == 2, err
    assert f"bag {arm}: /action: continuous actions (4 floats per step)" in refusals[0] and "π0" in refusals[0]
    assert f"bag {ids}: /action: action ids 2..9 outside the policy's 7 actions" in refusals[1]
    assert json.loads((out / "train_summary.json").read_text())["step"] == 40
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 20, 40] and (out / "train_curves.png").stat().st_size > 0
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"], rows  # every batch holds all 8 episodes: little noise
    config = json.loads((out / "train_config.json").read_text())
    assert config["bags"] == [str(arm), str(ids), str(good)] and config["aux_weight"] == 0 and config["dagger_at"] == []

    policy = load_policy(out)  # the checkpoint the node and the bag tools load
    assert policy.model_type == "kv_vla" and policy.discrete
    session = VLASession(policy)
    session.reset(INSTRUCTIONS[0])
    assert 0 <= int(session.step(np.zeros((SIDE, SIDE, 3), np.uint8))[0]) < 7
    result = evaluate_bag(good, policy, ["full", "window:budget_tokens=40"], progress=False)
    rows_by = {r["policy"]: r for r in result["results"]}
    assert rows_by["full"]["agreement_recorded"]["n"] == result["meta"]["steps"] == 64
    # forward at every step but the last is learnt (the cue's decision too in 4 of 5 seeds tried)
    assert rows_by["full"]["agreement_recorded"]["match"] >= 0.875

    # --resume continues the run (one log, not restarted)
    assert _train([good], out, "--max-steps", "45", "--resume") == 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows].count(40) == 1
    assert json.loads((out / "train_summary.json").read_text())["step"] == 45


def test_policy_type_follows_init_from_and_refusals_are_one_line(tmp_path, capsys):
    good = write_bag(tmp_path / "good", [cue_rollout(k, k % 2) for k in range(2)])
    base = tmp_path / "base"
    assert _train([good], base, "--max-steps", "2") == 0
    # no --policy-type: an own-format --init-from checkpoint trains the own policy (fine-tuning)
    tuned = tmp_path / "tuned"
    assert main(["train", "--bags", str(good), "--out", str(tuned), "--init-from", str(base), "--threads", "1",
                 "--no-progress", "--max-steps", "2"]) == 0
    from kv_vla_ros.vla import load_policy

    assert load_policy(tuned).model_type == "kv_vla"
    capsys.readouterr()
    for extra, expected in ((["--policy-type", "pi0", "--init-from", str(base)], "holds a kv_vla checkpoint"),
                            (["--policy-type", "kv_vla", "--state-topic", "/joint_states"], "--state-topic"),
                            (["--policy-type", "kv_vla", "--chunk-size", "4"], "--chunk-size: a π0 flag"),
                            (["--policy-type", "kv_vla", "--aux-weight", "1"], "--aux-weight"),
                            # flags of the own VLA that π0 from bags would ignore are refused by name
                            (["--policy-type", "pi0", "--backbone", '{"hidden_size": 8}'], "--backbone: applies to"),
                            (["--policy-type", "pi0", "--focal-gamma", "0"], "--focal-gamma: applies to"),
                            (["--dagger-at", "0.5"], "--dagger-at: applies to")):
        assert main(["train", "--bags", str(good), "--out", str(tmp_path / "x"), "--no-progress", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("kv-vla train: error: ") and "\n" not in err and expected in err, err
    # the simulator path refuses π0 and bins in one line too
    for extra, expected in ((["--policy-type", "pi0"], "--policy-type pi0: π0 trains from --bags"),
                            (["--action-bins", "8"], "--action-bins: applies to --bags")):
        assert main(["train", "--out", str(tmp_path / "y"), "--no-progress", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("kv-vla train: error: ") and "\n" not in err and expected in err, err


def test_expert_bag_of_bag_generate_trains_and_bag_eval_replays_it(tmp_path):
    """The whole path on a real simulator's bag: ``kv-vla bag generate --task MiniGrid-MemoryS7 --split
    train`` -> ``kv-vla train --bags --policy-type kv_vla`` -> ``kv-vla bag eval`` (CLI, in process)."""
    from kv_vla_ros.data.generate import generate_bag

    bag = tmp_path / "expert"
    summary = generate_bag(bag, "MiniGrid-MemoryS7-v0", episodes=2, split="train", start_time_ns=10**18)
    out = tmp_path / "own"
    assert _train([bag], out, "--max-steps", "3") == 0
    assert json.loads((out / "train_summary.json").read_text())["episodes_seen"] == 3 * 2  # both episodes each step
    report = tmp_path / "eval"
    assert main(["bag", "eval", str(bag), "--model", str(out), "--cache", "window:budget_tokens=40", "--out",
                 str(report), "--no-progress", "--flops-every", "0", "--workers", "1"]) == 0
    result = json.loads((report / "bag_eval.json").read_text())
    assert result["meta"]["policy_type"] == "kv_vla" and result["meta"]["steps"] == summary["steps"]


def test_continuous_actions_train_binned_with_action_bins(tmp_path, capsys):
    """--action-bins: a new own VLA over the bags' percentiles (OpenVLA's binning) trains on arm-like
    bags; its checkpoint loads as a continuous policy whose commands lie within the recorded range."""
    from kv_vla_ros.vla import VLASession, load_policy

    bags = [write_bag(tmp_path / f"arm{i}", [arm_like_rollout(seed=i), arm_like_rollout(seed=10 + i)])
            for i in range(2)]
    out = tmp_path / "binned"
    assert _train(bags, out, "--max-steps", "3", "--action-bins", "16") == 0
    policy = load_policy(out)
    space = policy.model.config.action
    assert not policy.discrete and space.kind == "continuous" and space.dim == 4 and space.bins == 16
    assert -1.0 <= min(space.q01) and max(space.q99) <= 1.0  # the recorded commands' percentiles
    session = VLASession(policy)
    session.reset("pick up the red key")
    command = session.step(np.zeros((64, 64, 3), np.uint8))
    assert command.shape == (4,) and np.all(command >= np.array(space.q01) - 1e-6)
    assert np.all(command <= np.array(space.q99) + 1e-6)
    capsys.readouterr()
    assert main(["train", "--bags", str(bags[0]), "--out", str(tmp_path / "x"), "--init-from", str(out),
                 "--action-bins", "8", "--no-progress"]) == 1
    assert "--action-bins 8: " in capsys.readouterr().err
