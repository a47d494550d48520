"""`kv-vla bench ros --model <π0 checkpoint> --extra-delay-ms 30 150`: action chunk seams.

For each extra inference delay, kv_vla_node (its own process, `delayed_node`) serves the
checkpoint at ``--control-rate-hz`` from cameras and a joint state published here, under two
settings: *before* (``action_chunk_threshold: 0``: the next inference starts when the chunk is used
up, the last action is held meanwhile), *after* (``--threshold``, ``action_chunk_merge:
blend``: the next inference starts while the chunk runs, the overlap is crossfaded) and *rtc*
(``--threshold``, ``action_chunk_merge: rtc``: real-time chunking, the new chunk sampled toward
the actions queued when its inference started; a flow policy, π0). Over
``--ticks`` control ticks each it reports: ticks with no fresh action (a held repeat or a stop),
the jump between consecutive commands at chunk seams and inside chunks (max over dimensions,
p50/p99), and the control rate achieved. Table (results.md), JSON and a PNG plot of one joint over
a few seams, before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SETTINGS = (("before", 0.0, "replace"), ("after", None, "blend"), ("rtc", None, "rtc"))  # None: --threshold


def configure_seams(parser) -> None:
    parser.add_argument("--extra-delay-ms", type=float, nargs="+", default=None,
                        help="measure action chunk seams with these extra inference delays (needs a chunked "
                             "checkpoint, e.g. π0; see --make-tiny-pi0)")
    parser.add_argument("--ticks", type=int, default=5000, help="control ticks measured per delay and setting")
    parser.add_argument("--threshold", type=float, default=0.5, help="action_chunk_threshold of the 'after' setting")
    parser.add_argument("--make-tiny-pi0", action="store_true",
                        help="write a tiny random π0 (2 cameras, 3-joint state, 2-dim actions, 32-action chunks) "
                             "at --model first")


def action_metrics(messages: list[tuple[float, list[float], tuple]]) -> dict:
    """``[(send time s, data, (frame stamp label, chunk row label))]`` of consecutive action messages
    -> no-fresh-action ticks, seam / in-chunk jumps (p50, p99) and the rate achieved."""
    fresh = held = 0
    seam, inside = [], []
    for (_, prev, prev_key), (_, cur, key) in zip(messages, messages[1:]):
        if not cur or key == prev_key:
            held += 1
            continue
        fresh += 1
        if prev:
            jump = float(np.max(np.abs(np.subtract(cur, prev))))
            (seam if key[0] != prev_key[0] else inside).append(jump)
    times = [m[0] for m in messages]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"ticks": len(messages) - 1, "no_fresh_action": held, "fresh": fresh, "seams": len(seam),
            "seam_jump_p50": pct(seam, 50), "seam_jump_p99": pct(seam, 99), "inside_jump_p50": pct(inside, 50),
            "inside_jump_p99": pct(inside, 99), "rate_hz": (len(times) - 1) / (times[-1] - times[0])}


class _Arm:
    """Cameras (one stamp per set) and a JointState, published from the bench's node; records the
    action messages (publisher send time, data, labels)."""

    def __init__(self, node, cameras: int, state_dim: int):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray

        self.node = node
        self.cams = [node.create_publisher(Image, f"cam{i}", qos_profile_sensor_data) for i in range(cameras)]
        self.state_pub = node.create_publisher(JointState, "joint_states", 10)
        self.messages: list[tuple[float, list[float], tuple]] = []
        node.create_subscription(Float32MultiArray, "action", self._on_action, 1000)
        self._Image, self._JointState, self.state_dim = Image, JointState, state_dim
        self.frames = np.random.default_rng(0).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
        self.k = 0

    def _on_action(self, msg, info) -> None:
        labels = tuple(d.label for d in msg.layout.dim[1:3])
        self.messages.append((info["source_timestamp"] * 1e-9, list(msg.data), labels))

    def publish(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        self.k += 1
        for pub in self.cams:
            rgb = self.frames[self.k % len(self.frames)]
            msg = self._Image(height=48, width=64, encoding="rgb8", step=192, data=rgb.tobytes())
            msg.header.stamp = stamp
            pub.publish(msg)
        self.state_pub.publish(self._JointState(name=[f"j{i}" for i in range(self.state_dim)],
                                                position=[0.1 * i for i in range(self.state_dim)]))


def _drive(rclpy, arm: _Arm, until, frame_period: float = 1 / 30) -> None:
    next_frame = time.monotonic()
    while not until():
        if time.monotonic() >= next_frame:
            arm.publish()
            next_frame += frame_period
        rclpy.spin_once(arm.node, timeout_sec=max(0.0, next_frame - time.monotonic()))


def measure_delay(args, model_dir: Path, delay_ms: float, out: Path) -> dict:
    import rclpy

    from kv_vla_ros.ros.processes import pick_free_domain_id, set_params, spawn_node, stop_node

    cfg = json.loads((model_dir / "kv_vla_policy.json").read_text())
    cameras, state_dim = cfg["num_cameras"], cfg["state_dim"]
    domain = pick_free_domain_id(salt=37 + int(delay_ms))
    params = {"model_path": str(model_dir), "image_topics": [f"cam{i}" for i in range(cameras)],
              "state_topic": "joint_states" if state_dim else "", "control_rate_hz": args.control_rate_hz,
              "stale_timeout_s": 2.0, "instruction": "pick up the red cube", "cache.policy": "sink_window",
              "cache.recent_chunks": 2, "cache.budget_tokens": 48 + 8 * 32 * cameras // 2}
    proc = spawn_node("kv_vla_ros.bench.delayed_node", domain, params, None, out / f"node_{delay_ms:g}ms.log",
                      env_extra={"KV_VLA_EXTRA_DELAY_MS": str(delay_ms)})
    rclpy.init(args=[], domain_id=domain)
    node = rclpy.create_node("kv_vla_bench_seams")
    arm = _Arm(node, cameras, state_dim)
    results = {}
    try:
        set_params(rclpy, node, {"action_chunk_threshold": 0.0})  # waits for the parameter service
        end = time.monotonic() + 120
        _drive(rclpy, arm, lambda: any(m[1] for m in arm.messages) or time.monotonic() > end or proc.poll() is not None)
        for name, threshold, merge in SETTINGS:
            threshold = args.threshold if threshold is None else threshold
            assert all(r.successful for r in set_params(rclpy, node, {"action_chunk_threshold": threshold,
                                                                      "action_chunk_merge": merge}))
            warm = time.monotonic() + 3.0
            _drive(rclpy, arm, lambda: time.monotonic() > warm)
            start = len(arm.messages)
            _drive(rclpy, arm, lambda: len(arm.messages) - start > args.ticks or proc.poll() is not None)
            window = arm.messages[start:start + args.ticks + 1]
            results[name] = {**action_metrics(window), "threshold": threshold, "merge": merge,
                             "trace": [[t, d[0] if d else None, lab[0] if lab else ""] for t, d, lab in window[:400]]}
            m = results[name]
            print(f"  delay {delay_ms:g} ms, {name}: {m['no_fresh_action']} / {m['ticks']} ticks without a fresh "
                  f"action, seam jump p50 {m['seam_jump_p50']:.3f}, rate {m['rate_hz']:.2f} Hz", flush=True)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        stop_node(proc)
    return results


def run_seams(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model)
    if args.make_tiny_pi0 and not (model_dir / "config.json").is_file():
        from kv_vla_ros.vla.pi0.tiny import write_pi0_checkpoint

        write_pi0_checkpoint(model_dir, num_cameras=2, state_dim=3, action_dim=2, chunk_size=32)
    rows = {}
    for delay in args.extra_delay_ms:
        rows[delay] = measure_delay(args, model_dir, delay, out)
    lines = ["| extra delay | setting | ticks | without a fresh action | seam jump p50 / p99 | in-chunk jump p50 / p99 "
             "| control rate |", "|---|---|---|---|---|---|---|"]
    for delay, settings in rows.items():
        for name, m in settings.items():
            lines.append(f"| {delay:g} ms | {name} (threshold {m['threshold']:g}, {m['merge']}) | {m['ticks']} | "
                         f"{m['no_fresh_action']} ({m['no_fresh_action'] / m['ticks']:.1%}) | "
                         f"{m['seam_jump_p50']:.3f} / "
                         f"{m['seam_jump_p99']:.3f} | {m['inside_jump_p50']:.3f} / {m['inside_jump_p99']:.3f} | "
                         f"{m['rate_hz']:.2f} Hz |")
    table = "\n".join(lines)
    print(table)
    (out / "seams.md").write_text(table + "\n")
    meta = {"model": str(model_dir), "control_rate_hz": args.control_rate_hz, "ticks": args.ticks}
    (out / "seams.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    _plot(rows, out / "seams.png", args.control_rate_hz)
    print(f"wrote {out / 'seams.md'}, {out / 'seams.json'} and {out / 'seams.png'}")
    return 0


def _plot(rows: dict, path: Path, rate_hz: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delay = max(rows)
    names = [name for name, _, _ in SETTINGS if name in rows[delay]]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3 * len(names)), sharex=True)
    for ax, name in zip(axes, names):
        trace = rows[delay][name]["trace"][: int(3 * rate_hz)]
        t0 = trace[0][0]
        ax.step([t - t0 for t, _, _ in trace], [v if v is not None else np.nan for _, v, _ in trace], where="post")
        for (t, _, a), (_, _, b) in zip(trace[1:], trace):
            if a != b:
                ax.axvline(t - t0, color="grey", alpha=0.3, linewidth=0.8)
        m = rows[delay][name]
        ax.set_title(f"{name}: threshold {m['threshold']:g}, {m['merge']} ({m['no_fresh_action']} of {m['ticks']} "
                     "ticks without a fresh action)", fontsize=9)
        ax.set_ylabel("joint 0 command")
    axes[-1].set_xlabel("s (grey: chunk seams)")
    fig.suptitle(f"kv_vla_node, {delay:g} ms extra inference delay, {rate_hz:g} Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["configure_seams", "run_seams", "action_metrics"]
