"""Messages of the bag tools as rosbags typestore objects: build them (simulator -> bag) and read
them back (bag -> frame, instruction, action), with numpy only.

Images go through ``kv_vla_ros.data.image_conversion`` (numpy + pillow, no rclpy), the converter
the policy node uses, so a bag replayed offline reaches the model exactly as it would live.
The action convention is the policy node's: ``std_msgs/Float32MultiArray`` whose second layout
dimension may carry ``frame_stamp=<sec>.<nsec>``, the camera frame the action answers; an empty
array is a stop command, not an action.
"""

from __future__ import annotations

import numpy as np

from kv_vla_ros.data.errors import BagError

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
FLOAT32_ARRAY = "std_msgs/msg/Float32MultiArray"
JOINT_STATE = "sensor_msgs/msg/JointState"
STATE_TYPES = (JOINT_STATE, FLOAT32_ARRAY)
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
SOURCE_STAMP_PREFIX = "frame_stamp="  # = kv_vla_ros.ros.node.control.SOURCE_STAMP_PREFIX (rclpy-free copy)


# ---- building -----------------------------------------------------------------------------
def split_ns(stamp_ns: int) -> tuple[int, int]:
    return int(stamp_ns) // 1_000_000_000, int(stamp_ns) % 1_000_000_000


def make_header(typestore, stamp_ns: int, frame_id: str = "camera"):
    types = typestore.types
    sec, nsec = split_ns(stamp_ns)
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                        frame_id=frame_id)


def make_image(typestore, rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera"):
    """uint8 (H, W, 3) RGB -> ``sensor_msgs/Image`` rgb8."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb: expected a uint8 (H, W, 3) array, got {getattr(rgb, 'shape', rgb)!r}")
    h, w = rgb.shape[:2]
    return typestore.types[IMAGE](header=make_header(typestore, stamp_ns, frame_id), height=h, width=w,
                                  encoding="rgb8", is_bigendian=0, step=w * 3,
                                  data=np.ascontiguousarray(rgb).reshape(-1))


def make_string(typestore, text: str):
    return typestore.types[STRING](data=str(text))


def make_action(typestore, action, source_stamp_ns: int | None = None):
    """Action vector -> ``Float32MultiArray`` laid out as the policy node publishes it."""
    types = typestore.types
    dim = types["std_msgs/msg/MultiArrayDimension"]
    data = np.asarray(action, dtype=np.float32).reshape(-1)
    dims = [dim(label="action", size=data.size, stride=data.size)]
    if source_stamp_ns is not None:
        sec, nsec = split_ns(source_stamp_ns)
        dims.append(dim(label=f"{SOURCE_STAMP_PREFIX}{sec}.{nsec:09d}", size=1, stride=1))
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=dims, data_offset=0)
    return types[FLOAT32_ARRAY](layout=layout, data=data)


def make_joint_state(typestore, position, stamp_ns: int, names: list[str] | None = None):
    """Robot state -> ``sensor_msgs/JointState`` (positions only)."""
    pos = np.asarray(position, dtype=np.float64).reshape(-1)
    names = names or [f"joint_{i}" for i in range(pos.size)]
    empty = np.zeros(0, dtype=np.float64)
    return typestore.types[JOINT_STATE](header=make_header(typestore, stamp_ns, "base"), name=list(names),
                                        position=pos, velocity=empty, effort=empty)


# ---- reading ------------------------------------------------------------------------------
def header_stamp_ns(msg) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def action_source_stamp_ns(msg) -> int | None:
    """The ``frame_stamp=`` label of an action message, in ns; None when absent or malformed."""
    for dim in list(msg.layout.dim)[1:]:
        label = str(dim.label)
        if label.startswith(SOURCE_STAMP_PREFIX):
            sec, _, nsec = label[len(SOURCE_STAMP_PREFIX):].partition(".")
            try:
                return int(sec) * 1_000_000_000 + int(nsec)
            except ValueError:
                return None
    return None


def action_vector(msg) -> np.ndarray | None:
    """float32 action vector; None for a stop command (empty array)."""
    data = np.asarray(msg.data, dtype=np.float32).reshape(-1)
    return data if data.size else None


def state_vector(msg, msgtype: str) -> np.ndarray:
    """JointState (its positions) or Float32MultiArray (its data) -> float32 state vector."""
    data = msg.position if msgtype == JOINT_STATE else msg.data
    return np.asarray(data, dtype=np.float32).reshape(-1)


def frame_to_rgb(msg, msgtype: str, image_size: int | None, where: str) -> np.ndarray:
    """Image / CompressedImage -> uint8 (H, W, 3) RGB (shrunk as the node does when ``image_size``)."""
    from kv_vla_ros.data.image_conversion import compressed_to_rgb, image_to_rgb, shrink_for_model

    try:
        rgb = compressed_to_rgb(msg) if msgtype == COMPRESSED_IMAGE else image_to_rgb(msg)
    except ValueError as exc:  # ImageConversionError names the field (encoding, step, data, ...)
        raise BagError(f"{where}: {exc}") from None
    return shrink_for_model(rgb, image_size) if image_size else rgb


__all__ = ["IMAGE", "COMPRESSED_IMAGE", "STRING", "FLOAT32_ARRAY", "JOINT_STATE", "STATE_TYPES", "IMAGE_TYPES",
           "make_header", "make_image", "make_joint_state", "state_vector",
           "make_string", "make_action", "header_stamp_ns", "action_source_stamp_ns", "action_vector",
           "frame_to_rgb", "split_ns"]
