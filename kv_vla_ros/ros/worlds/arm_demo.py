"""The arm demo (`make demo-arm`): arm_sim_node (a Franka Panda in PyBullet that must remember a cue)
in closed loop over DDS on loopback, without a ROS 2 install; prints success, decision accuracy and
the control rate achieved.

Driver: kv_vla_node with a π0 checkpoint for the arm (``--model``, default the shipped
``models/kv-vla-arm-pi0``, trained from rosbags by ``make model-arm``; config/pi0.yaml, actions clamped
to [-1, 1], the checkpoint's own cache: its trained gate at a quarter of the history). ``--expert``
(or no checkpoint at all) lets the simulator's scripted expert drive instead (``mode: expert``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kv_vla_ros.ros.processes import ARM_SIM_MODULE, POLICY_MODULE, pick_free_domain_id, spawn_node, stop_node
from kv_vla_ros.vla import ARM_MODEL_PATH

REPO = Path(__file__).resolve().parents[3]  # kv_vla_ros/ros/worlds/ -> the repository
DEFAULT_TASK = "Arm-CueCarryLong-v0"
LOCKSTEP_STALE_S = 60.0  # kv_vla_node's stale_timeout_s in lockstep (the world waits for it)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=3, help="episodes to run (long variant: ~21 s each at 10 Hz)")
    parser.add_argument("--task", default=DEFAULT_TASK, help="Arm-CueCarryShort-v0, Arm-CueCarryLong-v0 or "
                        "Arm-CueCarryDistract-v0")
    parser.add_argument("--model", default=None,
                        help=f"π0 checkpoint for the arm (default: {ARM_MODEL_PATH} if present, else the expert)")
    parser.add_argument("--expert", action="store_true", help="let the scripted expert drive even if a model exists")
    parser.add_argument("--infer-ahead", action="store_true",
                        help="let kv_vla_node infer on the newest view even before its last action ran "
                             "(wait_for_action_view false): the closed loop then depends on the machine's speed; "
                             "default: lockstep, each inference on the view after the last action (the offline loop)")
    parser.add_argument("--control-rate-hz", type=float, default=10.0, help="control steps per second")
    parser.add_argument("--seed-offset", type=int, default=0, help="offset into the held-out seeds")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--out", default=str(REPO / "runs" / "demo-arm"), help="node logs and summary.json")


def pick_driver(args) -> Path | None:
    """The checkpoint that drives the arm, or None for the expert; ValueError for a bad --model."""
    if args.expert:
        return None
    if args.model:
        path = Path(args.model)
        if not (path / "config.json").is_file():
            raise ValueError(f"--model: no checkpoint at {path} (expected config.json there)")
        return path
    return ARM_MODEL_PATH if (ARM_MODEL_PATH / "config.json").is_file() else None


class ArmMonitor:
    """The demo's own node: episode results and the times actions were sent."""

    def __init__(self, node):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray, String

        from kv_vla_ros.ros.worlds.sim_node_common import RESULTS_QOS

        self.results: list[dict] = []
        self.action_times: list[float] = []
        node.create_subscription(String, "arm_sim_node/episode", self._on_episode, RESULTS_QOS)
        node.create_subscription(Float32MultiArray, "action", self._on_action, 50)
        # an expert-driven simulator starts once its outputs have subscribers: this node is one
        node.create_subscription(Image, "image", lambda _m: None, qos_profile_sensor_data)
        node.create_subscription(JointState, "joint_states", lambda _m: None, qos_profile_sensor_data)

    def _on_action(self, msg, info) -> None:
        if msg.data:
            self.action_times.append(info["source_timestamp"] * 1e-9)

    def _on_episode(self, msg) -> None:
        r = json.loads(msg.data)
        self.results.append(r)
        decided = {None: "no decision", True: "decision right", False: "decision wrong"}[r["decision_correct"]]
        print(f"  episode {len(self.results):3d}  seed {r['seed']}  {'success' if r['success'] else 'failure'}  "
              f"{r['steps']:3d} steps  {decided}", flush=True)


def spawn(args, model: Path | None, domain: int, out: Path):
    sim_params = {"task": args.task, "episodes": args.episodes, "seed_offset": args.seed_offset,
                  "mode": "expert" if model is None else "policy", "control_rate_hz": args.control_rate_hz,
                  "frame_rate_hz": args.control_rate_hz}
    procs = {"arm_sim_node": spawn_node(ARM_SIM_MODULE, domain, sim_params, None, out / "arm_sim_node.log")}
    if model is not None:
        # the simulator's one camera and its joint state (config/pi0.yaml is for a two-camera arm)
        params = {"model_path": str(model), "control_rate_hz": args.control_rate_hz, "action.min": [-1.0],
                  "action.max": [1.0], "image_topics": ["image"], "state_topic": "joint_states",
                  "wait_for_action_view": not args.infer_ahead}
        if not args.infer_ahead:
            # a lockstep world waits for the node: its view does not change until an action comes, so
            # an inference slower than stale_timeout_s (a busy machine) is no stale camera
            params["stale_timeout_s"] = LOCKSTEP_STALE_S
        procs["kv_vla_node"] = spawn_node(POLICY_MODULE, domain, params, REPO / "config" / "pi0.yaml",
                                          out / "kv_vla_node.log")
    return procs


