"""kv_vla_ros: a VLA policy as a ROS 2 control node with a bounded, RNN-gated chunked KV cache.

Import tiers, each importing only the ones before it (`kv_vla_ros.tiers`, held by a test):
``cache`` -> ``vla`` -> ``sim`` -> ``data`` -> ``parallel`` -> ``train`` -> ``eval`` -> ``ros``;
only ``ros`` imports rclpy.
"""

__version__ = "0.1.0"
