"""`kv-vla bench ros`: the policy node's publish intervals (p50/p99) and achieved rate at several
control rates while inference runs on the CPU, and the share of camera frames dropped (the node
infers on the newest frame only). The node runs in its own process; this process is the camera
(random frames at --frame-rate-hz over DDS on loopback) and the listener. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from kv_vla_ros.bench.seams import configure_seams, run_seams
from kv_vla_ros.ros.processes import POLICY_MODULE, pick_free_domain_id, spawn_node, stop_node

REPO = Path(__file__).resolve().parents[2]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model; if it is missing, "
                                                      "a random model of the same architecture)")
    parser.add_argument("--rates", type=float, nargs="+", default=[20.0, 50.0], help="control rates (Hz)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per rate")
    parser.add_argument("--frame-rate-hz", type=float, default=30.0, help="camera rate")
    parser.add_argument("--frame-size", type=int, default=56, help="square rgb8 frame side (px)")
    parser.add_argument("--params-file", default=str(REPO / "config" / "kv_vla.yaml"))
    parser.add_argument("--control-rate-hz", type=float, default=50.0, help="control rate of the seam measurement")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_ros"))
    configure_seams(parser)


def _model_dir(arg: str | None, tmp: Path) -> tuple[Path, str]:
    from kv_vla_ros.vla import VLAConfig, VLAModel, model_path_or_default

    path = Path(model_path_or_default(arg))
    if (path / "config.json").is_file():
        return path, str(path)
    if arg:
        raise SystemExit(f"bench ros: no checkpoint at {path}")
    # Latency does not depend on the weights: the shipped architecture with random weights.
    VLAModel(VLAConfig()).save_pretrained(tmp / "random")
    return tmp / "random", "random weights, shipped architecture (no trained model found)"


class _Listener:
    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float32MultiArray

        self.node = node
        self.sent: list[float] = []  # publisher-side send times of `action`
        self.diag: list[tuple[float, dict]] = []
        node.create_subscription(Float32MultiArray, "action",
                                 lambda _m, info: self.sent.append(info["source_timestamp"] * 1e-9), 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.image_pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
        self._Image = Image

    def _on_diag(self, msg):
        for status in msg.status:
            if status.name.startswith("kv_vla_node"):
                self.diag.append((time.monotonic(), {kv.key: kv.value for kv in status.values}))

    def publish_frame(self, rgb: np.ndarray):
        from kv_vla_ros.data.image_conversion import fill_image_msg

        msg = fill_image_msg(self._Image(), rgb)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.image_pub.publish(msg)


def _spin_for(rclpy, listener: _Listener, seconds: float, frame_period: float, frames: np.ndarray) -> None:
    end, next_frame, k = time.monotonic() + seconds, time.monotonic(), 0
    while time.monotonic() < end:
        if time.monotonic() >= next_frame:
            listener.publish_frame(frames[k % len(frames)])
            k, next_frame = k + 1, next_frame + frame_period
        rclpy.spin_once(listener.node, timeout_sec=max(0.0, min(next_frame, end) - time.monotonic()))


def _set_rate(rclpy, node, rate: float) -> None:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = node.create_client(SetParameters, "/kv_vla_node/set_parameters")
    if not client.wait_for_service(timeout_sec=30):
        raise SystemExit("bench ros: kv_vla_node's parameter service did not come up")
    future = client.call_async(SetParameters.Request(
        parameters=[Parameter("control_rate_hz", value=float(rate)).to_parameter_msg()]))
    rclpy.spin_until_future_complete(node, future, timeout_sec=10)
    if not future.done() or not future.result().results[0].successful:
        raise SystemExit(f"bench ros: control_rate_hz := {rate} was not accepted")
    node.destroy_client(client)


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.ros.processes import wait_active

    if args.extra_delay_ms:  # action chunk seams (bench_seams)
        if not args.model:
            raise SystemExit("bench ros: --extra-delay-ms needs --model (a chunked checkpoint; --make-tiny-pi0 "
                             "writes one)")
        return run_seams(args)
    import rclpy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ros_"))
    model_dir, model_note = _model_dir(args.model, tmp)
    domain = pick_free_domain_id(salt=31)
    proc = spawn_node(POLICY_MODULE, domain, {"model_path": str(model_dir), "instruction": "go to the key",
                                              "stale_timeout_s": 2.0}, args.params_file, out / "kv_vla_node.log")
    rclpy.init(args=[], domain_id=domain)
    node = rclpy.create_node("kv_vla_bench_ros")
    listener = _Listener(node)
    frames = np.random.default_rng(0).integers(0, 256, (16, args.frame_size, args.frame_size, 3), dtype=np.uint8)
    rows = []
    try:
        print(f"bench ros: model {model_note}; camera {args.frame_rate_hz:g} Hz {args.frame_size}px rgb8; "
              f"{args.seconds:g} s per rate", flush=True)
        for rate in args.rates:
            _set_rate(rclpy, node, rate)
            wait_active(rclpy, node, listener.diag, proc)
            _spin_for(rclpy, listener, 2.0, 1.0 / args.frame_rate_hz, frames)  # warm-up at the new rate
            t0, n0 = time.monotonic(), len(listener.sent)
            d0 = listener.diag[-1][1]
            _spin_for(rclpy, listener, args.seconds, 1.0 / args.frame_rate_hz, frames)
            _spin_for(rclpy, listener, 1.1, 1.0 / args.frame_rate_hz, frames)  # one more diagnostics message
            d1 = next(d for t, d in listener.diag if t > t0 + args.seconds)
            sent = np.asarray(listener.sent[n0:])
            sent = sent[sent <= sent[0] + args.seconds]
            iv = np.diff(sent) * 1e3
            received = int(d1["frames_received"]) - int(d0["frames_received"])
            dropped = int(d1["frames_dropped"]) - int(d0["frames_dropped"])
            rows.append({"control_rate_hz": rate, "achieved_hz": (sent.size - 1) / (sent[-1] - sent[0]),
                         "interval_p50_ms": float(np.percentile(iv, 50)),
                         "interval_p99_ms": float(np.percentile(iv, 99)),
                         "interval_max_ms": float(iv.max()), "inference_p50_ms": float(d1["latency_p50_ms"]),
                         "inference_p99_ms": float(d1["latency_p99_ms"]), "frames_received": received,
                         "frames_dropped": dropped, "dropped_share": dropped / received if received else float("nan")})
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        stop_node(proc)
    header = ("| control rate | achieved | interval p50 | interval p99 | interval max | inference p50 / p99 "
              "| frames dropped |\n|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['control_rate_hz']:g} Hz | {r['achieved_hz']:.2f} Hz | {r['interval_p50_ms']:.1f} ms | "
        f"{r['interval_p99_ms']:.1f} ms | {r['interval_max_ms']:.1f} ms | {r['inference_p50_ms']:.1f} / "
        f"{r['inference_p99_ms']:.1f} ms | {r['dropped_share']:.0%} ({r['frames_dropped']}/{r['frames_received']}) |"
        for r in rows]
    table = "\n".join(lines)
    print(table)
    meta = {"model": model_note, "frame_rate_hz": args.frame_rate_hz, "frame_size": args.frame_size,
            "seconds": args.seconds}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


__all__ = ["configure", "run"]
