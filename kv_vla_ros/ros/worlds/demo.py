"""The closed-loop demo (`make demo`): minigrid_sim_node and kv_vla_node as two processes talking
over DDS on loopback, N episodes of MiniGrid-MemoryS13Random; prints the success rate, the control
rate achieved, publish intervals and tokens held vs seen, and checks the episodes against offline
closed-loop evaluation of the same seeds (same model, same cache config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kv_vla_ros.ros.processes import POLICY_MODULE, SIM_MODULE, pick_free_domain_id, ros_env, spawn_node, stop_node

REPO = Path(__file__).resolve().parents[3]  # kv_vla_ros/ros/worlds/ -> the repository
DEFAULT_TASK = "MiniGrid-MemoryS13Random-v0"


def default_params_file() -> Path:
    path = REPO / "config" / "kv_vla.yaml"
    if path.is_file():
        return path
    from ament_index_python.packages import get_package_share_directory  # installed package

    return Path(get_package_share_directory("kv_vla_ros")) / "config" / "kv_vla.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=20, help="episodes to run (default 20, ~1.5-2.5 min)")
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--params-file", default=None, help="kv_vla_node parameters (default: config/kv_vla.yaml)")
    parser.add_argument("--control-rate-hz", type=float, default=20.0)
    parser.add_argument("--max-steps", type=int, default=100, help="episode step cap (as in kv-vla eval)")
    parser.add_argument("--seed-offset", type=int, default=0, help="offset into the eval seeds")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--no-offline-check", action="store_true", help="skip the offline evaluation comparison")
    parser.add_argument("--out", default=str(REPO / "runs" / "demo"), help="node logs and summary.json")


class Monitor:
    """The demo's own ROS node: episode results, action publish times, the policy's diagnostics."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float32MultiArray, String

        from kv_vla_ros.ros.worlds.sim_node_common import RESULTS_QOS

        self.node = node
        self.results: list[dict] = []
        self.action_times: list[float] = []
        self.diagnostics: list[dict] = []
        node.create_subscription(String, "minigrid_sim_node/episode", self._on_episode, RESULTS_QOS)
        node.create_subscription(Float32MultiArray, "action", self._on_action, 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_action(self, _msg, info) -> None:
        # the publisher's own send time: intervals free of this process's scheduling delays
        self.action_times.append(info["source_timestamp"] * 1e-9)

    def _on_episode(self, msg) -> None:
        record = json.loads(msg.data)
        self.results.append(record)
        ok = sum(r["success"] for r in self.results)
        outcome = "success" if record["success"] else "failure"
        print(f"  episode {len(self.results):3d}  seed {record['seed']}  {outcome}"
              f"  {record['steps']:3d} steps   (success {ok}/{len(self.results)})", flush=True)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("kv_vla_node"):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})


def _summary(mon: Monitor, t_first: float | None, t_end: float) -> dict:
    times = np.asarray([t for t in mon.action_times if t_first is None or t >= t_first])
    intervals = np.diff(times) * 1e3 if times.size > 1 else np.asarray([np.nan])
    diag = mon.diagnostics[-1] if mon.diagnostics else {}
    seen = [int(d.get("tokens_seen", 0)) for d in mon.diagnostics]
    held = [int(d.get("tokens_held", 0)) for d in mon.diagnostics]
    succ = [r["success"] for r in mon.results]
    return {
        "episodes": len(mon.results), "success_rate": float(np.mean(succ)) if succ else float("nan"),
        "mean_steps": float(np.mean([r["steps"] for r in mon.results])) if mon.results else float("nan"),
        "control_rate_hz": float((times.size - 1) / (times[-1] - times[0])) if times.size > 1 else float("nan"),
        "publish_interval_p50_ms": float(np.percentile(intervals, 50)),
        "publish_interval_p99_ms": float(np.percentile(intervals, 99)),
        "inference_latency_p50_ms": float(diag.get("latency_p50_ms", "nan")),
        "inference_latency_p99_ms": float(diag.get("latency_p99_ms", "nan")),
        "peak_tokens_seen": max(seen, default=0), "peak_tokens_held": max(held, default=0),
        "kv_bytes_last": int(diag.get("kv_bytes", 0)), "frames_dropped": int(diag.get("frames_dropped", 0)),
        "cache_config": json.loads(diag["cache_config"]) if "cache_config" in diag else None,
        "wall_s": t_end, "per_episode": mon.results,
    }


