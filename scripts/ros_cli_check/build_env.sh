set -e
cd /work/scratch-ros
/work/main/.venv/bin/python -m venv venv
# the project's venv (rclpy and the other Kilted wheels) under this one, by path only: its own .pth files
# (the editable kv_vla_ros) stay out, so kv_vla_ros comes from the colcon install. Not --system-site-packages:
# that is the base interpreter's site-packages (and their .pth code runs at every start-up, inside the
# window a start-up Ctrl-C check measures)
echo /work/main/.venv/lib/python3.11/site-packages > venv/lib/python3.11/site-packages/zz_project_venv.pth
# composition_interfaces has no Kilted wheel; launch_ros imports it for composable nodes only
mkdir -p venv/lib/python3.11/site-packages/composition_interfaces
echo '"""Stub: launch_ros imports it for composable nodes (unused here)."""' \
  > venv/lib/python3.11/site-packages/composition_interfaces/__init__.py
printf 'class LoadNode:\n    class Request:\n        pass\n' > venv/lib/python3.11/site-packages/composition_interfaces/srv.py
. venv/bin/activate
pip install -q wheel setuptools osrf-pycommon psutil argcomplete catkin-pkg colcon-common-extensions lark
for p in src/launch/launch src/launch/launch_xml src/launch/launch_yaml src/launch_ros/launch_ros src/launch_ros/ros2launch \
         src/ros2cli/ros2cli src/ros2cli/ros2param src/ros2cli/ros2topic src/ros2cli/ros2node src/ros2cli/ros2service \
         src/ros2cli/ros2pkg src/ros2cli/ros2run src/ros2cli/ros2lifecycle src/rosidl_runtime_py; do
  pip install -q --no-deps --no-build-isolation ./$p
done
echo DONE
