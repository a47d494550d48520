"""`kv-vla bench soak`: hours, not minutes. Drives kv_vla_node (its own process) over DDS for
``--steps`` control steps across many episodes, with live parameter changes (cache policy, budget,
window, stale timeout), reset calls and bad frames mixed in, and reports the node's resident memory,
tokens held, KV bytes and inference latency at the start and at the end: memory and latency must
stay flat (within ``--tolerance``), tokens held never above the budget in force (budgets under the
histories an episode streams, derived from the model's cache config), and no exception in the
node's log. Table + PNG plot + JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from kv_vla_ros.bench.control_rate import _Listener, _model_dir
from kv_vla_ros.machine_load import OtherLoad
from kv_vla_ros.ros.processes import (POLICY_MODULE, _call, get_params, pick_free_domain_id, set_params, spawn_node,
                                      stop_node, wait_active)

REPO = Path(__file__).resolve().parents[2]
MAX_RECENT = 3  # the largest cache.recent_chunks the changes set


def live_budgets(budget: int | None, sink: int, chunk: int) -> tuple[int, int, int]:
    """The budgets the live changes cycle through, from the running cache's config: the start-up
    budget, half of it and two thirds of it (shipped model: 96 -> 48, 64), never under what the
    prefix plus the largest recent window need. A budget that an episode's history never reaches
    tests nothing: an episode streams ``chunk`` tokens per frame, so these are exceeded within the
    first seconds of every episode (the report counts how often)."""
    base = budget if budget is not None and budget > 0 else sink + 16 * chunk
    floor = sink + (MAX_RECENT + 1) * chunk
    return max(floor, base // 2), base, max(floor, 2 * base // 3)


def live_changes(budgets: tuple[int, int, int]) -> list[dict]:
    """Live parameter changes, applied in turn (a cache layout change waits for the next episode);
    after a whole cycle the cache is back at its start-up config (gated, the first budget, one
    recent chunk)."""
    small, base, middle = budgets
    return [
        {"cache.budget_tokens": small}, {"cache.eviction": "sink_window"}, {"stale_timeout_s": 1.5},
        {"cache.budget_tokens": middle}, {"cache.eviction": "h2o"}, {"cache.recent_chunks": MAX_RECENT},
        {"cache.eviction": "window"}, {"cache.recent_chunks": 2}, {"cache.eviction": "gated"},
        {"stale_timeout_s": 2.0}, {"cache.budget_tokens": base}, {"cache.recent_chunks": 1},
    ]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=20000, help="control steps (node control ticks) to run")
    parser.add_argument("--control-rate-hz", type=float, default=50.0, help="node control rate")
    parser.add_argument("--frame-rate-hz", type=float, default=25.0, help="camera rate")
    parser.add_argument("--episode-s", type=float, default=20.0, help="seconds per episode (a new instruction)")
    parser.add_argument("--change-every-s", type=float, default=7.0, help="a live parameter change this often")
    parser.add_argument("--reset-every-s", type=float, default=31.0, help="a ~/reset call this often")
    parser.add_argument("--bad-frame-every", type=int, default=20, help="every N-th frame is malformed")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed relative change start -> end")
    parser.add_argument("--params-file", default=str(REPO / "config" / "kv_vla.yaml"))
    parser.add_argument("--out", default=str(REPO / "runs" / "soak"))


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _bad_frame(listener: _Listener, k: int) -> None:
    """A malformed Image (data shorter than step x height, or an unknown encoding)."""
    msg = listener._Image(height=40, width=40, encoding="rgb8" if k % 2 else "yuv422_yuy2", step=120)
    msg.data = bytes(120 * 40 - (7 if k % 2 else 0))
    msg.header.stamp = listener.node.get_clock().now().to_msg()
    listener.image_pub.publish(msg)


def _worst(samples: list[dict], key: str) -> float:
    values = [x[key] for x in samples if x.get(key, float("nan")) == x.get(key, float("nan"))]
    return max(values, default=float("nan"))


def sample_from_diagnostics(d: dict, t: float, control_steps: int, rss: int) -> dict:
    """One soak sample from a kv_vla_node diagnostics status (key -> string). ``budget_tokens``
    is the budget of the cache config the node reports with the same figures (None: no cap)."""
    cache = json.loads(d["cache_config"])
    budget = cache.get("budget_tokens")
    return {"t": t, "control_steps": control_steps, "rss": rss, "tokens_held": int(d["tokens_held"]),
            "tokens_seen": int(d["tokens_seen"]), "kv_bytes": int(d["kv_bytes"]),
            "latency_p50_ms": float(d["latency_p50_ms"]), "episodes": int(d["episodes"]),
            "inferences": int(d["inferences"]), "inference_errors": int(d["inference_errors"]),
            "frames_rejected": int(d["frames_rejected"]), "eviction": cache.get("eviction"),
            "budget_tokens": budget if budget is None or budget >= 0 else None,
            "layer_budgets": cache.get("layer_budgets"), "gc_pause_max_ms": float(d.get("gc_pause_max_ms", "nan")),
            "publish_interval_p99_ms": float(d.get("publish_interval_p99_ms", "nan")),
            "tick_late_max_ms": float(d.get("tick_late_max_ms", "nan")),
            "tick_duration_max_ms": float(d.get("tick_duration_max_ms", "nan"))}


def run(args: argparse.Namespace) -> int:
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from kv_vla_ros.progress import progress_bar

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, model_note = _model_dir(args.model, Path(tempfile.mkdtemp(prefix="soak_")))
    domain = pick_free_domain_id(salt=53)
    log = out / "kv_vla_node.log"
    proc = spawn_node(POLICY_MODULE, domain, {"model_path": str(model_dir), "control_rate_hz": args.control_rate_hz,
                                              "stale_timeout_s": 2.0}, args.params_file, log)
    rclpy.init(args=[], domain_id=domain)
    node = rclpy.create_node("kv_vla_soak")
    listener = _Listener(node)
    instruction_pub = node.create_publisher(String, "instruction", 10)
    frames = np.random.default_rng(0).integers(0, 256, (32, 56, 56, 3), dtype=np.uint8)
    rng = random.Random(0)
    samples, changes, rejected_changes = [], 0, []
    try:
        set_params(rclpy, node, {"control_rate_hz": args.control_rate_hz})  # waits for the node to come up
        wait_active(rclpy, node, listener.diag, proc)
        start_cfg = get_params(rclpy, node, ["cache.budget_tokens", "cache.sink_tokens", "cache.chunk_size"])
        budgets = live_budgets(start_cfg["cache.budget_tokens"], start_cfg["cache.sink_tokens"],
                               start_cfg["cache.chunk_size"])
        plan = live_changes(budgets)
        other_load = OtherLoad([proc.pid, os.getpid()])
        t0 = time.monotonic()
        next_frame = next_episode = t0
        next_change, next_reset, k, episode, ticks0 = t0 + args.change_every_s, t0 + args.reset_every_s, 0, 0, None
        bar = progress_bar(total=args.steps, desc="bench soak", unit="step")
        while True:
            now = time.monotonic()
            if now >= next_episode:
                episode += 1
                instruction_pub.publish(String(data=rng.choice(["go to the key", "go to the door", "pick up the ball",
                                                                "open the red door"]) + f" {episode}"))
                next_episode = now + args.episode_s
            if now >= next_frame:
                k += 1
                _bad_frame(listener, k) if k % args.bad_frame_every == 0 else listener.publish_frame(frames[k % 32])
                next_frame += 1.0 / args.frame_rate_hz
            if now >= next_change:
                change = plan[changes % len(plan)]
                changes += 1
                rejected_changes += [(change, r.reason) for r in set_params(rclpy, node, change) if not r.successful]
                next_change = now + args.change_every_s
            if now >= next_reset:
                _call(rclpy, node, Trigger, "/kv_vla_node/reset", Trigger.Request())
                next_reset = now + args.reset_every_s
            n_diag = len(listener.diag)
            rclpy.spin_once(node, timeout_sec=max(0.0, min(next_frame, next_episode) - time.monotonic()))
            if len(listener.diag) > n_diag and proc.poll() is None:
                d = listener.diag[-1][1]
                ticks = int(d["control_ticks"])
                ticks0 = ticks if ticks0 is None else ticks0
                samples.append(sample_from_diagnostics(d, time.monotonic() - t0, ticks - ticks0, rss_bytes(proc.pid)))
                samples[-1]["other_cpu_cores"] = other_load.cores()
                bar.update(samples[-1]["control_steps"] - bar.n)
                if samples[-1]["control_steps"] >= args.steps:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"bench soak: kv_vla_node exited with {proc.returncode}; see {log}")
        bar.close()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        rc = stop_node(proc)
    cycle_s = len(plan) * args.change_every_s
    return report(args, samples, log.read_text(), rc, changes, rejected_changes, model_note, budgets, cycle_s,
                  sent=list(listener.sent))


FIGURES = ("rss", "latency_p50_ms", "kv_bytes", "tokens_held", "other_cpu_cores")
RATE_FLOOR = 0.95  # a one-second window below this share of control_rate_hz fails the soak


def rate_windows(sent: list[float], rate_hz: float) -> dict:
    """The node's published commands (publisher send times, s) in whole one-second windows from the
    first: per window the commands sent (= the control rate achieved) and the p99 of the intervals
    between them (ms); the windows under ``RATE_FLOOR`` x ``rate_hz`` and the runs they form."""
    times = np.sort(np.asarray(sent, dtype=np.float64))
    if times.size < 2:
        return {"rates": [], "interval_p99_ms": [], "low": [], "min_rate": float("nan"), "longest_low_run_s": 0}
    edges = np.arange(times[0], times[-1], 1.0)
    index = np.searchsorted(times, edges)
    rates, p99 = [], []
    for a, b in zip(index, list(index[1:]) + [None]):
        if b is None:  # the last window is cut by the end of the run
            break
        rates.append(int(b - a))
        gaps = np.diff(times[a:b + 1]) * 1e3
        p99.append(float(np.percentile(gaps, 99)) if gaps.size else float("nan"))
    low = [i for i, r in enumerate(rates) if r < RATE_FLOOR * rate_hz]
    runs, run = [], 0
    for i in range(len(rates)):
        run = run + 1 if i in low else 0
        runs.append(run)
    return {"rates": rates, "interval_p99_ms": p99, "low": low,
            "min_rate": float(min(rates)) if rates else float("nan"), "longest_low_run_s": max(runs, default=0)}


def windows(samples: list[dict], cycle_s: float) -> tuple[dict, dict, tuple[float, float], tuple[float, float]]:
    """Medians of each figure at the start and at the end of the run. The first 10% is warm-up
    (allocator, caches); each window spans one whole cycle of the live changes (at most 40% of the
    run), so both see every cache config for the same time and the comparison is like for like;
    latency is compared at the budgets both windows ran under. -> (start, end, start span (s), end
    span (s))."""
    total = samples[-1]["t"]
    width = min(cycle_s, 0.4 * total)
    spans = (0.1 * total, 0.1 * total + width), (total - width, total + 1e-9)

    chosen = [[s for s in samples if lo <= s["t"] <= hi] or samples[-1:] for lo, hi in spans]
    # latency depends on the budget in force: compared at the budgets both windows ran under, each
    # budget weighted alike in both (a window that happened to hold 64 tokens where the other held 48
    # is no regression); all samples when they share none
    common = set.intersection(*({repr(s["budget_tokens"]) for s in window} for window in chosen))

    def medians(window):
        out = {key: float(np.median([s.get(key, np.nan) for s in window])) for key in FIGURES}
        if common:
            per_budget = [[s["latency_p50_ms"] for s in window if repr(s["budget_tokens"]) == b] for b in common]
            out["latency_p50_ms"] = float(np.mean([np.median(values) for values in per_budget]))
        return out

    return medians(chosen[0]), medians(chosen[1]), spans[0], spans[1]


def budget_figures(samples: list[dict]) -> dict:
    """Tokens held against the budget each sample was taken under (the node reports the config with
    its figures): the worst excess (must be <= 0), samples without a cap, how many samples had a
    history (tokens seen) longer than their budget (the bound was really exercised), and the peak
    held per budget."""
    capped = [s for s in samples if s["budget_tokens"] is not None and not s.get("layer_budgets")]
    per_budget: dict[int, int] = {}
    for s in capped:
        per_budget[s["budget_tokens"]] = max(per_budget.get(s["budget_tokens"], 0), s["tokens_held"])
    return {"worst_excess": max((s["tokens_held"] - s["budget_tokens"] for s in capped), default=0),
            "uncapped_samples": len(samples) - len(capped),
            "over_budget_history_share": (sum(s["tokens_seen"] > s["budget_tokens"] for s in capped)
                                          / max(1, len(capped))),
            "peak_held_per_budget": {str(b): per_budget[b] for b in sorted(per_budget)},
            "peak_seen": max((s["tokens_seen"] for s in samples), default=0)}


def report(args, samples, log_text: str, rc: int, changes: int, rejected_changes: list, model_note: str,
           budgets: tuple[int, ...], cycle_s: float, sent: list[float] | None = None) -> int:
    if len(samples) < 4:
        raise SystemExit("bench soak: too few diagnostics to compare start and end (run more --steps)")
    start, end, start_span, end_span = windows(samples, cycle_s)
    exceptions = log_text.count("Traceback") + log_text.count("inference failed")
    peak = max(s["tokens_held"] for s in samples)
    bf = budget_figures(samples)
    checks = {
        "rss_flat": end["rss"] <= start["rss"] * (1 + args.tolerance),
        "latency_flat": abs(end["latency_p50_ms"] / start["latency_p50_ms"] - 1) <= args.tolerance,
        "tokens_within_budget": bf["worst_excess"] <= 0 and bf["uncapped_samples"] == 0,
        # budgets that the histories never exceed would make the previous check vacuous
        "budget_exercised": bf["over_budget_history_share"] >= 0.5,
        "changes_accepted": not rejected_changes,
        "no_exception": exceptions == 0 and samples[-1]["inference_errors"] == 0 and rc == 0,
    }
    rate = rate_windows(sent, args.control_rate_hz) if sent is not None else None
    if rate is not None:  # every one-second window at >= 95% of the control rate
        checks["control_rate"] = bool(rate["rates"]) and not rate["low"]
    rows = [("resident memory (MB)", start["rss"] / 1e6, end["rss"] / 1e6),
            ("inference latency p50 (ms)", start["latency_p50_ms"], end["latency_p50_ms"]),
            ("KV bytes held (kB)", start["kv_bytes"] / 1e3, end["kv_bytes"] / 1e3),
            ("tokens held", start["tokens_held"], end["tokens_held"]),
            ("CPU cores busy beside the soak", start["other_cpu_cores"], end["other_cpu_cores"])]
    last = samples[-1]
    lines = [f"soak: {last['control_steps']} control steps at {args.control_rate_hz:g} Hz, "
             f"{last['episodes']} episodes, "
             f"{last['inferences']} inferences, {changes} live parameter changes ({len(rejected_changes)} rejected), "
             f"{last['frames_rejected']} bad frames rejected, {last['t'] / 60:.1f} min; model {model_note}",
             f"| figure | start ({start_span[0]:.0f}-{start_span[1]:.0f} s) "
             f"| end ({end_span[0]:.0f}-{end_span[1]:.0f} s)"
             " | end / start |", "|---|---|---|---|"]
    lines += [f"| {name} | {a:.2f} | {b:.2f} | {b / a if a else float('nan'):.3f} |" for name, a, b in rows]
    lines.append(f"budgets set live {'/'.join(map(str, budgets))}; tokens held vs the budget in force, every "
                 f"diagnostics sample ({len(samples)}): worst excess {bf['worst_excess']}, peak held per budget "
                 f"{bf['peak_held_per_budget']}; history longer than the budget in "
                 f"{100 * bf['over_budget_history_share']:.0f}% of samples (peak tokens seen {bf['peak_seen']})")
    lines.append(f"peak tokens held {peak}; exceptions in the node log: {exceptions}; node exit code {rc}")
    if rate is not None:
        p99 = [v for v in rate["interval_p99_ms"] if v == v]
        lines.append(f"control rate per one-second window ({len(rate['rates'])} windows, "
                     f"{args.control_rate_hz:g} Hz set): "
                     f"min {rate['min_rate']:.0f}/s, median {np.median(rate['rates']):.0f}/s; "
                     f"{len(rate['low'])} windows under {RATE_FLOOR:.0%} (longest run {rate['longest_low_run_s']} s); "
                     f"publish interval p99 per window: median {np.median(p99):.1f} ms, worst {max(p99):.1f} ms; "
                     f"longest garbage-collector pause in the node "
                     f"{max((x.get('gc_pause_max_ms', 0.0) for x in samples), default=0.0):.1f} ms; "
                     f"control tick: latest start {_worst(samples, 'tick_late_max_ms'):.1f} ms after its period, "
                     f"longest run {_worst(samples, 'tick_duration_max_ms'):.1f} ms")
    lines.append("checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({
        "meta": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))} | {"model": model_note},
        "budgets": list(budgets), "start": start, "end": end, "start_span_s": start_span, "end_span_s": end_span,
        "budget_figures": bf, "peak_tokens_held": peak, "exceptions": exceptions, "node_exit_code": rc,
        "checks": checks, "rejected_changes": [[c, r] for c, r in rejected_changes], "samples": samples,
        "rate_windows": rate},
        indent=1) + "\n")
    _plot(samples, out / "soak.png")
    print(f"wrote {out / 'results.json'} and {out / 'soak.png'}")
    return 0 if all(checks.values()) else 1


def _plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s["control_steps"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for ax, key, scale, label in ((axes[0], "rss", 1e-6, "resident memory (MB)"),
                                  (axes[1], "latency_p50_ms", 1.0, "inference p50 (ms)"),
                                  (axes[2], "tokens_held", 1.0, "tokens held"),
                                  (axes[3], "other_cpu_cores", 1.0, "other processes (cores)")):
        ax.plot(steps, [s.get(key, float("nan")) * scale for s in samples])
        ax.set_ylabel(label)
    axes[2].step(steps, [s["budget_tokens"] or 0 for s in samples], where="post", color="red", linestyle="--",
                 label="budget in force")
    axes[2].legend()
    axes[3].set_xlabel("control steps")
    fig.suptitle("kv_vla_node soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["configure", "run", "rss_bytes", "rate_windows", "wait_active", "set_params", "get_params",
           "live_budgets", "live_changes", "sample_from_diagnostics", "budget_figures", "windows", "report"]
