# rosdep against the fetched ros/rosdistro files (no network): file:// sources and index
export ROSDEP_SOURCE_PATH=/tmp/rosdep-home/sources.list.d ROSDISTRO_INDEX_URL=file:///tmp/rosdistro/index-local.yaml
export ROS_HOME=/tmp/rosdep-home/ros ROS_DISTRO=kilted
