"""`kv-vla bench budget-sweep`: every eviction at shrinking KV budgets down to the floor, closed loop
on held-out seeds of one task (issue 30): success, decision accuracy, cue held at the decision, KV
bytes held and step latency per (eviction, budget) cell, with the baselines beside them (full, one
step held, and the true no-history policy: the current frame alone).

Budgets: shares of the ``full`` row's mean history (``1/4``, ``1/8``, ``1/16``) and ``floor``: the
recent window plus one old step, the smallest budget that can hold anything old at all. One step is
measured, not assumed: the tokens one control step adds to the cache (frame(s) + prompt for π0).
``--recent-chunks 1`` adds the floor with one recent step (a model trained with two may break).

Cells can be run a few at a time (``--cells gated@1/8 h2o@floor``) at different seed counts:
``--merge`` keeps the cells already in ``--out/results.json`` that this run does not redo, so the
table says how many seeds each cell ran. Gated cells use ``gate_threshold=0`` (the budget alone
decides, as for every heuristic: equal bytes). Writes results.json, results.md (the success grid,
then every figure per cell) and results.png (success against mean KV bytes held).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kv_vla_ros.data.errors import cli_errors

EVICTIONS = ("window", "sink_window", "h2o", "key_norm", "random", "gated")
BUDGETS = {"1/4": 0.25, "1/8": 0.125, "1/16": 0.0625, "floor": None}
BASELINES = ("full", "one_step", "no_history")


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.parallel.runner import add_runner_arguments

    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped arm model)")
    parser.add_argument("--task", default="Arm-CueCarryLong", help="simulator task (held-out seeds)")
    parser.add_argument("--episodes", type=int, default=200, help="held-out seeds per cell")
    parser.add_argument("--seed-offset", type=int, default=0, help="offset into the eval seed range")
    parser.add_argument("--max-steps", type=int, default=None, help="episode step cap (default: the task's own)")
    parser.add_argument("--evictions", nargs="+", default=list(EVICTIONS), choices=EVICTIONS)
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--cells", nargs="+", default=None, metavar="EVICTION@BUDGET",
                        help="only these cells, e.g. gated@1/8 h2o@floor (default: every eviction x budget)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                        help="rows beside the grid: full history, one step held, no history (current frame alone)")
    parser.add_argument("--no-grid", action="store_true", help="the baselines only (e.g. to merge them later)")
    parser.add_argument("--recent-chunks", type=int, nargs="+", default=[2], choices=[1, 2],
                        help="recent steps always held at the floor (the model's default is 2)")
    parser.add_argument("--merge", action="store_true", help="keep the cells of --out/results.json not redone")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="directory for results.json/.md/.png")
    add_runner_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")


def step_tokens(model, task: str, seed: int) -> int:
    """Tokens one control step adds to the cache: one step of a full-cache session on ``task``."""
    from kv_vla_ros.eval.closed_loop import make_robot, make_session

    robot = make_robot(task)
    try:
        frame, instruction = robot.reset(seed)
        session = make_session(model, model.default_cache_config().replace(eviction="full", budget_tokens=None,
                                                                             layer_budgets=None))
        session.reset(instruction)
        session.step_action_chunk(frame, robot.state() if model.state_dim > 0 else None)
        return int(session.stats()["tokens_seen"])
    finally:
        robot.close()


def cell_specs(evictions, budgets, cells, recent_chunks, full_seen: float, step: int) -> list[dict]:
    """``[{"eviction", "budget", "recent_chunks", "budget_tokens", "spec"}]`` of the grid to run."""
    wanted = None
    if cells:
        wanted = set()
        for c in cells:
            ev, at, budget = c.partition("@")
            if not at or ev not in EVICTIONS or budget not in BUDGETS:
                raise ValueError(f"--cells: expected EVICTION@BUDGET with EVICTION in {', '.join(EVICTIONS)} and "
                                 f"BUDGET in {', '.join(BUDGETS)}, got {c!r}")
            wanted.add((ev, budget))
    out = []
    for budget in budgets:
        for rc in (recent_chunks if budget == "floor" else [2]):
            for ev in evictions:
                if wanted is not None and (ev, budget) not in wanted:
                    continue
                tokens = (rc + 1) * step if BUDGETS[budget] is None else max(int(round(BUDGETS[budget] * full_seen)),
                                                                             (rc + 1) * step)
                fields = [f"budget_tokens={tokens}"] + ([f"recent_chunks={rc}"] if rc != 2 else [])
                fields += ["gate_threshold=0"] if ev == "gated" else []
                label = budget if rc == 2 else f"{budget} (1 recent)"
                out.append({"eviction": ev, "budget": label, "recent_chunks": rc, "budget_tokens": tokens,
                            "spec": f"{ev}:{','.join(fields)}"})
    return out


def baseline_specs(baselines, step: int) -> list[dict]:
    specs = {"full": "full", "one_step": f"window:recent_chunks=1,budget_tokens={step}", "no_history": "no_history"}
    return [{"eviction": name, "budget": "-", "recent_chunks": None, "budget_tokens": None, "spec": specs[name]}
            for name in baselines]


def cell_row(cell: dict, row: dict) -> dict:
    """The sweep's figures of one evaluated row (`summarize_task`)."""
    if "error" in row:
        return {**cell, "error": row["error"]}
    per_token = row["peak_kv_bytes"] / max(row["peak_tokens_held"], 1)
    keys = ("episodes", "success_rate", "decision_accuracy", "cue_held_at_decision", "mean_tokens_held",
            "peak_tokens_held", "mean_tokens_seen", "latency_p50_ms", "latency_p99_ms", "cache_policy_share")
    return {**cell, **{k: row.get(k) for k in keys}, "mean_kv_bytes": row["mean_tokens_held"] * per_token,
            "peak_kv_bytes": row["peak_kv_bytes"], "cache": row["cache"]}


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def markdown(result: dict) -> str:
    """The success grid (rows: budgets, columns: evictions; ``% (seeds)``), then every figure per cell."""
    meta, rows = result["meta"], result["rows"]
    evs = [e for e in EVICTIONS if any(r["eviction"] == e for r in rows)]
    budgets = list(dict.fromkeys(r["budget"] for r in rows if r["eviction"] in EVICTIONS))
    lines = [f"Success (%) on held-out seeds of {meta['task']} (seeds per cell in brackets); one step = "
             f"{meta['step_tokens']} tokens, full history {meta['full_mean_tokens_seen']:.0f} tokens mean.", "",
             "| budget | tokens | " + " | ".join(evs) + " |", "|---|---|" + "---|" * len(evs)]
    for b in budgets:
        cells = {r["eviction"]: r for r in rows if r["budget"] == b and r["eviction"] in EVICTIONS}
        tokens = next(iter(cells.values()))["budget_tokens"]
        lines.append(f"| {b} | {tokens} | " + " | ".join(
            (f"{_pct(cells[e].get('success_rate'))} ({cells[e].get('episodes', 0)})" if e in cells and
             "error" not in cells[e] else ("error" if e in cells else "not run")) for e in evs) + " |")
    base = [r for r in rows if r["eviction"] in BASELINES]
    if base:
        figures = (f"{r['eviction']} {_pct(r.get('success_rate'))} ({r.get('episodes', 0)})" for r in base)
        lines += ["", "Baselines, success % (seeds): " + ", ".join(figures) + "."]
    lines += ["", "| cell | spec | seeds | success | decision | cue held | mean held tok | mean KV KiB | "
              "step p50 ms | step p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['eviction']}@{r['budget']} | `{r['spec']}` | error: {r['error']} |||||||||")
            continue
        lines.append(f"| {r['eviction']}@{r['budget']} | `{r['spec']}` | {r['episodes']} | {_pct(r['success_rate'])} | "
                     f"{_pct(r.get('decision_accuracy'))} | {_pct(r.get('cue_held_at_decision'))} | "
                     f"{r['mean_tokens_held']:.0f} | {r['mean_kv_bytes'] / 1024:.1f} | {r['latency_p50_ms']:.1f} | "
                     f"{r['latency_p99_ms']:.1f} |")
    lines += ["", "*cue held*: at the decision the cache still held a frame that showed the cue. *one_step*: a cache "
              "holding the newest step only (its keys and values were computed with earlier steps held); "
              "*no_history*: the session emptied before every step (the current frame alone). Latency: 1 torch "
              "thread per worker, the machine shared (figures comparable within one run only)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for ev in EVICTIONS:
        pts = sorted((r["mean_kv_bytes"] / 1024, 100 * r["success_rate"]) for r in rows
                     if r["eviction"] == ev and r["recent_chunks"] == 2)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=ev)
    styles = {"full": ("k", "--"), "one_step": ("grey", ":"), "no_history": ("tab:red", ":")}
    for r in rows:
        if r["eviction"] in styles:
            colour, ls = styles[r["eviction"]]
            ax.axhline(100 * r["success_rate"], color=colour, ls=ls, lw=1,
                       label=f"{r['eviction']} ({100 * r['success_rate']:.0f}%)")
    grid = {r["budget"]: r["mean_kv_bytes"] / 1024 for r in rows
            if r["eviction"] in EVICTIONS and r["recent_chunks"] == 2}
    for budget, kib in grid.items():  # where each budget of the grid lies
        ax.axvline(kib, color="lightgrey", lw=0.8, zorder=0)
        ax.text(kib, 1, f" {budget}", fontsize=8, color="grey", rotation=90, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("mean KV cache held (KiB, log)")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"{result['meta']['task']}: success against KV bytes held")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merged(previous: dict | None, new_rows: list[dict]) -> list[dict]:
    """``previous`` rows not redone (same eviction, budget and spec), then the new ones, in grid order."""
    key = lambda r: (r["eviction"], r["budget"])  # noqa: E731
    done = {key(r) for r in new_rows}
    rows = [r for r in (previous or {}).get("rows", []) if key(r) not in done] + new_rows
    order = {b: i for i, b in enumerate(BUDGETS)}
    return sorted(rows, key=lambda r: (r["eviction"] not in BASELINES, order.get(r["budget"].split(" ")[0], -1),
                                       r["budget"], (EVICTIONS + BASELINES).index(r["eviction"])))


