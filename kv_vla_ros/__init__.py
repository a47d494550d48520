"""kv_vla_ros: a VLA policy as a ROS 2 control node with a bounded, RNN-gated chunked KV cache.

Import tiers, each importing only the ones before it (`kv_vla_ros.tiers`, held by a test):
``cache`` -> ``vla`` -> ``sim`` -> ``parallel`` -> ``data`` -> ``train``, ``eval`` -> ``ros`` ->
``bench``; only ``ros`` (and the benchmarks above it) import rclpy. Each subpackage's docstring says
what its room holds.
"""

__version__ = "0.1.0"
