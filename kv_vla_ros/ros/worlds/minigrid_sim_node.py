"""`minigrid_sim_node`: a MiniGrid / BabyAI level (kv_vla_ros.sim.SimRobot) as a camera robot.

Lockstep, so that a closed loop over topics equals offline closed-loop evaluation:
- each view of the world gets one ``header.stamp`` (the time it was rendered); the camera timer
  re-publishes the current view with that same stamp until an action changes the world (the
  policy node runs once per stamp);
- an ``action`` message is applied only if the frame stamp it names (second layout dimension,
  written by kv_vla_node) is the current view's, and only once: the held repeats the policy
  node publishes at its control rate, stop commands (empty arrays) and late actions are
  ignored; after stepping, the new view goes out at once;
- at an episode's end the result goes to ``~/episode`` (JSON), the next seed's instruction is
  published, and its first frame follows ``episode_settle_s`` later, so the policy node has
  started the new episode before it sees the new episode's first frame.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, String

from kv_vla_ros.ros.node.control import parse_source_stamp
from kv_vla_ros.data.image_conversion import fill_image_msg
from kv_vla_ros.ros.worlds.sim_node_common import (LATCHED, RESULTS_QOS, next_view_stamp, read_only_descriptor,
                                                   report_episode, run_sim_node)
from kv_vla_ros.sim import SimRobot, eval_seeds


class MiniGridSimNode(Node):
    NODE_NAME = "minigrid_sim_node"

    def __init__(self, **node_kwargs):
        super().__init__(self.NODE_NAME, **node_kwargs)
        declare = lambda name, value, *a, **k: self.declare_parameter(  # noqa: E731
            name, value, read_only_descriptor(*a, **k)).value
        self.task = declare("task", "MiniGrid-MemoryS13Random-v0", "MiniGrid/BabyAI task id")
        self.seed_offset = declare("seed_offset", 0, "offset into kv_vla_ros.sim eval seeds", (0, 999_999))
        self.episodes = declare("episodes", 0, "stop after this many episodes (0: run forever)", (0, 1_000_000))
        frame_rate = declare("frame_rate_hz", 10.0, "camera rate (the current view is re-sent)", None, (0.1, 1000.0))
        frame_size = declare("frame_size", 56, "frame side in pixels", (7, 4096))
        max_steps = declare("max_steps", 100, "episode step cap, counted as failure (0: the env's own)", (0, 100_000))
        self.settle_s = declare("episode_settle_s", 0.3, "pause between an instruction and its first frame", None,
                                (0.0, 10.0))
        try:
            self.robot = SimRobot(self.task, frame_size=frame_size, max_steps=max_steps or None)
        except ValueError as exc:
            raise SystemExit(f"minigrid_sim_node: {exc}") from None
        self.image_pub = self.create_publisher(Image, "image", qos_profile_sensor_data)
        self.instruction_pub = self.create_publisher(String, "instruction", LATCHED)
        self.episode_pub = self.create_publisher(String, "~/episode", RESULTS_QOS)
        self.create_subscription(Float32MultiArray, "action", self._on_action, 10)
        self.create_timer(1.0 / frame_rate, self._camera)
        self.frame = None
        self.stamp = None  # builtin_interfaces/Time of the current view; None: nothing to act on
        self.episode_index = 0
        self.results: list[dict] = []
        self.finished = False
        self._first_frame_at = None  # (node clock ns) when the settling episode's first frame goes out
        self._waiting_logged = False

    # ---- episodes ---------------------------------------------------------------------------
    def _start_episode(self) -> None:
        seed = eval_seeds(1, self.seed_offset + self.episode_index)[0]
        self.frame, instruction = self.robot.reset(seed)
        self.actions: list[int] = []
        self.stamp = None
        self.instruction_pub.publish(String(data=instruction))
        self._first_frame_at = self.get_clock().now().nanoseconds + int(self.settle_s * 1e9)
        self.get_logger().info(f"episode {self.episode_index + 1}: seed {seed}: {instruction!r}")

    def _policy_connected(self) -> bool:
        return self.image_pub.get_subscription_count() > 0 and self.count_publishers("action") > 0

    def _camera(self) -> None:
        if self.finished:
            return
        if self.robot.done and self._first_frame_at is None:  # before the first episode
            if not self._policy_connected():
                if not self._waiting_logged:
                    self.get_logger().info("waiting for a policy node (subscriber on image, publisher on action)")
                    self._waiting_logged = True
                return
            self._start_episode()
        if self.stamp is None and self._first_frame_at is not None:
            if self.get_clock().now().nanoseconds < self._first_frame_at:
                return
            self._first_frame_at = None
            self._new_view()
            return
        if self.stamp is not None:
            self._publish_frame()

    def _new_view(self) -> None:
        self.stamp = next_view_stamp(self.get_clock(), self.stamp)
        self._publish_frame()

    def _publish_frame(self) -> None:
        msg = fill_image_msg(Image(), self.frame)
        msg.header.stamp = self.stamp
        msg.header.frame_id = "minigrid_camera"
        self.image_pub.publish(msg)

    # ---- actions ----------------------------------------------------------------------------
    def _on_action(self, msg: Float32MultiArray) -> None:
        if self.stamp is None or not msg.data:  # settling, finished, or a stop command
            return
        stamps = [parse_source_stamp(d.label) for d in msg.layout.dim]
        if (self.stamp.sec, self.stamp.nanosec) not in stamps:  # a held repeat or a stale action
            return
        value = msg.data[0]
        if not (value == value) or value != int(value) or not 0 <= int(value) < self.robot.num_actions:
            self.get_logger().error(f"action {value!r} is not an action id: ignored", throttle_duration_sec=2.0)
            return
        result = self.robot.step(int(value))
        self.actions.append(int(value))
        self.frame = result.frame
        if result.done:
            self._end_episode(result.success)
        else:
            self._new_view()

    def _end_episode(self, success: bool) -> None:
        self.stamp = None
        record = {"episode": self.episode_index, "success": bool(success), "steps": self.robot.steps,
                  "seed": self.robot.seed, "task": self.robot.task, "instruction": self.robot.instruction,
                  "actions": self.actions}
        report_episode(self, record)


def main(argv: list[str] | None = None, stop=None) -> int:
    return run_sim_node(MiniGridSimNode, argv, stop)


if __name__ == "__main__":
    sys.exit(main())
