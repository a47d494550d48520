#!/usr/bin/env python3
"""Package a `make model-arm` run as a shippable model directory with its model card.

    python scripts/ship_arm_model.py --run runs/arm --out models/kv-vla-arm-pi0

Copies the π0 checkpoint (safetensors, processor, ``kv_vla_policy.json``, the gate), its training
log and curves and the closed-loop evaluation; sets the checkpoint's default cache (what the node
and `kv-vla eval` use when no cache is given) to the resolved cache of one evaluated row
(``--default-cache``, e.g. the trained gate at a quarter of the mean history); writes README.md: the
recipe, the stage timings, the table, and the targets of issue 22 checked against the table (met or
not, never edited by hand). Needs only the standard library: it reads the JSON the recipe wrote.

    python scripts/ship_arm_model.py --run runs/arm-distract --out models/kv-vla-arm-distract-pi0 \
        --task Arm-CueCarryDistract-v0 --sweep docs/budget_sweep/distract --default-cache gated@1/4

``--task`` is written into ``kv_vla_policy.json`` ("task") and the card; ``--sweep`` (the ``--out`` of
`kv-vla bench budget-sweep`) puts the budget sweep in the card with issue 30's targets checked
against it, and stands in for ``eval/`` when the run has none (``--default-cache EVICTION@BUDGET``
then names a sweep cell).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CHECKPOINT_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                    "tokenizer_config.json", "kv_vla_policy.json", "gate.safetensors", "gate_training.json",
                    "train_config.json", "train_log.jsonl", "train_curves.png")
EVAL_FILES = {"results.json": "eval_results.json", "results.md": "eval_results.md", "results.png": "eval_results.png"}
SWEEP_FILES = {f"results.{ext}": f"sweep_results.{ext}" for ext in ("json", "md", "png")}
CHANCE = 0.5  # two pads; only the cue tells which (docs/arm.md)
HEURISTICS = ("sink_window", "h2o", "key_norm", "random")


def load_rows(results: Path) -> dict[str, dict]:
    """{cache spec as evaluated: result row} of a `kv-vla eval --out` results.json."""
    data = json.loads(results.read_text())
    return {row["policy"]: row for row in data["results"]}


def sweep_rows(sweep: dict) -> dict[str, dict]:
    """{EVICTION@BUDGET: row} of a budget sweep's results.json, as evaluated rows (``policy``: its spec)."""
    return {f"{r['eviction']}@{r['budget']}": {**r, "policy": r["spec"]} for r in sweep["rows"] if "error" not in r}