def offline_actions(model_path: Path, task: str, seed: int) -> list[list[float]]:
    """The same episode in this process, no ROS: the checkpoint (its own cache config) on the arm,
    as `kv-vla eval` runs it (chunks through `ActionQueue`, actions clamped to [-1, 1])."""
    import torch

    from kv_vla_ros.eval.closed_loop import make_robot, robot_command
    from kv_vla_ros.vla import VLASession, load_policy
    from kv_vla_ros.vla.action_queue import ActionQueue

    torch.set_num_threads(1)  # as the node (num_threads: 1), so the float sums are the same
    policy = load_policy(str(model_path))
    robot, session = make_robot(task), VLASession(policy, policy.default_cache_config())
    queue = ActionQueue(policy.default_actions_per_inference)
    frame, instruction = robot.reset(seed)
    session.reset(instruction)
    actions = []
    while not robot.done:
        if queue.needs_inference:
            queue.push(session.step_action_chunk(frame, robot.state() if policy.state_dim else None))
        command = robot_command(robot, queue.pop())
        actions.append([round(float(v), 6) for v in command])
        frame = robot.step(command).frame
    robot.close()
    return actions


def run(args: argparse.Namespace) -> int:
    import rclpy

    try:
        model = pick_driver(args)
    except ValueError as exc:
        print(f"demo-arm: {exc}")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = pick_free_domain_id(salt=7)
    driver = (f"kv_vla_node with {model}" if model else
              "the scripted expert" + (" (--expert)" if args.expert else f" (no arm model at {ARM_MODEL_PATH})"))
    print(f"demo-arm: {args.episodes} episodes of {args.task}, driven by {driver}, DDS domain {domain} (loopback)")
    procs = spawn(args, model, domain, out)
    rclpy.init(args=[], domain_id=domain)
    node = rclpy.create_node("kv_vla_arm_demo_monitor")
    mon = ArmMonitor(node)
    t0, failure = time.monotonic(), ""
    try:
        while len(mon.results) < args.episodes and not failure:
            rclpy.spin_once(node, timeout_sec=0.1)
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead and len(mon.results) < args.episodes:
                rclpy.spin_once(node, timeout_sec=1.0)  # its last result may still be queued here
                if len(mon.results) < args.episodes:
                    failure = f"{dead[0]} exited with code {procs[dead[0]].returncode}"
            elif time.monotonic() - t0 > args.timeout:
                failure = f"timed out after {args.timeout:.0f} s"
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        for proc in procs.values():
            stop_node(proc)
        node.destroy_node()
        rclpy.try_shutdown()
    if failure:
        print(f"demo-arm: FAILED: {failure} (logs in {out})")
        return 1
    times = np.asarray(mon.action_times)
    rate = (times.size - 1) / (times[-1] - times[0]) if times.size > 1 else float("nan")
    decided = [r["decision_correct"] for r in mon.results if r["decision_correct"] is not None]
    summary = {"task": args.task, "driver": str(model) if model else "expert", "episodes": len(mon.results),
               "success_rate": float(np.mean([r["success"] for r in mon.results])),
               "decision_accuracy": float(np.mean(decided)) if decided else float("nan"),
               "mean_steps": float(np.mean([r["steps"] for r in mon.results])), "control_rate_hz": float(rate),
               "wall_s": time.monotonic() - t0, "per_episode": mon.results}
    print(f"\nsuccess rate           {summary['success_rate']:.1%}, decision accuracy "
          f"{summary['decision_accuracy']:.1%}, mean {summary['mean_steps']:.0f} steps")
    print(f"control rate achieved  {rate:.2f} Hz (target {args.control_rate_hz:g} Hz)")
    if model is not None:  # the loop over topics against the same seeds in process
        same = sum(offline_actions(model, args.task, r["seed"]) == r["actions"] for r in mon.results)
        summary["episodes_identical_offline"] = same
        print(f"offline closed loop, same seeds: {same}/{len(mon.results)} episodes with identical actions"
              + (" (--infer-ahead: the node infers on the newest view, they differ)" if args.infer_ahead else ""))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kv-vla demo-arm", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
