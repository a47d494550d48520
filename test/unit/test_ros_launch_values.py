"""Typed launch arguments are refused by name (``arm_demo.launch.py episodes:=abc`` used to end the
launch with Python's bare "invalid literal for int() with base 10: 'abc'"). Without launch_ros: the
conversion is plain Python, and the launch files are read as text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kv_vla_ros.ros.launch_values import typed_argument

REPO = Path(__file__).resolve().parents[2]


def test_a_typed_argument_converts_or_names_itself():
    assert typed_argument("episodes", "12", int) == 12
    assert typed_argument("control_rate_hz", "10", float) == 10.0
    with pytest.raises(ValueError, match=r"^launch argument episodes:=abc: expected an integer$"):
        typed_argument("episodes", "abc", int)
    with pytest.raises(ValueError, match=r"^launch argument episodes:=2.5: expected an integer$"):
        typed_argument("episodes", "2.5", int)
    with pytest.raises(ValueError, match=r"^launch argument control_rate_hz:=fast: expected a number$"):
        typed_argument("control_rate_hz", "fast", float)


def test_every_argument_a_launch_file_converts_is_checked_by_name_first():
    converted = re.compile(r'ParameterValue\(LaunchConfiguration\("(\w+)"\), value_type=(int|float)\)')
    checked = []
    for path in sorted((REPO / "launch").glob("*.launch.py")):
        text = path.read_text()
        typed = dict(converted.findall(re.sub(r"\s+", " ", text).replace("( ", "(")))
        if not typed:
            continue
        namespace: dict = {}
        exec(compile(re.search(r"^TYPED = .*$", text, re.M).group(0), str(path), "exec"), namespace)
        assert {name: kind.__name__ for name, kind in namespace["TYPED"].items()} == typed, path.name
        assert "check_typed_arguments(TYPED)" in text, path.name
        checked.append(path.name)
    assert "arm_demo.launch.py" in checked  # episodes, seed_offset, control_rate_hz
