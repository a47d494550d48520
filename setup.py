"""ament_python package: `colcon build` on a ROS 2 install, or `pip install -e .` in a venv.

Python dependencies live in requirements*.txt (torch is pinned and installed first by the
Makefile); on a ROS 2 install the ROS packages come from package.xml.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "kv_vla_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        # The shipped default model (DEFAULT_MODEL_PATH falls back to share/ on a colcon install).
        ("share/" + package_name + "/models/kv-vla-minigrid", glob("models/kv-vla-minigrid/*")),
        ("share/" + package_name + "/models/kv-vla-arm-pi0", glob("models/kv-vla-arm-pi0/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="kv_vla_ros maintainers",
    maintainer_email="maintainers@kv-vla-ros.invalid",
    description="VLA policy ROS 2 node with an RNN-gated chunked KV cache",
    license="Apache-2.0",
    tests_require=["pytest"],
    # The nodes are plain scripts (nodes/): a console-script wrapper imports importlib.metadata before
    # the package can catch Ctrl-C (see nodes/kv_vla_node). ament_python installs both in lib/kv_vla_ros.
    scripts=sorted(glob("nodes/*")),
    entry_points={
        "console_scripts": [
            "kv-vla = kv_vla_ros.cli:main",
        ],
    },
)
