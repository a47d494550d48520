"""Data-parallel training (``kv-vla train --bags --workers N``, kv_vla_ros.parallel.data_parallel): the
same model as one process. Real Ray (a private local runtime, two worker processes in a gloo group),
real bags, real tiny π0 and own-VLA models.

Tolerances (float32 on CPU; the two runs sum the same per-sample gradients in another order):
per-step losses within a relative 1e-5, final weights within an absolute 1e-4. The largest weight
difference seen is about 1.4e-5, on a vision key bias whose true gradient is zero (softmax ignores
it): AdamW scales its rounding noise to a step's size; every other weight agrees to about 3e-7.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pi0_bags import write_memory_bag
from safetensors.torch import load_file

from kv_vla_ros.cli import main

pytestmark = pytest.mark.ray  # each test starts a Ray runtime or two (tens of seconds)
REPO = Path(__file__).resolve().parents[2]
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4
TINY_PI0 = json.dumps({"text": {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64},
                       "vision": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}})


def _pi0_args(bags: Path, out: Path, *extra) -> list[str]:
    return ["train", "--bags", str(bags), "--out", str(out), "--image-topic", "/camera0/image", "--state-topic",
            "/joint_states", "--threads", "1", "--no-progress", "--chunk-size", "4", "--actions-per-inference", "2",
            "--episodes-per-step", "4", "--evict-from", "0", "--lr", "3e-3", "--log-every", "1", "--pi0-model",
            TINY_PI0, *extra]


@pytest.fixture(scope="module")
def arm_bags(tmp_path_factory) -> Path:
    """Three bags of two memory episodes each (the shard rule gives worker 0 bags 0 and 2, worker 1 bag 1)."""
    root = tmp_path_factory.mktemp("bags")
    for i, cues in enumerate([[0, 1], [1, 0], [0, 0]]):
        write_memory_bag(root / f"b{i}", cues, steps=8, t0=1_000_000_000 + i * 10**10)
    return root


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _assert_same_model(one: Path, two: Path, keys=("loss", "aux_loss", "probe_loss")) -> None:
    a, b = _log(one), _log(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 4
    for ra, rb in zip(a, b):
        for key in keys:
            if ra.get(key) is not None or rb.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=LOSS_RTOL), (key, ra, rb)
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= WEIGHT_ATOL, worst
    moved = max(float((wa[k] - load_file(str(one / "checkpoint" / "model.safetensors"))[k]).abs().max()) for k in wa)
    assert moved == 0.0  # the final checkpoint is the final model (resume continues from it)


def test_pi0_two_workers_train_the_one_process_model(arm_bags, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_pi0_args(arm_bags, one, "--max-steps", "4")) == 0
    assert main(_pi0_args(arm_bags, two, "--max-steps", "4", "--workers", "2", "--cache-episodes", "2")) == 0
    assert "6 episodes, 48 steps from 1 path(s); 0 bag(s) refused; 2 workers" in capsys.readouterr().out
    _assert_same_model(one, two)
    assert any(r["evicted_share"] > 0 for r in _log(two))  # eviction masks were drawn (and agree)
    ranks = json.loads((two / "train_workers.json").read_text())
    assert [r["bags_read"] for r in ranks] == [2, 1]  # bag i -> worker i % 2
    assert all(r["episode_loads"] > 2 for r in ranks)  # an LRU of 2: episodes read again, not all held
    assert not (two / ".episode_cache").exists() and (two / "train_curves.png").is_file()
    # --resume from the two-worker checkpoint in one process: the log goes on
    assert main(_pi0_args(arm_bags, two, "--max-steps", "6", "--resume")) == 0
    assert [r["step"] for r in _log(two)] == [1, 2, 3, 4, 5, 6]


def test_own_vla_two_workers_train_the_one_process_model(tmp_path):
    from test_own_policy_from_bags import TINY_BACKBONE, cue_rollout, write_bag

    bags = tmp_path / "bags"
    for i in range(2):
        write_bag(bags / f"b{i}", [cue_rollout(4 * i + k, k % 2, steps=6 + k) for k in range(4)])

    def args(out: Path, *extra) -> list[str]:
        return ["train", "--bags", str(bags), "--out", str(out), "--policy-type", "kv_vla", "--threads", "1",
                "--no-progress", "--backbone", json.dumps(TINY_BACKBONE), "--vla", json.dumps({"vision_hidden": 32}),
                "--lr", "3e-3", "--batch-tokens", "2400", "--evict-from", "0", "--log-every", "1",
                "--max-steps", "4", *extra]

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(args(one)) == 0 and main(args(two, "--workers", "2")) == 0
    _assert_same_model(one, two, keys=("loss",))
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["step"] == 4 and summary["episodes_seen"] == json.loads((one / "train_summary.json")
                                                                          .read_text())["episodes_seen"]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _training_workers(pid: int) -> list[int]:
    found = []
    for p in _descendants(pid):
        try:
            if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::Worker"):
                found.append(p)
        except OSError:
            continue
    return found


def test_a_dying_worker_is_one_line_and_the_run_resumes(arm_bags, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kv_vla_ros.cli", *_pi0_args(arm_bags, out, "--max-steps", "2000",
                                                              "--checkpoint-minutes", "0", "--workers", "2")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    state = out / "checkpoint" / "train_state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = _training_workers(proc.pid)
    assert state.is_file() and len(workers) == 2, (workers, proc.poll())
    victim = max(workers)
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("kv-vla train: error:")]
    assert len(lines) == 1, err[-3000:]
    assert f"(pid {victim}," in lines[0] and " died: " in lines[0] and lines[0].endswith("with --resume"), lines
    done = json.loads(state.read_text())["step"]
    assert 0 < done < 2000
    assert main(_pi0_args(arm_bags, out, "--max-steps", str(done + 2), "--resume", "--workers", "2")) == 0
    steps = [r["step"] for r in _log(out)]
    assert steps[-2:] == [done + 1, done + 2] and steps.count(1) == 1  # one log, continued


def test_train_gate_values_spread_over_workers_equal_one_process(arm_bags, tmp_path):
    model = tmp_path / "pi0"
    assert main(_pi0_args(arm_bags, model, "--max-steps", "2")) == 0
    logs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"gate{workers}"
        out.mkdir()
        assert main(["train-gate", "--bags", str(arm_bags), "--model", str(model), "--image-topic", "/camera0/image",
                     "--state-topic", "/joint_states", "--recent-chunks", "1", "--epochs", "2", "--threads", "1",
                     "--out", str(out), "--no-progress", "--workers", workers]) == 0
        logs[workers] = json.loads((out / "gate_training.json").read_text())
    assert logs["1"]["workers"] == 1 and logs["2"]["workers"] == 2
    np.testing.assert_array_equal(np.array(logs["2"]["values"], dtype=float),
                                  np.array(logs["1"]["values"], dtype=float))