@cli_errors("bench budget-sweep")
def run(args: argparse.Namespace) -> int:
    import torch

    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.eval.grid import evaluate_grid
    from kv_vla_ros.parallel.runner import runner_config
    from kv_vla_ros.sim import eval_seeds, normalize_task
    from kv_vla_ros.vla import ARM_MODEL_PATH, load_policy

    if args.episodes < 1:
        raise ValueError(f"--episodes: must be >= 1, got {args.episodes}")
    torch.set_num_threads(args.threads)
    model_path = args.model or str(ARM_MODEL_PATH)
    model = load_policy(model_path)
    task = normalize_task(args.task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()) if args.merge and (out / "results.json").is_file() \
        else None
    if previous is not None and (previous["meta"]["task"], previous["meta"]["model"]) != (task, model_path):
        raise ValueError(f"--merge: {out / 'results.json'} is of {previous['meta']['task']} with "
                         f"{previous['meta']['model']}, not {task} with {model_path}")
    seeds = eval_seeds(args.episodes, args.seed_offset)
    config = runner_config(args, progress=not args.no_progress)
    t0 = time.perf_counter()
    step = step_tokens(model, task, seeds[0])
    full_seen = previous["meta"]["full_mean_tokens_seen"] if previous else None  # merged cells keep their budgets
    baselines = list(args.baselines)
    if full_seen is None and "full" not in baselines:
        baselines.insert(0, "full")  # the budgets are shares of its history
    base_cells = baseline_specs(baselines, step)
    base = model.default_cache_config()
    new_rows = []
    if base_cells:
        rows, _ = evaluate_grid(model, model_path, [task], [(c["spec"], *parse_spec(c["spec"], base))
                                                            for c in base_cells], seeds, args.max_steps, config)
        new_rows = [cell_row(c, r) for c, r in zip(base_cells, rows)]
    full = next((r for r in new_rows if r["eviction"] == "full" and "error" not in r), None)
    if full_seen is None:
        if full is None:
            raise ValueError("the full-history row failed: the budgets are shares of its history")
        full_seen = full["mean_tokens_seen"]
    grid = [] if args.no_grid else cell_specs(args.evictions, args.budgets, args.cells, args.recent_chunks,
                                               full_seen, step)
    if grid:
        rows, _ = evaluate_grid(model, model_path, [task], [(c["spec"], *parse_spec(c["spec"], base)) for c in grid],
                                   seeds, args.max_steps, config)
        new_rows += [cell_row(c, r) for c, r in zip(grid, rows)]
    result = {"meta": {"task": task, "model": model_path, "step_tokens": step, "full_mean_tokens_seen": full_seen,
                       "seed_offset": args.seed_offset, "last_run_episodes": args.episodes,
                       "last_run_s": round(time.perf_counter() - t0, 1)},
              "rows": merged(previous, new_rows)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "results.png")
    print(markdown(result))
    print(f"wrote {out / 'results.json'}, results.md, results.png ({time.perf_counter() - t0:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kv-vla bench budget-sweep", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["BUDGETS", "EVICTIONS", "cell_specs", "markdown", "merged", "run", "step_tokens"]
