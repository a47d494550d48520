"""Bags over DDS: ``kv-vla bag record`` (``record``) and ``kv-vla bag play`` (``play``), sharing
``live``; reading and writing bag files without ROS is the data tier's (``kv_vla_ros.data``)."""
