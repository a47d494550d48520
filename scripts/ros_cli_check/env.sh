# the ROS 2 Kilted wheels of /work/main/.venv + launch/ros2cli built from source in ./venv
SP=/work/main/.venv/lib/python3.11/site-packages
export LD_LIBRARY_PATH=/work/main/.venv/lib:$(ls -d $SP/ros_*.libs | tr '\n' ':')$LD_LIBRARY_PATH
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
. /work/scratch-ros/venv/bin/activate