def sweep_targets(sweep: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 30's targets: gated at an eighth and at the floor >= 90%, >= h2o + 15, >= random + 15."""
    cells = sweep_rows(sweep)
    out: list[tuple[str, str, bool | None]] = []
    for budget in ("1/8", "floor"):
        gated = cells.get(f"gated@{budget}")
        for name, other, margin in (("90%", None, 0.90), ("h2o + 15", "h2o", 0.15), ("random + 15", "random", 0.15)):
            ref = cells.get(f"{other}@{budget}") if other else None
            target = f"gated at {budget} >= {name}"
            if gated is None or (other and ref is None):
                out.append((target, "not run", None))
                continue
            g = gated["success_rate"]
            if ref is None:
                out.append((target, f"{g:.1%} ({gated['episodes']} seeds)", g >= margin))
            else:
                out.append((target, f"{g:.1%} vs {ref['success_rate']:.1%} ({gated['episodes']} / {ref['episodes']} "
                            "seeds)", g >= ref["success_rate"] + margin))
    return out


def find_row(rows: dict[str, dict], spec: str) -> dict:
    if spec not in rows:
        raise ValueError(f"--default-cache: {spec!r} is not a row of the evaluation (rows: {', '.join(rows)})")
    return rows[spec]


def pct(row: dict | None, key: str = "success_rate") -> str:
    if row is None or row.get(key) is None or row[key] != row[key]:
        return "-"
    return f"{100 * row[key]:.1f}%"


def targets(rows: dict[str, dict]) -> list[tuple[str, str, bool | None]]:
    """Issue 22's closed-loop targets, each (target, measured, met); met None: its rows were not run."""
    succ = {spec: row["success_rate"] for spec, row in rows.items()}
    full = succ.get("full")
    no_hist = [s for spec, s in succ.items() if spec.startswith("window:recent_chunks=1")]
    win4, gate4 = succ.get("window:budget_frac=0.25"), succ.get("gated:budget_frac=0.25")
    gate8 = succ.get("gated:budget_frac=0.125")
    heur8 = {h: succ[f"{h}:budget_frac=0.125"] for h in HEURISTICS if f"{h}:budget_frac=0.125" in succ}
    out: list[tuple[str, str, bool | None]] = []

    def add(name: str, values: list, measured: str, ok) -> None:
        out.append((name, measured if None not in values else "not run", ok() if None not in values else None))

    add("full cache >= 90%", [full], f"{full:.1%}" if full is not None else "", lambda: full >= 0.9)
    hist = min(no_hist) if no_hist else None
    lo = min(x for x in (hist, win4) if x is not None) if (hist, win4) != (None, None) else None
    add(f"no history (one step, or window at a quarter) <= chance + 15 ({CHANCE + 0.15:.0%})", [lo],
        f"one step {hist:.1%}, window at a quarter {win4:.1%}" if None not in (hist, win4) else "",
        lambda: lo <= CHANCE + 0.15)
    add("gated at a quarter within 5 points of full", [gate4, full],
        f"{gate4:.1%} vs {full:.1%}" if None not in (gate4, full) else "", lambda: gate4 >= full - 0.05)
    add("gated at a quarter >= window at a quarter + 25", [gate4, win4],
        f"{gate4:.1%} vs {win4:.1%}" if None not in (gate4, win4) else "", lambda: gate4 >= win4 + 0.25)
    best = max(heur8.values()) if heur8 else None
    best_name = max(heur8, key=heur8.get) if heur8 else ""
    add("gated at an eighth >= best heuristic at an eighth + 5", [gate8, best],
        f"{gate8:.1%} vs {best_name} {best:.1%}" if None not in (gate8, best) else "", lambda: gate8 >= best + 0.05)
    return out


def table(rows: dict[str, dict]) -> str:
    head = ("| cache | episodes | success | decision | cue held | mean held tokens | peak held | step p50 ms |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for spec, row in rows.items():
        budget = row["cache"].get("budget_tokens")
        label = spec + (f" ({budget} tok)" if "budget_frac" in spec and budget else "")
        lines.append(f"| {label} | {row['episodes']} | {pct(row)} | {pct(row, 'decision_accuracy')} | "
                     f"{pct(row, 'cue_held_at_decision')} | {row['mean_tokens_held']:.0f} | "
                     f"{row['peak_tokens_held']:.0f} | {row['latency_p50_ms']:.1f} |")
    return head + "\n".join(lines)


def training_summary(run: Path) -> str:
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    cfg = json.loads((run / "train_config.json").read_text())
    last = log[-1]
    text = cfg["model"]["text"]
    return (f"{last['step']} optimizer steps in {last['elapsed_s'] / 60:.1f} min ({cfg['threads']} torch threads, "
            f"{cfg['episodes_per_step']} episodes per step, lr {cfg['lr']:g} cosine to x{cfg['min_lr_ratio']:g}); "
            f"final loss {last['loss']:.4f}, auxiliary ({cfg['aux_target']}, weight {cfg['aux_weight']:g}) "
            f"{last['aux_loss']:.4f}, probe flow-matching loss {last.get('probe_loss', float('nan')):.4f}. "
            f"π0 from scratch: {text['num_hidden_layers']} text layers of {text['hidden_size']} "
            f"({text['num_attention_heads']} heads / {text['num_key_value_heads']} KV head), "
            f"a {cfg['model']['vision']['num_hidden_layers']}-layer {cfg['model']['vision']['hidden_size']}-wide "
            f"vision tower, a {cfg['model']['dit']['hidden_size']}-wide action expert, chunks of "
            f"{cfg['chunk_size']} actions, {cfg['actions_per_inference']} executed per inference; eviction masks "
            f"on {cfg['evict_prob']:.0%} of the episodes from {cfg['evict_from']:.0%} of the run on.")


DISTRACTORS = ("The distractor variant (issue 30): during the carry a second lamp, as big as the cue lamp and lit "
               "in the cue's own colours, flashes red or blue at seed-drawn times, and a red or blue block slides "
               "across the table; neither decides the pad.")


def card(run: Path, rows: dict[str, dict], default_spec: str, default_cache: dict, timings: dict | None,
         task: str = "Arm-CueCarryLong-v0", name: str = "kv-vla-arm-pi0", sweep: dict | None = None,
         has_eval: bool = True) -> str:
    gate = json.loads((run / "kv-vla-arm" / "gate_training.json").read_text())
    checks = targets(rows)
    mark = {True: "met", False: "**not met**", None: "not run"}
    short = task.removesuffix("-v0")
    variant = short.removeprefix("Arm-CueCarry").lower()
    default = variant == "long"
    env = "" if default else f"TASK={short} OUT=runs/arm-{variant} MAX_STEPS=4430 EPISODES=0 "
    out_run = "runs/arm" if default else f"runs/arm-{variant}"
    lines = [
        f"# {name}: a π0 that remembers, trained from rosbags only",
        "",
        "A small π0 (transformers `PI0ForConditionalGeneration`, random init, no downloaded weights) trained by",
        f"`make model-arm` on rosbags of a scripted expert doing `{task}` (docs/arm.md): a Franka Panda",
        "sees a lamp lit red or blue in the first frames, carries a block down a lane for ~170 steps, and must",
        "place it on the pad of the lamp's colour (chance 1/2). The recipe reads nothing but the bags' topics",
        "(`/image`, `/joint_states`, `/instruction`, `/action`): no simulator, no labels. `make demo-arm`",
        "runs it: kv_vla_node drives arm_sim_node over DDS.",
        *([] if default else ["", DISTRACTORS + f" `kv_vla_policy.json` names its task: `\"task\": \"{task}\"`."]),
        "",
        f"## Recipe (`{env}make model-arm`, scripts/model_arm.sh)",
        "",
        "```bash",
        f"kv-vla bag generate --task {short} --split train --episodes 200 -o {out_run}/bags/train_{variant}",
        f"kv-vla train --bags {out_run}/bags --state-topic /joint_states --out {out_run}/kv-vla-arm "
        + ("--minutes 30 \\" if default else "--max-steps 4430 --minutes 120 \\"),
        "    --aux-weight 4 --evict-from 0.5",
        f"kv-vla train-gate --bags {out_run}/bags --state-topic /joint_states --model {out_run}/kv-vla-arm \\",
        "    --max-episodes 60 --epochs 30",
        *([f"kv-vla eval --model {out_run}/kv-vla-arm --tasks {short} --episodes 200 --cache full ..."]
          if has_eval else [f"kv-vla bench budget-sweep --model {out_run}/kv-vla-arm --task {short} ..."]),
        f"python scripts/ship_arm_model.py --run {out_run} --out models/{name} --task {task}"
        + ("" if default else " --sweep ..."),
        "```",
        "",
        "Training: " + training_summary(run / "kv-vla-arm"),
        "",
        f"Gate (`gate.safetensors`): {gate['parameters']} parameters, trained offline on {gate['episodes']} recorded "
        f"episodes ({gate['target']}), {gate['seconds']:.0f} s; validation loss "
        f"{gate['val_loss'][0]:.3f} -> {gate['val_loss'][-1]:.3f}.",
        "",
        "![training curves](train_curves.png)",
        "",
    ]
    if timings:
        lines += ["Wall time of each stage (2 CPU cores):", "", "| stage | minutes |", "|---|---|"]
        lines += [f"| {stage} | {sec / 60:.1f} |" for stage, sec in timings.items()]
        lines.append("")
    if not has_eval:
        return "\n".join(lines + sweep_section(sweep, default_spec, default_cache))
    meta = json.loads((run / "eval" / "results.json").read_text())["meta"]
    lines += [
        f"## Closed loop ({meta['episodes']} held-out seeds per row, `kv-vla eval`)",
        "",
        table(rows),
        "",
        "*one step*: `window:recent_chunks=1,budget_tokens=33` holds one step (16 image + 17 prompt tokens); the",
        "true no-history policy (the current frame alone) is `--cache no_history` (docs/pi0.md).",
        "*budget_frac*: a share of the `full` row's mean history. *cue held*: at the decision, the cache",
        "still held the block of a frame that showed the lit lamp. Latencies: 1 torch thread per worker.",
        "",
        "![results](eval_results.png)",
        "",
        "### Targets (issue 22), checked against this table",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {measured} | {mark[ok]} |" for name, measured, ok in checks]
    lines += [
        "",
        f"## Default cache: `{default_spec}`",
        "",
        "`kv_vla_policy.json` \"cache\" (what kv_vla_node and `kv-vla eval` use unless told otherwise):",
        "",
        "```json",
        json.dumps(default_cache),
        "```",
        "",
        "Other caches: `-p cache.eviction:=full` on the node, `--cache SPEC` on `kv-vla eval`.",
        "",
    ]
    if sweep is not None:
        lines += sweep_section(sweep, None, None)
    return "\n".join(lines)


def sweep_section(sweep: dict, default_spec: str | None, default_cache: dict | None) -> list[str]:
    """The card's budget-sweep section (and its default cache when the sweep is the only evaluation)."""
    mark = {True: "met", False: "**not met**", None: "not run"}
    lines = ["## Budget sweep (`kv-vla bench budget-sweep`, closed loop, held-out seeds)", "",
             (Path(sweep["_dir"]) / "results.md").read_text().strip(), "", "![budget sweep](sweep_results.png)", "",
             "### Targets (issue 30), checked against the sweep", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {mark[ok]} |" for name, measured, ok in sweep_targets(sweep)]
    if default_cache is not None:
        lines += ["", f"## Default cache: `{default_spec}` (the sweep's cell)", "",
                  "`kv_vla_policy.json` \"cache\" (what kv_vla_node and `kv-vla eval` use unless told otherwise):",
                  "", "```json", json.dumps(default_cache), "```"]
    return lines + [""]


def ship(run: Path, out: Path, default_spec: str, task: str = "Arm-CueCarryLong-v0",
         sweep_dir: Path | None = None) -> Path:
    ckpt = run / "kv-vla-arm"
    has_eval = (run / "eval").is_dir() or sweep_dir is None
    missing = [f for f in CHECKPOINT_FILES if not (ckpt / f).is_file()]
    missing += [f"eval/{f}" for f in EVAL_FILES if has_eval and not (run / "eval" / f).is_file()]
    if missing:
        raise ValueError(f"--run: {run} lacks {', '.join(missing)} (run `make model-arm` first)")
    sweep = None
    if sweep_dir is not None:
        lacking = [f for f in SWEEP_FILES if not (sweep_dir / f).is_file()]
        if lacking:
            raise ValueError(f"--sweep: {sweep_dir} lacks {', '.join(lacking)} (run kv-vla bench budget-sweep first)")
        sweep = {**json.loads((sweep_dir / "results.json").read_text()), "_dir": str(sweep_dir)}
        if sweep["meta"]["task"] != task:
            raise ValueError(f"--sweep: {sweep_dir} is a sweep of {sweep['meta']['task']}, not --task {task}")
    rows = load_rows(run / "eval" / "results.json") if has_eval else sweep_rows(sweep)
    default_cache = find_row(rows, default_spec)["cache"]
    out.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(ckpt / name, out / name)
    for src, dst in EVAL_FILES.items() if has_eval else ():
        shutil.copy2(run / "eval" / src, out / dst)
    for src, dst in SWEEP_FILES.items() if sweep is not None else ():
        shutil.copy2(sweep_dir / src, out / dst)
    policy = json.loads((out / "kv_vla_policy.json").read_text())
    policy["cache"] = default_cache
    policy["task"] = task
    (out / "kv_vla_policy.json").write_text(json.dumps(policy, indent=2) + "\n")
    timing_file = run / "recipe_timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.is_file() else None
    (out / "README.md").write_text(card(run, rows, default_spec, default_cache, timings, task, out.name, sweep,
                                        has_eval))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/arm", help="the OUT of `make model-arm`")
    parser.add_argument("--out", default="models/kv-vla-arm-pi0", help="the model directory to write")
    parser.add_argument("--default-cache", default="gated:budget_frac=0.25",
                        help="the evaluated row whose resolved cache becomes the checkpoint's default "
                             "(a sweep cell EVICTION@BUDGET when the sweep is the only evaluation)")
    parser.add_argument("--task", default="Arm-CueCarryLong-v0", help="the task the model was trained for")
    parser.add_argument("--sweep", default=None, help="a kv-vla bench budget-sweep --out directory for the card")
    args = parser.parse_args(argv)
    try:
        out = ship(Path(args.run), Path(args.out), args.default_cache, args.task,
                   Path(args.sweep) if args.sweep else None)
    except ValueError as exc:
        print(f"ship_arm_model: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (model card: {out / 'README.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
