"""The package as colcon / rosdep / pip see it: package.xml against what the code imports (both
ways), setup.py's data files, and the parameters file's keys (no processes, no DDS)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import xml.etree.ElementTree as ET

import yaml

from ros_helpers import PARAMS_FILE, REPO

# ROS Python packages that are not on PyPI (a ROS 2 install brings them); the others are found
# by their PyPI wheel (`ros-*`).
ROS_ONLY = {"launch", "launch_ros", "launch_xml", "launch_yaml", "cv_bridge", "ament_index_python",
            "rosidl_runtime_py", "rosbag2_py", "message_filters", "tf2_ros", "image_transport"}
# Python modules with a rosdep key (what package.xml names instead of the pip package)
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "PIL": "python3-pil", "yaml": "python3-yaml",
               "pytest": "python3-pytest", "torch": "python3-torch", "matplotlib": "python3-matplotlib",
               "tqdm": "python3-tqdm"}


def imported_modules(paths) -> set[str]:
    """Top-level modules imported anywhere in ``paths`` (lazy imports inside functions included)."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def is_ros_package(module: str) -> bool:
    if module in ROS_ONLY:
        return True
    distributions = importlib.metadata.packages_distributions().get(module, [])
    return any(d.startswith("ros-") for d in distributions)


def rosdep_names(modules: set[str]) -> set[str]:
    return {m for m in modules if is_ros_package(m)} | {ROSDEP_KEYS[m] for m in modules if m in ROSDEP_KEYS}


def declared(kind: str) -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    tags = {"exec": ("exec_depend", "depend"), "test": ("test_depend",)}[kind]
    return {e.text.strip() for tag in tags for e in root.iter(tag)}


def test_package_xml_matches_the_ros_packages_the_code_imports_both_ways():
    code = sorted((REPO / "kv_vla_ros").rglob("*.py")) + sorted((REPO / "launch").glob("*.launch.py"))
    runtime = rosdep_names(imported_modules(code))
    exec_depends = declared("exec")
    assert runtime - exec_depends == set(), "imported by the package, missing from package.xml's exec_depend"
    assert exec_depends - runtime == set(), "declared in package.xml's exec_depend, imported by no package code"
    tests = rosdep_names(imported_modules(sorted((REPO / "test").rglob("*.py")))) - runtime
    assert tests - declared("test") == set(), "imported only by the tests, missing from test_depend"
    assert declared("test") - tests - runtime == set(), "test_depend that no test imports"
    assert "rcl_interfaces" in runtime and "python3-pytest" in tests  # the detection itself works


def test_ament_python_is_the_build_type_not_a_dependency():
    """`rosdep install --from-paths src` fails on ``ament_python``: no rosdep key has that name."""
    root = ET.parse(REPO / "package.xml").getroot()
    keys = {e.text.strip() for e in root if e.tag.endswith("depend")}
    assert "ament_python" not in keys and root.find("export/build_type").text == "ament_python"


def test_setup_py_data_files_exist():
    tree = ast.parse((REPO / "setup.py").read_text())
    package_data = next((kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                         for kw in node.keywords if kw.arg == "package_data"), None)
    if package_data is not None:  # {package_name: [files]}: the keys are the package (a name or a string)
        for files in package_data.values:
            for name in ast.literal_eval(files):
                assert (REPO / "kv_vla_ros" / name).exists(), f"setup.py package_data: {name} does not exist"
    data_files = re.findall(r'\["(resource/[^"]+|package\.xml)"\]', (REPO / "setup.py").read_text())
    assert data_files and all((REPO / f).exists() for f in data_files)


def test_params_file_applies_under_any_namespace():
    """rcl applies a ``ros__parameters`` block to a node whose fully qualified name matches its
    key: ``kv_vla_node`` matches only ``/kv_vla_node``, ``/**/kv_vla_node`` any namespace."""
    data = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(data) == ["/**/kv_vla_node"]
