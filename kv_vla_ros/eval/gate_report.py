"""`kv-vla gate-report`: the trained gate against every baseline at equal budget, closed loop.

For each task: a ``full`` run, then every policy at each budget fraction of the full run's mean
history (``budget_frac``; never below prefix + recent window). Writes, into --out, the
``kv-vla eval`` outputs (results.json / results.md / results.png, with decision accuracy and the
"cue held at the decision" column on Memory tasks) plus:

- ``success_vs_budget.png``: success against budget per policy, one panel per task;
- ``gate_scores.png`` / ``gate_scores.json``: the trained gate's score of every chunk of a few
  episodes of the longest Memory task, with the frames that showed the cue marked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LONGEST_MEMORY_TASK = "MiniGrid-MemoryS37-v0"
DEFAULT_TASKS = ["MiniGrid-MemoryS13Random-v0", "MiniGrid-MemoryS17Random-v0", LONGEST_MEMORY_TASK,
                 "BabyAI-GoToLocal-v0"]
# (label, spec without the budget); gate_threshold=0 makes every policy fill the same budget.
EVICTIONS = [
    ("window", "window"),
    ("sink_window", "sink_window"),
    ("h2o", "h2o"),
    ("key_norm", "key_norm"),
    ("random", "random"),
    ("untrained gate", "gated:gate=untrained,gate_threshold=0"),
    ("trained gate", "gated:gate_threshold=0"),
    ("trained gate + layer budgets", "gated:gate_threshold=0,layer_budgets=calibrated"),
    ("trained gate + summaries", "gated:gate_threshold=0,summarize=true,summary_threshold=0"),
]


def grid_specs(fractions: list[float]) -> list[str]:
    """``full`` first (the budgets are fractions of its mean history), then each policy per fraction."""
    specs = ["full"]
    for frac in fractions:
        for _, spec in EVICTIONS:
            specs.append(f"{spec}{',' if ':' in spec else ':'}budget_frac={frac:g}")
    return specs


def label_of(spec: str) -> tuple[str, float | None]:
    """``(policy label, budget fraction)`` of a grid spec."""
    if spec == "full":
        return "full", None
    head, _, frac = spec.rpartition("budget_frac=")
    base = head.rstrip(",:")
    name = next(label for label, s in EVICTIONS if s == base)
    return name, float(frac)


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.parallel.runner import add_runner_arguments

    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--episodes", type=int, default=200, help="held-out eval seeds per task")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.125],
                        help="budgets as fractions of the full run's mean history (default: a quarter and an eighth)")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--trace-episodes", type=int, default=4, help="episodes in the gate-score plot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/gate_report")
    add_runner_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.eval import closed_loop_cli

    out = Path(args.out)
    # `kv-vla eval`'s own defaults for every option it has (so a new one needs no change here), then ours
    parser = argparse.ArgumentParser()
    closed_loop_cli.configure(parser)
    eval_args = parser.parse_args(["--out", str(out)])
    for name, value in vars(args).items():
        if hasattr(eval_args, name):
            setattr(eval_args, name, value)
    eval_args.cache, eval_args.seed_offset = grid_specs(args.fractions), 0
    rc = closed_loop_cli.run(eval_args)
    if rc:
        return rc
    rows = json.loads((out / "results.json").read_text())["results"]
    plot_success_vs_budget(rows, out / "success_vs_budget.png")
    if LONGEST_MEMORY_TASK in args.tasks or any("S37" in t for t in args.tasks):
        trace = gate_score_traces(args.model, LONGEST_MEMORY_TASK, args.trace_episodes, rows, args.max_steps)
        (out / "gate_scores.json").write_text(json.dumps(trace, indent=1) + "\n")
        plot_gate_scores(trace, out / "gate_scores.png")
    print(f"wrote {out}/results.md, success_vs_budget.png, gate_scores.png")
    return 0


def plot_success_vs_budget(rows: list[dict], path: Path) -> Path:
    """Success rate against the budget fraction, one line per policy, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("success_rate") is not None]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        by_policy: dict[str, list[tuple[float, float]]] = {}
        full = None
        for r in rows:
            if r["task"] != task:
                continue
            name, frac = label_of(r["policy"])
            if frac is None:
                full = r["success_rate"]
            else:
                by_policy.setdefault(name, []).append((frac, r["success_rate"]))
        for name, points in by_policy.items():
            points.sort()
            style = "-o" if "trained gate" in name and "untrained" not in name else "--."
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name, lw=2 if style == "-o" else 1)
        if full is not None:
            ax.axhline(full, color="k", lw=1, label="full")
        ax.set_xscale("log", base=2)
        ax.set_title(task.replace("MiniGrid-", "").replace("BabyAI-", "").replace("-v0", ""))
        ax.set_xlabel("budget (fraction of the full run's mean history)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("closed-loop success")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gate_score_traces(model_path: str | None, task: str, episodes: int, rows: list[dict],
                      max_steps: int = 100) -> list[dict]:
    """The trained gate's score per chunk (= per step) over a few episodes, at the quarter budget."""
    import torch

    from kv_vla_ros.sim import SimRobot, eval_seeds
    from kv_vla_ros.sim.minigrid.memory import MemoryEpisodeProbe
    from kv_vla_ros.vla import VLAModel, VLASession, model_path_or_default

    model = VLAModel.from_pretrained(model_path_or_default(model_path))
    gated = [r for r in rows if r["task"] == task and label_of(r["policy"])[0] == "trained gate" and "cache" in r]
    cfg = model.config.cache.replace(eviction="gated", gate_threshold=0.0,
                                     budget_tokens=gated[0]["cache"]["budget_tokens"] if gated else None)
    session = VLASession(model, cfg)
    robot = SimRobot(task)
    traces = []
    with torch.inference_mode():
        for seed in eval_seeds(episodes):
            frame, instruction = robot.reset(seed)
            session.reset(instruction)
            probe = MemoryEpisodeProbe(robot)
            scores: dict[int, float] = {}
            t = 0
            while not robot.done and t < max_steps:
                probe.observe(t)
                action = session.step(frame)
                scores.update({int(c): float(s) for c, s in session.stats().get("gate_scores", {}).items()})
                frame = robot.step(int(action[0])).frame
                probe.after_step()
                t += 1
            traces.append({"seed": seed, "steps": t, "success": bool(robot.success), "scores": scores,
                           "cue_steps": probe.cue_steps, "decision_step": probe.decision_step,
                           "budget_tokens": cfg.budget_tokens})
    robot.close()
    return traces


def plot_gate_scores(traces: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 1.9 * len(traces)), sharex=True, squeeze=False)
    for ax, tr in zip(axes[:, 0], traces):
        chunks = sorted(tr["scores"])
        ax.plot(chunks, [tr["scores"][c] for c in chunks], ".-", color="tab:blue", label="gate score")
        for c in tr["cue_steps"]:
            ax.axvspan(c - 0.5, c + 0.5, color="tab:orange", alpha=0.35, lw=0)
        if tr["decision_step"] is not None:
            ax.axvline(tr["decision_step"], color="k", ls="--", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"seed {tr['seed']}\n{'success' if tr['success'] else 'failure'}", fontsize=8)
    axes[0, 0].set_title("trained gate: score of each chunk (step); orange = frames showing the cue; "
                         "dashed = the decision", fontsize=9)
    axes[-1, 0].set_xlabel("chunk (control step)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["grid_specs", "label_of", "EVICTIONS", "plot_success_vs_budget", "gate_score_traces", "plot_gate_scores"]
