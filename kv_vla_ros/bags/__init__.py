"""rosbag2 tools: record a live graph, replay a bag, write simulator episodes into a bag, and
evaluate a checkpoint under several cache settings by replaying a bag offline.

Import tiers inside this package: ``errors``, ``typestores``, ``bagio``, ``messages``, ``episodes``,
``generate`` and ``offline_eval`` need only rosbags + numpy (+ the vla/sim tiers where they run a
model or the simulator); only ``record`` and ``play`` import rclpy. Nothing is imported here so
that ``import kv_vla_ros.bags`` stays cheap.
"""
