"""The gate of a π0 checkpoint trained offline from bags: keep-alone values teacher-forced on the
recorded episodes, on a synthetic memory stream where the cue decides the last actions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pi0_bags import write_memory_bag

from kv_vla_ros.data.episodes import BagTopics
from kv_vla_ros.train.bag_episodes import read_bags
from kv_vla_ros.train.pi0_gate import keep_alone_sets, keep_alone_value
from kv_vla_ros.train.pi0_train import PI0TrainConfig, stream_episode, train_pi0

REPO = Path(__file__).resolve().parents[2]
TINY = {"text": {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64},
        "vision": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny π0 trained (~10 s) on 16 recorded episodes: a red/blue cue in the first frames (block 0 of
    the stream), the sign of the last actions decided by it; recent window of one block."""
    root = tmp_path_factory.mktemp("gate")
    write_memory_bag(root / "bag", [0, 1] * 8, steps=10)
    data = read_bags([root / "bag"], BagTopics(image="/camera0/image", state="/joint_states"), progress=False)
    cfg = PI0TrainConfig(model=TINY, chunk_size=4, actions_per_inference=2, episodes_per_step=2, max_steps=300,
                         minutes=5, lr=3e-3, evict_prob=0.5, evict_from=0.0, evict_held_chunks=[0, 1],
                         aux_weight=0.0, threads=1, recent_chunks=1)
    torch.manual_seed(0)
    return train_pi0(cfg, data.episodes, root / "model", progress_bar=False), data.episodes, root


def test_keep_alone_sets_hold_the_window_and_the_chunk():
    before, after = keep_alone_sets(5, 1, 1)
    assert after.tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 1, 0, 0, 1]]
    assert (before[1:] == after[:-1]).all() and not before[0].any()


def test_values_fall_on_the_cue_and_the_gate_learns_them(trained, tmp_path):
    policy, episodes, root = trained
    values = np.stack([keep_alone_value(policy, stream_episode(policy, ep), recent=1)[0].numpy() for ep in episodes])
    assert np.isnan(values[:, -1]).all() and not np.isnan(values[:, :-1]).any()  # the last chunk is never old
    # the decision is restored only by the cue's block and the block computed beside it (its keys saw the cue):
    # the later grey blocks restore nothing
    cue_share = values[:, :2].sum(1) / values[:, :-1].sum(1)
    assert np.median(cue_share) >= 0.9, values
    proc = subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", "train-gate", "--bags", str(root / "bag"),
                           "--model", str(root / "model"), "--image-topic", "/camera0/image", "--state-topic",
                           "/joint_states", "--recent-chunks", "1", "--epochs", "30", "--threads", "1",
                           "--out", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "gate.safetensors").is_file() and (tmp_path / "gate_training.json").is_file()
    from kv_vla_ros.cache import ChunkGate

    gate = ChunkGate.load(str(tmp_path / "gate.safetensors"))
    from kv_vla_ros.train.pi0_gate import keep_alone_value as kav

    top = []
    for ep in episodes[:6]:
        _, feats = kav(policy, stream_episode(policy, ep), recent=1)
        with torch.no_grad():
            scores = gate(feats[:-1].unsqueeze(0))[0][0]
        top.append(int(scores.argmax()))
    assert sum(t in (0, 1) for t in top) >= 5, top  # the gate ranks a cue-carrying block first
