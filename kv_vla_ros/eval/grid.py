"""The closed-loop evaluation grid (tasks x cache specs x seeds) as one flat list of episodes for a
`Runner`: in-process, on every core or on a Ray cluster, with the same rows as a sequential run.

An episode is the unit of work (`closed_loop.run_episode`): one closed-loop rollout under one
cache config, self-contained (the session resets its cache, the ``random`` policy its generator),
so where and in which order it runs cannot change its outcome. Workers keep one `SimRobot` per
task and one `VLASession` per cache config, as the sequential loop does.

``budget_frac`` specs size their budget from the mean history of the task's preceding ``full``
row, so the grid runs in two phases on one runner (one progress bar): every other spec first,
then the ``budget_frac`` specs.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from kv_vla_ros.cache.budgets import calibrated_budgets
from kv_vla_ros.cache.spec import is_full_history
from kv_vla_ros.eval.closed_loop import default_step_cap, make_robot, make_session, run_episode, summarize_task
from kv_vla_ros.parallel.runner import Runner, RunnerConfig


@dataclass
class Cell:
    """One (task, cache spec) row of the grid."""

    task: str
    spec: str
    changes: dict
    frac: float | None
    index: int  # the spec's position in the --cache list
    regime: tuple = (0, "replace", 0.0)  # (inference delay steps, merge rule, threshold): `run_episode`
    cfg: object = None
    untrained_gate: bool = False
    history: bool = True  # False: the session on the current frame alone (spec no_history)
    label: str = ""
    row: dict = field(default_factory=dict)


def worker_state(model_path: str, model=None) -> dict:
    """A worker's state: the model (loaded once per worker), and robots/sessions made on demand."""
    if model is None:
        from kv_vla_ros.vla import load_policy

        model = load_policy(model_path)  # by config.json model_type: the package's own VLA or π0
    return {"model": model, "robots": {}, "sessions": {}}


def close_state(state: dict) -> None:
    for robot in state["robots"].values():
        robot.close()
    state["robots"].clear()
    state["sessions"].clear()


def episode_item(state: dict, item: tuple, tick=None) -> dict:
    """``(task, cache_config, untrained_gate, seed, max_steps[, regime[, history]])`` -> the episode's
    record (`run_episode`; ``regime``: ``(delay_steps, merge_rule, threshold)``; ``history`` False:
    the session on the current frame alone), or ``{"seed", "error"}`` when the config cannot run
    (e.g. ``gated`` without a gate, ``rtc`` without a flow policy)."""
    task, cfg, untrained_gate, seed, max_steps = item[:5]
    regime = item[5] if len(item) > 5 else (0, "replace", 0.0)
    history = item[6] if len(item) > 6 else True
    try:
        robot = state["robots"].get((task, max_steps))
        if robot is None:
            robot = state["robots"][(task, max_steps)] = make_robot(task, max_steps)
        key = (json.dumps(cfg.to_dict(), sort_keys=True), untrained_gate, history)
        session = state["sessions"].get(key)
        if session is None:
            session = state["sessions"][key] = make_session(state["model"], cfg, untrained_gate, history)
        return run_episode(robot, session, seed, *regime)
    except (ValueError, NotImplementedError) as exc:
        return {"seed": int(seed), "error": str(exc)}


def _resolve(cell: Cell, base, model_path: str, full_seen: float | None) -> None:
    """The cell's CacheConfig, gate choice and label (the sequential loop's rules), or its error row."""
    changes = dict(cell.changes)
    try:
        if cell.frac is not None:
            if full_seen is None:
                raise ValueError(f"--cache {cell.spec}: budget_frac needs a 'full' row that ran on {cell.task}")
            # never below prefix + recent window (a short history's fraction can be)
            layout = base.replace(eviction="full", budget_tokens=None, layer_budgets=None,
                                  **{k: v for k, v in changes.items()
                                     if k in ("recent_chunks", "chunk_size", "sink_tokens")})
            changes["budget_tokens"] = max(int(round(cell.frac * full_seen)), layout.min_budget)
        cell.untrained_gate = changes.pop("_gate", "trained") == "untrained"
        cell.history = changes.pop("_history", "all") != "none"
        calibrated = changes.pop("_layer_budgets", None) == "calibrated"
        if "budget_tokens" in changes and "layer_budgets" not in changes:
            # the checkpoint's per-layer budgets split *its* total: a spec with another budget
            # means a uniform one (per-layer again only with layer_budgets=calibrated or explicit)
            changes["layer_budgets"] = None
        cfg = base.replace(**changes)
        cfg.budget_tokens = max(cfg.budget_tokens, cfg.min_budget) if cfg.budget_tokens else cfg.budget_tokens
        if calibrated:
            cfg = cfg.replace(layer_budgets=calibrated_budgets(model_path, cfg))
    except (ValueError, NotImplementedError) as exc:
        cell.row = {"task": cell.task, "policy": cell.spec, "error": str(exc)}
        return
    cell.cfg = cfg
    cell.label = cell.spec if cell.frac is None else f"{cell.spec} ({cfg.budget_tokens} tok)"


