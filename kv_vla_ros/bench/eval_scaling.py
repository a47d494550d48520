"""`kv-vla bench eval-scaling`: the same closed-loop evaluation grid run sequentially (in-process,
one torch thread: what `kv-vla eval --workers 1` does with its default ``--threads 1``) and on
``--workers N``, in one run; prints both wall times and the speedup, and checks that the two gave
the same episodes.

Both runs start from the model this process already loaded (the command loads it once either
way). The parallel wall time is end to end, as `kv-vla eval --workers N` spends it: starting Ray,
each actor importing torch and loading the model, the work, and shutting Ray down; this process is
one of the N workers on a local runtime (N - 1 actors) and runs episodes from the first second.
``timings`` breaks the start-up down (``ray_init_s``, ``actors_ready_s``, ``startup_s``: first
actor result, ``shutdown_s``). Writes bench_eval_scaling.json, .md and .png into --out. A
benchmark: run it on a quiet machine (other load on the cores skews the ratio).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kv_vla_ros.sim.tasks import EVAL_TASKS

# What must agree episode by episode (latency differs by nature).
SAME = ("seed", "success", "length", "tokens_seen", "mean_held", "peak_held", "peak_bytes")


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.cache.spec import add_cache_argument

    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--tasks", nargs="+", default=EVAL_TASKS)
    parser.add_argument("--episodes", type=int, default=100, help="eval seeds per task (default 100)")
    add_cache_argument(parser)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="parallel workers of the second run (default 2)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR", help="run the parallel side on this cluster")
    parser.add_argument("--out", default="runs/bench_eval_scaling")
    parser.add_argument("--no-progress", action="store_true")


def mismatches(a: list[dict], b: list[dict]) -> list[str]:
    """Where two grids' rows differ in any per-episode outcome (empty: the same episodes)."""
    out = []
    for ra, rb in zip(a, b):
        pa, pb = ra.get("per_episode", {}), rb.get("per_episode", {})
        for key in SAME:
            if pa.get(key) != pb.get(key):
                out.append(f"{ra['task']} {ra['policy']}: {key}")
    if len(a) != len(b):
        out.append(f"{len(a)} rows vs {len(b)}")
    return out


def _plot(seq_s: float, par_s: float, workers: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["sequential", f"{workers} workers"], [seq_s, par_s], color=["tab:gray", "tab:blue"])
    ax.set(ylabel="wall time (s)", title=f"closed-loop eval: {seq_s / par_s:.2f}x with {workers} workers")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.eval.grid import evaluate_grid
    from kv_vla_ros.parallel.runner import RunnerConfig
    from kv_vla_ros.sim import eval_seeds, normalize_task
    from kv_vla_ros.vla import VLAModel, model_path_or_default

    if args.episodes < 1:
        raise SystemExit("kv-vla bench eval-scaling: --episodes must be >= 1")
    if args.workers < 2 and args.ray_address is None:
        raise SystemExit("kv-vla bench eval-scaling: --workers must be >= 2 (the sequential run is the baseline)")
    torch.set_num_threads(1)  # what `kv-vla eval` uses by default (--threads 1), and what each worker uses
    model_path = model_path_or_default(args.model)
    model = VLAModel.from_pretrained(model_path)
    parsed = [(spec, *parse_spec(spec, model.config.cache)) for spec in args.cache or ["full"]]
    tasks = [normalize_task(t) for t in args.tasks]
    seeds = eval_seeds(args.episodes)
    progress = not args.no_progress
    t0 = time.perf_counter()
    seq_rows, seq_how = evaluate_grid(model, model_path, tasks, parsed, seeds, args.max_steps,
                                RunnerConfig(workers=1, progress=progress))
    seq_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    par_rows, how = evaluate_grid(model, model_path, tasks, parsed, seeds, args.max_steps,
                                  RunnerConfig(workers=args.workers, ray_address=args.ray_address, progress=progress))
    par_s = time.perf_counter() - t0
    diff = mismatches(seq_rows, par_rows)
    episodes = len(tasks) * len(parsed) * len(seeds)
    result = {"model": model_path, "tasks": tasks, "policies": [p[0] for p in parsed], "episodes_per_task": len(seeds),
              "episodes": episodes, "sequential_s": seq_s, "parallel_s": par_s, "speedup": seq_s / par_s,
              "sequential_busy_s": sum(seq_how["timings"]["busy_s"].values()),
              "startup_s": how["startup_s"], "timings": how.get("timings", {}),
              "driver_works": how.get("driver_works", False), "episodes_per_process": how["episodes_per_process"],
              "workers": how["workers"], "nodes": how["nodes"], "ray_address": args.ray_address,
              "same_episodes": not diff, "mismatches": diff[:20]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_eval_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    who = (f"this process + {how['workers'] - 1} Ray actor(s)" if how.get("driver_works")
           else f"{how['workers']} Ray actors")
    table = ("| run | episodes | wall s | episodes/s | speedup |\n|---|---|---|---|---|\n"
             f"| sequential (1 process, 1 thread) | {episodes} | {seq_s:.1f} | {episodes / seq_s:.2f} | 1.00x |\n"
             f"| {how['workers']} workers ({who}, {how['nodes']} node(s), first actor result after "
             f"{how['startup_s']:.1f} s) | {episodes} | "
             f"{par_s:.1f} | {episodes / par_s:.2f} | {seq_s / par_s:.2f}x |\n")
    (out / "bench_eval_scaling.md").write_text(table)
    _plot(seq_s, par_s, how["workers"], out / "bench_eval_scaling.png")
    print(table, end="")
    t = how.get("timings", {})
    busy = ", ".join(f"{v:.1f}" for v in (t.get("busy_s") or {}).values())
    print(f"speedup {seq_s / par_s:.2f}x end to end (Ray up after {t.get('ray_init_s') or 0:.1f} s, actors ready "
          f"after {t.get('actors_ready_s')} s, first actor result after {how['startup_s']:.1f} s, Ray shut down in "
          f"{t.get('shutdown_s') or 0:.1f} s; episodes per process {how['episodes_per_process']}, busy s per process "
          f"[{busy}] vs {result['sequential_busy_s']:.1f} s of episodes in the sequential run); "
          f"episodes identical: {'yes' if not diff else 'NO: ' + ', '.join(diff[:5])}")
    print(f"wrote {out}/bench_eval_scaling.json, .md, .png")
    return 0 if not diff else 1


__all__ = ["configure", "run", "mismatches"]
