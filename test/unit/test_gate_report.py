"""`kv-vla gate-report`: the grid of policies at equal budgets, its table columns and plots."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from kv_vla_ros.cache.spec import parse_spec
from kv_vla_ros.eval.closed_loop import cue_chunk_held
from kv_vla_ros.eval.gate_report import EVICTIONS, configure, grid_specs, label_of, run
from kv_vla_ros.vla import VLAConfig, VLAModel

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 4096}


def test_grid_specs_parse_and_label_back():
    specs = grid_specs([0.25, 0.125])
    assert specs[0] == "full" and len(specs) == 1 + 2 * len(EVICTIONS)
    base = VLAConfig(frame_tokens=4, max_instruction_tokens=16).cache
    for spec in specs[1:]:
        changes, frac = parse_spec(spec, base)
        assert frac in (0.25, 0.125)
        name, f = label_of(spec)
        assert f == frac and name in {label for label, _ in EVICTIONS}
    assert parse_spec("gated:gate=untrained,budget_frac=0.25", base)[0]["_gate"] == "untrained"
    with pytest.raises(ValueError, match="gate must be"):
        parse_spec("gated:gate=maybe", base)


def test_cue_chunk_held_reads_the_window_and_the_kept_chunks():
    st = {"chunks_scored": 10, "kept_chunks": [3]}
    assert cue_chunk_held(st, [], 12) is None  # no cue seen before the step
    assert cue_chunk_held(st, [3, 4], 12) is True  # chunk 3 kept
    assert cue_chunk_held(st, [4, 5], 12) is False  # scored and dropped
    assert cue_chunk_held(st, [11], 12) is True  # still in the recent window
    assert cue_chunk_held(st, [12], 12) is None  # the current frame is not memory


def test_gate_report_smoke(tmp_path):
    torch.manual_seed(0)
    ckpt = VLAModel(VLAConfig(backbone=dict(TINY), vision_hidden=16, frame_tokens=2,
                              max_instruction_tokens=16)).eval().save_pretrained(tmp_path / "ck")
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--model", str(ckpt), "--tasks", "MiniGrid-MemoryS37", "--episodes", "2",
                              "--fractions", "0.25", "--max-steps", "12", "--trace-episodes", "2",
                              "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"])
    assert run(args) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert len(rows) == 1 + len(EVICTIONS)
    by_label = {label_of(r["policy"])[0]: r for r in rows}
    assert "no calibration.json" in by_label["trained gate + layer budgets"]["error"]  # named, not a crash
    full, gate = by_label["full"], by_label["trained gate"]
    assert "decision_accuracy" in full and "cue_held_at_decision" in full
    assert gate["peak_tokens_held"] <= gate["cache"]["budget_tokens"] + 3  # + the open step
    traces = json.loads((tmp_path / "out" / "gate_scores.json").read_text())
    assert len(traces) == 2 and all(t["scores"] for t in traces)
    for name in ("results.md", "results.png", "success_vs_budget.png", "gate_scores.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "cue held" in (tmp_path / "out" / "results.md").read_text()