def offline_check(model_path: str, task: str, cache: dict, seeds: list[int], max_steps: int) -> dict:
    """The same seeds through kv_vla_ros.eval's closed loop, in this process."""
    import torch

    from kv_vla_ros.cache.config import CacheConfig
    from kv_vla_ros.eval.closed_loop import evaluate_task
    from kv_vla_ros.vla import VLAModel

    torch.set_num_threads(1)  # as the node (num_threads: 1), so the float sums are the same

    model = VLAModel.from_pretrained(model_path)  # with the gate saved beside it, as the node loads it
    return evaluate_task(model, task, CacheConfig.from_dict(cache), seeds, max_steps, progress=False)


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.vla import model_path_or_default

    model_path = Path(model_path_or_default(args.model))
    if not (model_path / "config.json").is_file():
        print(f"demo: no trained model at {model_path} (train it: kv-vla train ..., or pass --model DIR)")
        return 1
    params_file = Path(args.params_file) if args.params_file else default_params_file()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = pick_free_domain_id()
    os.environ.update({k: v for k, v in ros_env(domain).items() if k.startswith("ROS_")})
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    print(f"demo: {args.episodes} episodes of {args.task}, model {model_path}, DDS domain {domain} (loopback)")
    policy = spawn_node(POLICY_MODULE, domain, {"model_path": str(model_path), "control_rate_hz": args.control_rate_hz},
                        params_file, out / "kv_vla_node.log")
    sim = spawn_node(SIM_MODULE, domain, {"task": args.task, "episodes": args.episodes, "max_steps": args.max_steps,
                                          "seed_offset": args.seed_offset}, None, out / "minigrid_sim_node.log")
    import rclpy

    rclpy.init(args=[], domain_id=domain)
    node = rclpy.create_node("kv_vla_demo_monitor")
    mon = Monitor(node)
    t0 = time.monotonic()
    failure = ""
    try:
        while len(mon.results) < args.episodes:
            rclpy.spin_once(node, timeout_sec=0.1)
            if policy.poll() is not None:
                failure = f"kv_vla_node exited with code {policy.returncode}"
            elif sim.poll() is not None and len(mon.results) < args.episodes:
                # Its last results may still wait in this node's queue: take them before judging.
                drain_end = time.monotonic() + 2.0
                while len(mon.results) < args.episodes and time.monotonic() < drain_end:
                    rclpy.spin_once(node, timeout_sec=0.1)
                if len(mon.results) < args.episodes:
                    failure = (f"minigrid_sim_node exited with code {sim.returncode}; {len(mon.results)} of "
                               f"{args.episodes} episode results reached the demo")
            elif time.monotonic() - t0 > args.timeout:
                failure = f"timed out after {args.timeout:.0f} s"
            if failure:
                break
        t_first = mon.action_times[0] if mon.action_times else None
        end = time.monotonic() + 1.2  # one more diagnostics message with the final figures
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        stop_node(sim)
        stop_node(policy)
        node.destroy_node()
        rclpy.try_shutdown()
    if failure:
        log = out / ("minigrid_sim_node.log" if "minigrid" in failure else "kv_vla_node.log")
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        print(f"demo: FAILED: {failure} (logs in {out})" + "".join(f"\n  {line}" for line in tail))
        return 1
    summary = _summary(mon, t_first, time.monotonic() - t0)
    _report(summary, mon, args, model_path)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return 0


def _report(summary: dict, mon: Monitor, args: argparse.Namespace, model_path: Path) -> None:
    """Print the run's figures; unless ``--no-offline-check``, run the same seeds offline and add
    how many episodes came out identical to ``summary["offline"]``."""
    print(f"\nsuccess rate           {summary['success_rate']:.1%} ({sum(r['success'] for r in mon.results)}"
          f"/{summary['episodes']}), mean {summary['mean_steps']:.1f} steps")
    print(f"control rate achieved  {summary['control_rate_hz']:.2f} Hz (target {args.control_rate_hz:g} Hz)")
    print(f"publish interval       p50 {summary['publish_interval_p50_ms']:.1f} ms, "
          f"p99 {summary['publish_interval_p99_ms']:.1f} ms")
    print(f"inference latency      p50 {summary['inference_latency_p50_ms']:.1f} ms, "
          f"p99 {summary['inference_latency_p99_ms']:.1f} ms (node's last window)")
    print(f"tokens held / seen     peak {summary['peak_tokens_held']} / {summary['peak_tokens_seen']} "
          f"(cache {(summary['cache_config'] or {}).get('eviction')}, "
          f"budget {(summary['cache_config'] or {}).get('budget_tokens')})")
    if args.no_offline_check or not summary["cache_config"]:
        return
    seeds = [r["seed"] for r in mon.results]
    row = offline_check(str(model_path), args.task, summary["cache_config"], seeds, args.max_steps)
    same = sum(a == b and n == m for a, b, n, m in zip(row["per_episode"]["success"], [r["success"] for r in
               mon.results], row["per_episode"]["length"], [r["steps"] for r in mon.results]))
    summary["offline"] = {"success_rate": row["success_rate"], "episodes_identical": same,
                          "mean_tokens_seen": row["mean_tokens_seen"], "mean_tokens_held": row["mean_tokens_held"]}
    print(f"offline eval, same seeds: success {row['success_rate']:.1%}; {same}/{len(seeds)} episodes identical "
          f"(outcome and length); mean tokens held/seen "
          f"{row['mean_tokens_held']:.0f}/{row['mean_tokens_seen']:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kv_vla_ros.ros.worlds.demo", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
