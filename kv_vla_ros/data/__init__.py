"""Data tier: rosbag2 files read into episodes, with rosbags, numpy and OpenCV; never rclpy.

``errors`` (`BagError`), ``typestores`` (message definitions of a bag), ``bagio`` (the one bag
reader and an atomic writer, sqlite3 and mcap), ``messages`` (build and decode the messages the
tools use), ``image_conversion`` (ROS image messages <-> RGB frames, the node's converter too),
``episodes`` (a bag's messages grouped into episodes) and ``generate`` (simulator expert episodes
written into a bag). Evaluating a bag lives in `kv_vla_ros.eval` (``bag_eval``); recording and
playing over DDS in `kv_vla_ros.ros` (``bag_record``, ``bag_play``). Nothing is imported here so
that ``import kv_vla_ros.data`` stays cheap.
"""
