"""What kv_vla_node publishes per control tick: the ``action`` array (always) and, by
``action_output``, what a controller takes. Stop is defined for each:

| action_output | topic | type | a running tick | stop |
| --- | --- | --- | --- | --- |
| (always) | ``action`` | std_msgs/Float32MultiArray | the action (labels: frame stamp, chunk row) | an empty array |
| ``twist`` | ``cmd_vel`` | geometry_msgs/Twist | the twist adapter's linear.x / angular.z | a zero twist |
| ``twist_stamped`` | ``cmd_vel`` | geometry_msgs/TwistStamped | the same, stamped, ``twist.frame_id`` | a zero twist |
| ``trajectory`` | ``joint_trajectory`` | trajectory_msgs/JointTrajectory | a plan (below) | an empty trajectory |
| ``float64_multi_array`` | ``forward_position_controller/commands`` | std_msgs/Float64MultiArray | the action | below |

``float64_multi_array`` is what forward_command_controller takes: one value per joint, unlabelled.
Its stop (``forward_command_stop``), sent once per stop: ``hold``, the command last sent again (a
position controller stays where it is; nothing if none was sent), or ``zeros`` (a velocity or
effort controller stops).

``output_topic`` names another topic for any of them (e.g. ``/forward_velocity_controller/commands``).

A trajectory is sent when a plan starts (a chunk was queued): this tick's action and the queued
rest, one point per action at ``time_from_start`` (k + 1) x the control period, positions only
(what joint_trajectory_controller splines, continuous across chunks). Its stop, an empty
trajectory (the controller holds its current position), is sent once when the stop begins; a
hold after a rejected chunk sends one point, the command last sent.
"""

from __future__ import annotations

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Twist, TwistStamped
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from kv_vla_ros.ros.node.control import CHUNK_INDEX_PREFIX, format_source_stamp

OUTPUTS = ("twist", "twist_stamped", "trajectory", "float64_multi_array")
TOPICS = {"twist": "cmd_vel", "twist_stamped": "cmd_vel", "trajectory": "joint_trajectory",
          "float64_multi_array": "forward_position_controller/commands"}
FORWARD_STOPS = ("hold", "zeros")


def check_output(kind: str, joint_names: list[str], action_dim: int, discrete: bool) -> list[str]:
    """The joint names to publish (trajectory), or ValueError naming the parameter."""
    if kind not in OUTPUTS:
        raise ValueError(f"action_output: expected one of {', '.join(OUTPUTS)}, got {kind!r}")
    names = [n for n in joint_names if n]
    if kind == "float64_multi_array" and discrete:
        raise ValueError("action_output: float64_multi_array needs continuous actions (one value per joint); this "
                         "checkpoint's are discrete action ids")
    if kind != "trajectory":
        return names
    if discrete:
        raise ValueError("action_output: trajectory needs continuous actions (joint positions); this checkpoint's "
                         "are discrete action ids")
    if len(names) != action_dim or len(set(names)) != len(names):
        raise ValueError(f"joint_names: action_output trajectory needs {action_dim} distinct joint names (one per "
                         f"action dimension), got {joint_names}")
    return names


def duration(seconds: float) -> Duration:
    nanos = round(seconds * 1e9)
    return Duration(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)


def trajectory_msg(plan, joint_names: list[str], period_s: float) -> JointTrajectory:
    """``plan (k, d)`` -> a positions-only trajectory: point i at (i + 1) x ``period_s`` (the
    action published on this tick is reached one period later, as the tick model has it); None
    gives the stop trajectory (no points). ``header.stamp`` stays zero: the controller starts it on
    receipt (no clock shared between machines needed)."""
    msg = JointTrajectory(joint_names=list(joint_names))
    msg.points = [JointTrajectoryPoint(positions=[float(v) for v in row], time_from_start=duration((i + 1) * period_s))
                  for i, row in enumerate(plan if plan is not None else [])]
    return msg


