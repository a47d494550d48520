"""The simulated worlds as ROS 2 nodes (``minigrid_sim_node``, ``arm_sim_node``, sharing
``sim_node_common``) and the closed-loop demos that drive them with ``kv_vla_node`` over DDS
(``demo``: ``make demo``, ``arm_demo``: ``make demo-arm``)."""
