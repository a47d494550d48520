"""ROS 2 room (the only tier that imports rclpy). ``node/``: the policy node, ``kv_vla_node``
(its inputs, control thread, outputs, safety, parameters, lifecycle); ``worlds/``: the simulators
as nodes and the closed-loop demos; ``bags/``: record and play bags over DDS; ``entry``,
``usage``, ``signals``, ``processes``: what the executables share. May import every tier before
it; the benchmarks above it drive these nodes.
"""
