"""Closed-loop evaluation plumbing: cache specs, metrics, JSON/Markdown/PNG outputs."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from kv_vla_ros.cache.spec import parse_spec
from kv_vla_ros.eval.closed_loop import evaluate_task
from kv_vla_ros.eval.closed_loop_cli import configure, run
from kv_vla_ros.eval.report import human_bytes, markdown_table
from kv_vla_ros.vla import VLAConfig, VLAModel

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 4096}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(backbone=dict(TINY), vision_hidden=16)).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("ck"))


def test_parse_spec():
    base = VLAConfig().cache
    full = {"eviction": "full", "budget_tokens": None, "layer_budgets": None, "static": False}
    assert parse_spec("full", base) == (full, None)  # full holds everything: it reports no budget
    changes, frac = parse_spec("window:budget_tokens=300,recent_chunks=3", base)
    assert changes == {"eviction": "window", "budget_tokens": 300, "recent_chunks": 3} and frac is None
    changes, frac = parse_spec("gated:budget_frac=0.25,gate_threshold=0.4,summarize=true", base)
    assert frac == 0.25 and changes["gate_threshold"] == 0.4 and changes["summarize"] is True
    with pytest.raises(ValueError, match="unknown cache field 'bogus'"):
        parse_spec("window:bogus=1", base)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_spec("window:300", base)


def test_evaluate_task_metrics(tiny_ckpt):
    model = VLAModel.from_pretrained(tiny_ckpt)
    row = evaluate_task(model, "MiniGrid-MemoryS7-v0", model.config.cache, [1_000_000, 1_000_001],
                        max_steps=6, progress=False)
    assert row["episodes"] == 2 and row["success_rate"] == sum(row["per_episode"]["success"]) / 2
    assert 1 <= row["mean_length"] <= 6
    assert row["mean_tokens_seen"] == pytest.approx(32 + 50 * row["mean_length"] - 1)
    assert row["peak_kv_bytes"] > 0 and row["latency_p99_ms"] >= row["latency_p50_ms"] > 0


def test_run_writes_json_markdown_png(tiny_ckpt, tmp_path):
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--model", str(tiny_ckpt), "--tasks", "MiniGrid-MemoryS7", "--episodes", "2",
                              "--max-steps", "8", "--cache", "full", "--cache", "window:budget_frac=0.25",
                              "--out", str(tmp_path), "--no-progress", "--workers", "1"])
    assert run(args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["results"]
    assert [r["policy"] for r in rows] == ["full", "window:budget_frac=0.25"]
    if "success_rate" in rows[1]:  # the window policy exists in the cache tier
        assert rows[1]["peak_tokens_held"] <= max(rows[1]["cache"]["budget_tokens"], 100)
    assert "| task |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_markdown_table_shows_errors():
    table = markdown_table([{"task": "t", "policy": "gated", "error": "no gate"}])
    assert "no gate" in table and table.count("\n") == 3
    assert human_bytes(2048) == "2.0 KiB"


def test_a_spec_with_its_own_budget_drops_the_checkpoints_per_layer_split():
    """A calibrated checkpoint's per-layer budgets split its own total; `window:budget_frac=...`
    or `gated:budget_tokens=N` asks for another budget, uniform unless `layer_budgets=calibrated`."""
    from kv_vla_ros.eval.grid import Cell, _resolve

    base = VLAConfig(backbone=dict(TINY), vision_hidden=16).cache.replace(
        eviction="gated", budget_tokens=200, layer_budgets=[260, 140])
    for spec, full_seen in (("window:budget_frac=0.25", 640.0), ("gated:budget_tokens=150", None)):
        changes, frac = parse_spec(spec, base)
        cell = Cell("MiniGrid-MemoryS7-v0", spec, changes, frac, 0)
        _resolve(cell, base, "unused", full_seen)
        assert not cell.row, cell.row
        assert cell.cfg.layer_budgets is None and cell.cfg.budget_tokens == (160 if frac else 150), cell.cfg
    changes, frac = parse_spec("gated:gate_threshold=0", base)  # no budget of its own: the checkpoint's
    cell = Cell("MiniGrid-MemoryS7-v0", "gated:gate_threshold=0", changes, frac, 0)
    _resolve(cell, base, "unused", None)
    assert cell.cfg.layer_budgets == [260, 140] and cell.cfg.budget_tokens == 200


@pytest.mark.parametrize("specs, message", [
    (["window:budget_frac=0.25"], "--cache window:budget_frac=0.25: budget_frac needs an earlier 'full' spec"),
    (["window:bogus=1"], "unknown cache field 'bogus'"),
])
def test_a_bad_cache_spec_is_one_line_not_a_traceback(tiny_ckpt, tmp_path, capsys, specs, message):
    parser = argparse.ArgumentParser()
    configure(parser)
    argv = ["--model", str(tiny_ckpt), "--tasks", "MiniGrid-MemoryS7", "--episodes", "1", "--out", str(tmp_path),
            "--no-progress", "--workers", "1"]
    for spec in specs:
        argv += ["--cache", spec]
    assert run(parser.parse_args(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith("kv-vla eval: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()