def _full_seen_before(cells: list[Cell], cell: Cell) -> float | None:
    """Mean tokens seen of the last ``full`` row before ``cell`` on its task (sequential order)."""
    seen = None
    for other in cells:
        if other.task == cell.task and other.index < cell.index and is_full_history(other.changes):
            seen = other.row.get("mean_tokens_seen", seen)
    return seen


def evaluate_grid(model, model_path: str, tasks: list[str], parsed: list[tuple[str, dict, float | None]],
                  seeds: list[int], max_steps: int | None, config: RunnerConfig | None = None,
                  regimes: list[tuple] | None = None) -> tuple[list[dict], dict]:
    """Rows (task-major, then spec order) equal to evaluating each cell with `evaluate_task`, and
    how they ran (``workers``, ``nodes`` (that ran episodes), ``ray``, ``ray_address``, ``startup_s``: until the first
    actor result, ``driver_works``: this process was one of the workers, ``episodes_per_process``,
    ``timings``: `Runner.timings`).

    ``parsed``: ``[(spec, changes, budget_frac)]`` from `parse_spec`; ``max_steps``: the step cap
    (None: `default_step_cap` per task); ``model``: the driver's
    policy (`load_policy`; its default cache config is the base of every spec; it also runs
    episodes in this process); ``regimes``: ``[(delay_steps, merge_rule, threshold)]``, a row per
    cache spec and regime (default: the synchronous loop, ``[(0, "replace", 0.0)]``).
    """
    from kv_vla_ros.vla.policy import as_policy

    for i, (spec, _, frac) in enumerate(parsed):
        if frac is not None and not any(is_full_history(c) for _, c, _ in parsed[:i]):
            raise ValueError(f"--cache {spec}: budget_frac needs an earlier 'full' spec")
    regimes = [tuple(r) for r in (regimes or [(0, "replace", 0.0)])]
    cells = [Cell(task, spec, changes, frac, i, regime=r) for task in tasks
             for i, (spec, changes, frac) in enumerate(parsed) for r in regimes]
    named = len(regimes) > 1 or regimes[0][:2] != (0, "replace")
    base = as_policy(model).default_cache_config()
    local = worker_state(model_path, model)
    pids: list[int] = []
    desc = f"eval {len(tasks)} task(s) x {len(parsed)} config(s)"
    try:
        with Runner(worker_state, (model_path,), config, total=len(cells) * len(seeds), desc=desc,
                    local_state=local) as runner:
            for second in (False, True):
                todo = [c for c in cells if (c.frac is not None) == second]
                for cell in todo:
                    _resolve(cell, base, model_path, _full_seen_before(cells, cell) if second else None)
                ready = [c for c in todo if not c.row]
                runner.skip(len(seeds) * (len(todo) - len(ready)))
                items = [(c.task, c.cfg, c.untrained_gate, seed, default_step_cap(c.task, max_steps), c.regime,
                          c.history)
                         for c in ready for seed in seeds]
                records = runner.map(episode_item, items)
                pids.extend(runner.item_pids)
                for k, cell in enumerate(ready):
                    mine = records[k * len(seeds):(k + 1) * len(seeds)]
                    errors = [r["error"] for r in mine if "error" in r]
                    if errors:
                        cell.row = {"task": cell.task, "policy": cell.spec, "error": errors[0]}
                    else:
                        cell.row = summarize_task(cell.task, cell.spec, cell.cfg, mine)
                        delay, merge, threshold = cell.regime
                        cell.row.update(inference_delay_steps=delay, action_chunk_merge=merge,
                                        action_chunk_threshold="auto" if threshold is None else threshold)
                        if named:  # one row per regime: table and plot name it
                            cell.row["policy"] = f"{cell.spec} | {merge} D={delay}"
                        cell.row["cache_label"] = cell.label + (f" | {merge} D={delay}" if named else "")
            meta = {"workers": runner.workers, "nodes": len(runner.nodes_used),
                    "ray": runner.config.uses_ray, "ray_address": runner.config.ray_address,
                    "startup_s": runner.startup_s or 0.0, "driver_works": runner.driver_works,
                    "episodes_per_process": sorted(Counter(pids).values(), reverse=True)}
        meta["timings"] = runner.timings  # after close: with the runtime's shutdown
    finally:
        close_state(local)
    return [c.row for c in cells], meta


__all__ = ["evaluate_grid", "episode_item", "worker_state", "Cell"]
