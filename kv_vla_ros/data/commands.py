"""The command and state messages a robot records, as vectors with names (numpy only).

| role | accepted types | vector |
| --- | --- | --- |
| command | ``std_msgs/Float64MultiArray``, ``Float32MultiArray`` (labelled or not) | ``data`` |
| command | ``trajectory_msgs/JointTrajectory`` | positions of the point that applies at the tick |
| command | ``geometry_msgs/TwistStamped``, ``Twist`` | linear x y z, angular x y z |
| command | ``sensor_msgs/JointState`` (a leader arm) | positions |
| state | ``sensor_msgs/JointState`` | positions, by joint name when names are known |
| state | ``std_msgs/Float64MultiArray``, ``Float32MultiArray`` | ``data`` |

Several command topics are concatenated in the order given (an arm's twist, then a gripper).
"""

from __future__ import annotations

import numpy as np

from kv_vla_ros.data.errors import BagError

FLOAT32_ARRAY = "std_msgs/msg/Float32MultiArray"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
TWIST = "geometry_msgs/msg/Twist"
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
ARRAY_TYPES = (FLOAT32_ARRAY, FLOAT64_ARRAY)
COMMAND_TYPES = (*ARRAY_TYPES, JOINT_TRAJECTORY, TWIST_STAMPED, TWIST, JOINT_STATE)
STATE_TYPES = (JOINT_STATE, *ARRAY_TYPES)
TWIST_NAMES = ("linear.x", "linear.y", "linear.z", "angular.x", "angular.y", "angular.z")


def duration_ns(d) -> int:
    return int(d.sec) * 1_000_000_000 + int(d.nanosec)


def message_time_ns(msg, bag_ns: int) -> int:
    """The header stamp when the message has a non-zero one, else the bag's receive time."""
    header = getattr(msg, "header", None)
    if header is not None:
        stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        if stamp:
            return stamp
    return int(bag_ns)


def command_names(msg, msgtype: str, topic: str) -> list[str]:
    """Names of a command message's dimensions: joint names, twist fields, or ``topic[i]``."""
    if msgtype == JOINT_TRAJECTORY:
        return [str(n) for n in msg.joint_names]
    if msgtype == JOINT_STATE:
        return [str(n) for n in msg.name] or [f"{topic}[{i}]" for i in range(len(msg.position))]
    if msgtype in (TWIST, TWIST_STAMPED):
        return list(TWIST_NAMES)
    return [f"{topic}[{i}]" for i in range(len(msg.data))]


def twist_vector(msg, msgtype: str) -> np.ndarray:
    tw = msg.twist if msgtype == TWIST_STAMPED else msg
    return np.array([tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z],
                    dtype=np.float64)


def command_vector(msg, msgtype: str, names: list[str] | None = None, point: int | None = None) -> np.ndarray | None:
    """A command message -> float64 vector (None: a stop, i.e. an empty array or trajectory).
    ``names``: a JointState's or JointTrajectory's joints in this order; ``point``: the trajectory
    point (`kv_vla_ros.data.resample.trajectory_point`)."""
    if msgtype in ARRAY_TYPES:
        data = np.asarray(msg.data, dtype=np.float64).reshape(-1)
        return data if data.size else None
    if msgtype in (TWIST, TWIST_STAMPED):
        return twist_vector(msg, msgtype)
    if msgtype == JOINT_TRAJECTORY:
        if not len(msg.points) or point is None:
            return None
        values = np.asarray(msg.points[point].positions, dtype=np.float64)
        return by_name(values, list(msg.joint_names), names, "trajectory")
    if msgtype == JOINT_STATE:
        values = np.asarray(msg.position, dtype=np.float64)
        return by_name(values, list(msg.name), names, "command") if values.size else None
    raise BagError(f"command type {msgtype}: not one of {', '.join(COMMAND_TYPES)}")


def by_name(values: np.ndarray, have: list[str], want: list[str] | None, what: str) -> np.ndarray:
    """``values`` (named ``have``) in the order of ``want`` (None: as they are). ``BagError`` naming
    the first joint of ``want`` the message lacks."""
    if want is None or list(have) == list(want):
        return values
    if not have:
        if len(values) == len(want):
            return values  # an unnamed JointState: positions in the checkpoint's order (counted by callers)
        raise BagError(f"{what}: {len(values)} unnamed positions, the checkpoint takes {len(want)} joints "
                       f"({', '.join(want)})")
    index = {str(n): i for i, n in enumerate(have)}
    missing = [n for n in want if n not in index]
    if missing:
        raise BagError(f"{what}: joint {missing[0]!r} missing (the message has: {', '.join(map(str, have))})")
    if len(values) < len(have):
        raise BagError(f"{what}: {len(have)} joint names but {len(values)} positions")
    return values[[index[n] for n in want]]


def state_names(msg, msgtype: str) -> list[str] | None:
    """A state message's joint names (JointState), else None."""
    return [str(n) for n in msg.name] if msgtype == JOINT_STATE and len(msg.name) else None


def state_vector(msg, msgtype: str, names: list[str] | None = None, where: str = "state") -> np.ndarray:
    """JointState positions (in ``names``' order when given) or a MultiArray's data -> float32."""
    if msgtype == JOINT_STATE:
        return by_name(np.asarray(msg.position, dtype=np.float64), list(msg.name), names, where).astype(np.float32)
    data = np.asarray(msg.data, dtype=np.float32).reshape(-1)
    if names is not None and data.size != len(names):
        raise BagError(f"{where}: {data.size} values, the checkpoint takes {len(names)} ({', '.join(names)})")
    return data


__all__ = ["ARRAY_TYPES", "COMMAND_TYPES", "FLOAT32_ARRAY", "FLOAT64_ARRAY", "JOINT_STATE", "JOINT_TRAJECTORY",
           "STATE_TYPES", "TWIST", "TWIST_NAMES", "TWIST_STAMPED", "by_name", "command_names", "command_vector",
           "duration_ns", "message_time_ns", "state_names", "state_vector"]
