"""The policy node, ``kv_vla_node`` (``kv_vla_node.KVVLANode``): what ``configure`` builds
(``runtime``), inference apart from the control tick (``inference``), the tick on its own thread
(``control_thread``, ``control``), whole-chunk safety (``safety``), what it publishes
(``outputs``, ``diagnostics``), its parameters as plain data and their descriptors (``param_specs``,
``param_descriptors``, ``params``) and the launch arguments (``launch_args``). Modules without
rclpy in their name's job (``control``, ``safety``, ``param_specs``, ...) import no ROS and are
tested without a graph.
"""
