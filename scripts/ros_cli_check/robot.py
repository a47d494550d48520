"""Two cameras (cam_high/image_raw, cam_wrist/image_raw, one stamp per pair) and a JointState at 20 Hz."""

import sys
import time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

rclpy.init()
node = rclpy.create_node("fake_arm")
cams = [node.create_publisher(Image, t, qos_profile_sensor_data) for t in ("cam_high/image_raw", "cam_wrist/image_raw")]
state = node.create_publisher(JointState, "joint_states", 10)
rng = np.random.default_rng(0)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    stamp = node.get_clock().now().to_msg()
    for pub in cams:
        msg = Image(
            height=48,
            width=64,
            encoding="rgb8",
            step=192,
            data=rng.integers(0, 256, 48 * 64 * 3, dtype=np.uint8).tobytes(),
        )
        msg.header.stamp = stamp
        pub.publish(msg)
    names = ["wrist", "elbow", "shoulder", "gripper"][: int(sys.argv[2])]
    state.publish(JointState(name=names, position=[0.1, 0.2, 0.3, 0.0][: len(names)]))
    time.sleep(0.05)