class CommandOutputs:
    """The node's command publishers (lifecycle publishers: silent unless active)."""

    def __init__(self, node, kind: str, joint_names: list[str], twist_adapter, chunked: bool, topic: str = "",
                 forward_stop: str = "hold"):
        if forward_stop not in FORWARD_STOPS:
            raise ValueError(f"forward_command_stop: expected one of {', '.join(FORWARD_STOPS)}, got {forward_stop!r}")
        self.node, self.kind, self.joint_names = node, kind, joint_names
        self.twist, self.chunked = twist_adapter, chunked
        self.frame_id = "base_link"
        self.forward_stop = forward_stop
        # depth 100: a lockstep consumer (a simulator) starved for a few seconds loses no new row
        self.action_pub = node.create_lifecycle_publisher(Float32MultiArray, "action", 100)
        msg_type = {"twist": Twist, "twist_stamped": TwistStamped, "trajectory": JointTrajectory,
                    "float64_multi_array": Float64MultiArray}[kind]
        self.output_pub = node.create_lifecycle_publisher(msg_type, topic or TOPICS[kind], 10)
        self._stopped = False  # trajectory / float64_multi_array: the stop was sent (sent once per stop)
        self._last_forward: list[float] | None = None  # float64_multi_array: the command last sent
        self.trajectories = 0

    def destroy(self) -> None:
        for pub in (self.action_pub, self.output_pub):
            self.node.destroy_lifecycle_publisher(pub)

    def publish(self, cmd, period_s: float) -> None:
        """One control tick's command (``cmd.action`` None: stop)."""
        self._publish_action(cmd.action, cmd.source_stamp, cmd.chunk_index)
        if self.kind == "trajectory":
            if cmd.action is None:
                if not self._stopped:
                    self._send_trajectory(None, period_s)
                self._stopped = True
            elif cmd.plan is not None or self._stopped:  # a new plan, or acting again after a stop
                self._send_trajectory(cmd.plan if cmd.plan is not None else cmd.action[None], period_s)
                self._stopped = False
            return
        if self.kind == "float64_multi_array":
            self._publish_forward(cmd.action)
            return
        lin, ang = self.twist(cmd.action)
        twist = Twist()
        twist.linear.x, twist.angular.z = lin, ang
        if self.kind == "twist":
            self.output_pub.publish(twist)
        else:
            msg = TwistStamped(twist=twist)
            msg.header.stamp, msg.header.frame_id = self.node.get_clock().now().to_msg(), self.frame_id
            self.output_pub.publish(msg)

    def publish_stop(self, period_s: float = 0.05) -> None:
        from kv_vla_ros.ros.node.control import ControlCommand

        self._stopped = False  # always send it: this is the node's last word (deactivate, shutdown)
        self.publish(ControlCommand(None, None, "stop"), period_s)

    def _publish_forward(self, action) -> None:
        """forward_command_controller's command; its stop is sent once per stop (hold: the command
        last sent again, nothing if none was; zeros: a zero per joint)."""
        if action is not None:
            self._last_forward = [float(v) for v in action]
            self._stopped = False
            self.output_pub.publish(Float64MultiArray(data=self._last_forward))
            return
        if self._stopped:
            return
        self._stopped = True
        if self.forward_stop == "zeros" and self._last_forward is not None:
            self.output_pub.publish(Float64MultiArray(data=[0.0] * len(self._last_forward)))
        elif self._last_forward is not None:
            self.output_pub.publish(Float64MultiArray(data=self._last_forward))

    def _send_trajectory(self, plan, period_s: float) -> None:
        self.output_pub.publish(trajectory_msg(plan, self.joint_names, period_s))
        self.trajectories += 1

    def _publish_action(self, action, source_stamp, chunk_index) -> None:
        msg = Float32MultiArray()
        if action is not None:
            msg.data = [float(v) for v in action]
            msg.layout.dim = [MultiArrayDimension(label="action", size=len(msg.data), stride=len(msg.data))]
            if source_stamp is not None:
                msg.layout.dim.append(MultiArrayDimension(label=format_source_stamp(*source_stamp), size=1, stride=1))
            if chunk_index is not None and self.chunked:
                msg.layout.dim.append(MultiArrayDimension(label=f"{CHUNK_INDEX_PREFIX}{chunk_index}", size=1, stride=1))
        self.action_pub.publish(msg)


__all__ = ["CommandOutputs", "FORWARD_STOPS", "OUTPUTS", "TOPICS", "check_output", "trajectory_msg"]
