"""scripts/ablation_arm_report.py: every row counts the same seeds (a 200-seed recipe table is cut
to the ablation's seeds); an unfinished variant is skipped."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _variant(root: Path, name: str, seeds: list[int], full_ok: list[bool], aux: float) -> str:
    ckpt, ev = root / name, root / name / "eval"
    ev.mkdir(parents=True)
    (ckpt / "train_log.jsonl").write_text(json.dumps({"step": 99, "elapsed_s": 600.0, "aux_loss": 0.1}) + "\n")
    (ckpt / "train_config.json").write_text(json.dumps({"aux_weight": aux, "evict_prob": 0.5, "evict_from": 0.5}))
    per = {"seed": seeds, "success": full_ok}
    (ev / "results.json").write_text(json.dumps({"results": [{"policy": "full", "per_episode": per}]}))
    return f"{name}={ckpt}:{ev}"


def test_rows_count_the_common_seeds_and_unfinished_variants_are_skipped(tmp_path):
    # the recipe ran 200 seeds and failed only on seeds >= 100; the variant ran the first 4 seeds
    recipe = _variant(tmp_path, "recipe", list(range(200)), [s < 100 for s in range(200)], 4.0)
    no_aux = _variant(tmp_path, "no_aux", [0, 1, 2, 3], [True, False, False, False], 0.0)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation_arm_report.py"), "--out",
                           str(tmp_path / "out"), recipe, no_aux, f"late={tmp_path / 'late'}:{tmp_path / 'late'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "late: no" in proc.stderr and "skipped" in proc.stderr
    report = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert report["seeds"] == 4
    assert [(r["variant"], r["full"]) for r in report["rows"]] == [("recipe", 1.0), ("no_aux", 0.25)]
    assert report["rows"][0]["no history"] is None  # a column that variant never ran
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "same 4 held-out seeds" in md and "| no_aux | 0 |" in md
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 1000
