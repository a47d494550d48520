"""`kv-vla bench soak`: hours, not minutes. Drives kv_vla_node (its own process) over DDS for
``--steps`` control steps across many episodes, with live parameter changes (cache policy, budget,
window, stale timeout), reset calls and bad frames mixed in, and reports the node's resident memory,
tokens held, KV bytes and inference latency at the start and at the end: memory and latency must
stay flat (within ``--tolerance``), tokens never above the largest budget set, and no exception in
the node's log. Table + PNG plot + JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from kv_vla_ros.ros.bench_ros import _Listener, _model_dir
from kv_vla_ros.ros.processes import POLICY_MODULE, pick_free_domain_id, spawn_node, stop_node

REPO = Path(__file__).resolve().parents[2]
BUDGETS = (384, 512)  # the live budget changes alternate between these
CHANGES = [  # live parameter changes, applied in turn (cache layout changes wait for the next episode)
    {"cache.budget_tokens": BUDGETS[0]}, {"cache.policy": "sink_window"}, {"stale_timeout_s": 1.5},
    {"cache.budget_tokens": BUDGETS[1]}, {"cache.policy": "h2o"}, {"cache.recent_chunks": 3},
    {"cache.policy": "window"}, {"cache.recent_chunks": 2}, {"cache.policy": "gated"}, {"stale_timeout_s": 2.0},
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


def _call(rclpy, node, srv_type, name: str, request, timeout: float = 10.0):
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=30):
            raise SystemExit(f"bench soak: service {name} did not come up")
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        return future.result()
    finally:
        node.destroy_client(client)


def set_params(rclpy, node, values: dict) -> list:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    return _call(rclpy, node, SetParameters, "/kv_vla_node/set_parameters", request).results


def _bad_frame(listener: _Listener, k: int) -> None:
    """A malformed Image (data shorter than step x height, or an unknown encoding)."""
    msg = listener._Image(height=40, width=40, encoding="rgb8" if k % 2 else "yuv422_yuy2", step=120)
    msg.data = bytes(120 * 40 - (7 if k % 2 else 0))
    msg.header.stamp = listener.node.get_clock().now().to_msg()
    listener.image_pub.publish(msg)


def run(args: argparse.Namespace) -> int:
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger
    from tqdm import tqdm

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
        t0 = time.monotonic()
        next_frame = next_episode = t0
        next_change, next_reset, k, episode, ticks0 = t0 + args.change_every_s, t0 + args.reset_every_s, 0, 0, None
        bar = tqdm(total=args.steps, desc="bench soak", unit="step")
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
                change = CHANGES[changes % len(CHANGES)]
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
                samples.append({"t": time.monotonic() - t0, "control_steps": ticks - ticks0, "rss": rss_bytes(proc.pid),
                                "tokens_held": int(d["tokens_held"]), "kv_bytes": int(d["kv_bytes"]),
                                "latency_p50_ms": float(d["latency_p50_ms"]), "episodes": int(d["episodes"]),
                                "inferences": int(d["inferences"]), "inference_errors": int(d["inference_errors"]),
                                "frames_rejected": int(d["frames_rejected"]), "cache_config": d["cache_config"]})
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
    return report(args, samples, log, rc, changes, rejected_changes, model_note)


def _window(samples: list[dict], lo: float, hi: float) -> dict:
    """Median of each figure over the samples whose progress is in [lo, hi) of the run."""
    last = samples[-1]["control_steps"] or 1
    chosen = [s for s in samples if lo <= s["control_steps"] / last < hi] or samples[-1:]
    return {key: float(np.median([s[key] for s in chosen])) for key in ("rss", "latency_p50_ms", "kv_bytes",
                                                                          "tokens_held")}


def report(args, samples, log: Path, rc: int, changes: int, rejected_changes: list, model_note: str) -> int:
    if len(samples) < 4:
        raise SystemExit("bench soak: too few diagnostics to compare start and end (run more --steps)")
    # start: after the warm-up (first 10%: allocator and caches settle); end: the last 10%
    start, end = _window(samples, 0.10, 0.20), _window(samples, 0.90, 1.01)
    text = log.read_text()
    exceptions = text.count("Traceback") + text.count("inference failed")
    peak = max(s["tokens_held"] for s in samples)
    checks = {
        "rss_flat": end["rss"] <= start["rss"] * (1 + args.tolerance),
        "latency_flat": abs(end["latency_p50_ms"] / start["latency_p50_ms"] - 1) <= args.tolerance,
        "tokens_within_budget": peak <= max(BUDGETS),
        "no_exception": exceptions == 0 and samples[-1]["inference_errors"] == 0 and rc == 0,
    }
    rows = [("resident memory (MB)", start["rss"] / 1e6, end["rss"] / 1e6),
            ("inference latency p50 (ms)", start["latency_p50_ms"], end["latency_p50_ms"]),
            ("KV bytes held (kB)", start["kv_bytes"] / 1e3, end["kv_bytes"] / 1e3),
            ("tokens held", start["tokens_held"], end["tokens_held"])]
    last = samples[-1]
    lines = [f"soak: {last['control_steps']} control steps at {args.control_rate_hz:g} Hz, {last['episodes']} episodes, "
             f"{last['inferences']} inferences, {changes} live parameter changes ({len(rejected_changes)} rejected), "
             f"{last['frames_rejected']} bad frames rejected, {samples[-1]['t'] / 60:.1f} min; model {model_note}",
             "| figure | start (10-20%) | end (90-100%) | end / start |", "|---|---|---|---|"]
    lines += [f"| {name} | {a:.2f} | {b:.2f} | {b / a if a else float('nan'):.3f} |" for name, a, b in rows]
    lines.append(f"peak tokens held {peak} (largest budget {max(BUDGETS)}); exceptions in the node log: {exceptions}; "
                 f"node exit code {rc}")
    lines.append("checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({
        "meta": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))} | {"model": model_note},
        "start": start, "end": end, "peak_tokens_held": peak, "exceptions": exceptions, "checks": checks,
        "rejected_changes": [[c, r] for c, r in rejected_changes], "samples": samples}, indent=1) + "\n")
    _plot(samples, out / "soak.png")
    print(f"wrote {out / 'results.json'} and {out / 'soak.png'}")
    return 0 if all(checks.values()) else 1


def _plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s["control_steps"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, key, scale, label in ((axes[0], "rss", 1e-6, "resident memory (MB)"),
                                  (axes[1], "latency_p50_ms", 1.0, "inference p50 (ms)"),
                                  (axes[2], "tokens_held", 1.0, "tokens held")):
        ax.plot(steps, [s[key] * scale for s in samples])
        ax.set_ylabel(label)
    axes[2].axhline(max(BUDGETS), color="red", linestyle="--", label="largest budget")
    axes[2].legend()
    axes[2].set_xlabel("control steps")
    fig.suptitle("kv_vla_node soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["configure", "run", "rss_bytes", "set_params"]
