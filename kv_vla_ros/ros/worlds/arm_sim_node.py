"""`arm_sim_node`: the robot-arm memory task (kv_vla_ros.sim.arm, a Franka Panda in PyBullet) as a
camera robot with joints, beside `minigrid_sim_node` (see docs/arm.md).

Per view of the world (one control step): ``joint_states`` (``sensor_msgs/JointState``, the 7 arm
and 2 finger joint positions) then ``image`` (``sensor_msgs/Image`` rgb8), both with the view's
``header.stamp``; at an episode's end its result on ``~/episode`` (JSON: success, steps, seed, the
frames that showed the cue, the decision) and the next seed's instruction on ``instruction``
(latched), its first view ``episode_settle_s`` later.

``mode: policy`` (lockstep, as minigrid_sim_node, so a closed loop over topics equals the offline
closed loop): an ``action`` (``std_msgs/Float32MultiArray``: dx, dy, dz, gripper in [-1, 1]) is
applied once, and only if the frame stamp it names (``frame_stamp=``, written by kv_vla_node) is
the view it answers: the current one, or for row ``k`` of an action chunk (``chunk_index=k``) the
view ``k`` steps back; held repeats, stop commands (empty arrays) and late actions are ignored. A
bad action (wrong dimension, NaN/inf, outside [-1, 1]) is refused with an error log line and not
applied; the arm holds still and the node keeps running. The camera re-sends the current view at
``frame_rate_hz`` with its stamp.

``mode: expert``: the scripted expert drives the arm at ``control_rate_hz`` and publishes each
action it takes on ``action`` (labelled with its view's stamp), so ``kv-vla bag record`` over DDS
records what ``kv-vla bag generate`` writes directly. It starts once every output topic has a
subscriber (``wait_for_subscribers``).

Images and joint states (and the expert's actions) go out reliable, depth 100: a best-effort
subscriber (kv_vla_node's sensor-data QoS) matches them, and a recorder loses none.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, MultiArrayDimension, String

from kv_vla_ros.ros.node.control import CHUNK_INDEX_PREFIX, format_source_stamp, parse_source_stamp
from kv_vla_ros.data.image_conversion import fill_image_msg
from kv_vla_ros.ros.worlds.sim_node_common import (LATCHED, RESULTS_QOS, next_view_stamp, read_only_descriptor,
                                                   report_episode, run_sim_node)
from kv_vla_ros.sim import split_seeds
from kv_vla_ros.sim.arm.env import ArmRobot
from kv_vla_ros.sim.arm.scene import STATE_JOINT_NAMES
from kv_vla_ros.sim.arm.task import ARM_TASKS, check_action
from kv_vla_ros.sim.rollout import episode_record

# Reliable with a deep history: a recorder that falls a few views behind (a busy machine) still
# gets every view, while a best-effort subscriber (kv_vla_node's sensor-data QoS) matches it too.
SENSOR_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
MODES = ("policy", "expert")


def action_address(msg: Float32MultiArray) -> tuple[tuple[int, int] | None, int]:
    """(the frame stamp an action names, its row in its chunk: 0 when not given)."""
    stamp, row = None, 0
    for dim in msg.layout.dim:
        label = str(dim.label)
        stamp = stamp or parse_source_stamp(label)
        if label.startswith(CHUNK_INDEX_PREFIX):
            try:
                row = int(label[len(CHUNK_INDEX_PREFIX):])
            except ValueError:
                row = -1  # names no row: applies nowhere
    return stamp, row


class ArmSimNode(Node):
    NODE_NAME = "arm_sim_node"
    def __init__(self, **node_kwargs):
        super().__init__(self.NODE_NAME, **node_kwargs)
        declare = lambda name, value, *a, **k: self.declare_parameter(  # noqa: E731
            name, value, read_only_descriptor(*a, **k)).value
        task = declare("task", "Arm-CueCarryLong-v0", f"arm task id: {', '.join(ARM_TASKS)}")
        self.mode = declare("mode", "policy", "who acts: policy (actions from the action topic) or expert")
        self.split = declare("seed_split", "eval", "seed range: eval (held out) or train")
        self.seed_offset = declare("seed_offset", 0, "offset into the seed range", (0, 999_999))
        self.episodes = declare("episodes", 0, "stop after this many episodes (0: run forever)", (0, 1_000_000))
        control_rate = declare("control_rate_hz", 10.0, "expert mode: control steps per second", None, (0.1, 1000.0))
        frame_rate = declare("frame_rate_hz", 10.0, "policy mode: camera rate (the current view is re-sent)", None,
                             (0.1, 1000.0))
        frame_size = declare("frame_size", 64, "frame side in pixels", (16, 1024))
        max_steps = declare("max_steps", 0, "episode step cap, counted as failure (0: the task's own)", (0, 100_000))
        self.settle_s = declare("episode_settle_s", 0.3, "pause between an instruction and its first frame", None,
                                (0.0, 10.0))
        self.wait_for_subscribers = declare("wait_for_subscribers", True,
                                            "expert mode: start once image, joint_states and action have subscribers")
        try:
            if self.mode not in MODES:
                raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
            split_seeds(self.split, 1, self.seed_offset)  # a bad split or offset fails here, by name
            self.robot = ArmRobot(task, frame_size=frame_size, max_steps=max_steps or None)
        except ValueError as exc:
            raise SystemExit(f"arm_sim_node: {exc}") from None
        self.expert = None
        if self.mode == "expert":
            from kv_vla_ros.sim.arm.expert import ArmExpert

            self.expert = ArmExpert(self.robot)
        self.image_pub = self.create_publisher(Image, "image", SENSOR_QOS)
        self.state_pub = self.create_publisher(JointState, "joint_states", SENSOR_QOS)
        self.instruction_pub = self.create_publisher(String, "instruction", LATCHED)
        self.episode_pub = self.create_publisher(String, "~/episode", RESULTS_QOS)
        if self.expert is None:
            self.action_pub = None
            self.create_subscription(Float32MultiArray, "action", self._on_action, SENSOR_QOS)  # no row lost
            self.create_timer(1.0 / frame_rate, self._camera)
        else:
            self.action_pub = self.create_publisher(Float32MultiArray, "action", SENSOR_QOS)
            self.create_timer(1.0 / control_rate, self._expert_tick)
        self.stamp = None  # builtin_interfaces/Time of the current view; None: nothing to act on
        self.frame = self.joints = None  # the current view: uint8 (S, S, 3) and float32 (9,)
        self.view_steps: dict[tuple[int, int], int] = {}  # stamp -> step of each view of the episode
        self.actions: list = []
        self.episode_index = 0
        self.results: list[dict] = []
        self.refused = 0
        self.finished = False
        self._first_frame_at = None
        self._waiting_logged = False
        self.get_logger().info(f"{self.robot.task}, mode {self.mode}, {self.split} seeds from {self.seed_offset}")

    # ---- episodes ---------------------------------------------------------------------------
    def _start_episode(self) -> None:
        seed = split_seeds(self.split, 1, self.seed_offset + self.episode_index)[0]
        self.frame, instruction = self.robot.reset(seed)
        self.actions, self.stamp, self.view_steps = [], None, {}
        self.instruction_pub.publish(String(data=instruction))
        self._first_frame_at = self.get_clock().now().nanoseconds + int(self.settle_s * 1e9)
        self.get_logger().info(f"episode {self.episode_index + 1}: seed {seed}: {instruction!r}")

    def _ready(self) -> bool:
        """Whether the first episode may start: a policy node is there (policy mode), or every output
        has a subscriber (expert mode, unless ``wait_for_subscribers`` is off)."""
        if self.expert is None:
            ok = self.image_pub.get_subscription_count() > 0 and self.count_publishers("action") > 0
            what = "a policy node (subscriber on image, publisher on action)"
        else:
            pubs = (self.image_pub, self.state_pub, self.action_pub)
            ok = not self.wait_for_subscribers or all(p.get_subscription_count() > 0 for p in pubs)
            what = "subscribers on image, joint_states and action"
        if not ok and not self._waiting_logged:
            self.get_logger().info(f"waiting for {what}")
            self._waiting_logged = True
        return ok

    def _advance(self) -> bool:
        """Start/settle episodes; True when a view is current (there is something to act on)."""
        if self.finished:
            return False
        if self.robot.done and self._first_frame_at is None:  # before the first episode
            if not self._ready():
                return False
            self._start_episode()
        if self.stamp is None and self._first_frame_at is not None:
            if self.get_clock().now().nanoseconds < self._first_frame_at:
                return False
            self._first_frame_at = None
            self._new_view()
            return False  # the first view goes out now; acting on it comes next
        return self.stamp is not None

    def _camera(self) -> None:
        if self._advance():
            self._publish_view()

    def _new_view(self) -> None:
        self.stamp = now = next_view_stamp(self.get_clock(), self.stamp)
        self.view_steps[(now.sec, now.nanosec)] = self.robot.steps
        self.joints = self.robot.state()
        self._publish_view()

    def _publish_view(self) -> None:
        state = JointState(name=list(STATE_JOINT_NAMES), position=[float(v) for v in self.joints])
        state.header.stamp, state.header.frame_id = self.stamp, "panda_link0"
        self.state_pub.publish(state)
        msg = fill_image_msg(Image(), self.frame)
        msg.header.stamp, msg.header.frame_id = self.stamp, "arm_camera"
        self.image_pub.publish(msg)

    # ---- actions ----------------------------------------------------------------------------
    def _on_action(self, msg: Float32MultiArray) -> None:
        if self.stamp is None or not msg.data:  # settling, finished, or a stop command
            return
        stamp, row = action_address(msg)
        if stamp is None:
            self.get_logger().warning("action ignored: it names no view (a frame_stamp=<sec>.<nsec> layout label, "
                                      "as kv_vla_node writes); the simulator runs in lockstep",
                                      throttle_duration_sec=5.0)
            return
        if self.view_steps.get(stamp, -1) + row != self.robot.steps:
            return  # a held repeat, a stale action, or a chunk row meant for another step
        try:
            action = check_action(list(msg.data))
        except ValueError as exc:
            self.refused += 1
            self.get_logger().error(f"{exc}: refused, the arm holds still (view {format_source_stamp(*stamp)}, "
                                    f"{self.refused} refused so far)")
            return
        self._apply(action)

    def _expert_tick(self) -> None:
        if not self._advance():
            return
        action = self.expert.act()
        msg = Float32MultiArray(data=[float(v) for v in action])
        msg.layout.dim = [MultiArrayDimension(label="action", size=len(action), stride=len(action)),
                          MultiArrayDimension(label=format_source_stamp(self.stamp.sec, self.stamp.nanosec),
                                              size=1, stride=1)]
        self.action_pub.publish(msg)
        self._apply(action)

    def _apply(self, action) -> None:
        result = self.robot.step(action)
        self.frame = result.frame
        self.actions.append([float(v) for v in action])
        if result.done:
            self._end_episode()
        else:
            self._new_view()

    def _end_episode(self) -> None:
        self.stamp = None
        record = episode_record(self.robot, self.episode_index, self.actions)
        decided = {None: "none", True: "right", False: "wrong"}[record["decision_correct"]]
        report_episode(self, record, f", decision {decided}")


def main(argv: list[str] | None = None, stop=None) -> int:
    return run_sim_node(ArmSimNode, argv, stop)


if __name__ == "__main__":
    sys.exit(main())
