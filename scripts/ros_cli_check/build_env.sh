set -e
cd /work/scratch-ros
/work/main/.venv/bin/python -m venv --system-site-packages venv
. venv/bin/activate
pip install -q wheel setuptools osrf-pycommon psutil argcomplete catkin-pkg colcon-common-extensions lark
for p in src/launch/launch src/launch/launch_xml src/launch/launch_yaml src/launch_ros/launch_ros src/launch_ros/ros2launch \
         src/ros2cli/ros2cli src/ros2cli/ros2param src/ros2cli/ros2topic src/ros2cli/ros2node src/ros2cli/ros2service \
         src/ros2cli/ros2pkg src/ros2cli/ros2run src/ros2cli/ros2lifecycle src/rosidl_runtime_py; do
  pip install -q --no-deps --no-build-isolation ./$p
done
echo DONE
