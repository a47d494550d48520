"""kv_vla_ros: a VLA policy as a ROS 2 control node with a bounded, RNN-gated chunked KV cache.

Import tiers: ``kv_vla_ros.cache`` needs torch (+ transformers' cache base classes);
``kv_vla_ros.vla`` adds transformers; ``kv_vla_ros.sim`` needs gymnasium/minigrid;
``kv_vla_ros.train``/``kv_vla_ros.eval`` build on vla + sim; only ``kv_vla_ros.ros`` imports rclpy.
"""

__version__ = "0.1.0"
