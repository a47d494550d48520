"""The import tiers hold: every import of the package (module level and inside functions) goes to
its own tier or an earlier one, no two modules import each other, only the `ros` tier imports
rclpy, and the README's tier table is the one `kv_vla_ros.tiers` generates."""

from pathlib import Path

import kv_vla_ros
from kv_vla_ros.tiers import TIERS, imports, markdown_table, violations

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(kv_vla_ros.__file__).resolve().parent


def test_the_package_keeps_its_tiers():
    assert PACKAGE == ROOT / "kv_vla_ros"
    assert violations(PACKAGE) == []


def test_every_subpackage_is_a_tier():
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == sorted(t.package for t in TIERS)


def _package(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "kv_vla_ros"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for tier in TIERS:
        (root / tier.package).mkdir(exist_ok=True)
        (root / tier.package / "__init__.py").touch()
    return root


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = _package(tmp_path, {
        "eval/grid.py": "def f():\n    from kv_vla_ros.ros.worlds.demo import run\n",
        "ros/demo.py": "def run():\n    pass\n",
    })
    problems = violations(root)
    assert len(problems) == 1
    assert "kv_vla_ros/eval/grid.py:2" in problems[0] and "later tier ros" in problems[0]


def test_a_loop_a_relative_import_and_a_forbidden_module_are_caught(tmp_path):
    root = _package(tmp_path, {
        "train/a.py": "from . import b\n",
        "train/b.py": "def f():\n    from kv_vla_ros.train.a import x\n",
        "data/bags.py": "import rclpy\nfrom ..ros import node\n",
        "sim/env.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kv_vla_ros.ros import node\n",
        "ros/node.py": "",
    })
    problems = violations(root)
    assert any("import loop: kv_vla_ros.train.a <-> kv_vla_ros.train.b" in p for p in problems)
    assert any("imports rclpy, which tier data must not" in p for p in problems)
    assert any("data.bags (tier data) imports kv_vla_ros.ros.node (later tier ros)" in p for p in problems)
    assert not any("sim.env" in p for p in problems)  # TYPE_CHECKING blocks never run
    assert len(problems) == 3


def test_module_names_in_strings_count_as_imports(tmp_path):
    root = _package(tmp_path, {"cache/x.py": 'MODULE = "kv_vla_ros.eval.grid"\n', "eval/grid.py": ""})
    assert [i.target for i in imports("kv_vla_ros.cache.x", root / "cache" / "x.py")] == ["kv_vla_ros.eval.grid"]
    assert len(violations(root)) == 1


def test_readme_tier_table_is_generated_from_the_rule():
    assert markdown_table() in (ROOT / "README.md").read_text()  # and the whole file: test_settings.py
