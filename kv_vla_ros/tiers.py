"""The package's import tiers: the one statement of which package may import which.

Each tier imports only the tiers before it, at module level and inside functions alike, so no
two packages import each other and a tier's tests need nothing after it. `test/unit/test_tiers.py`
reads every import of the package (with `ast`) and holds the code to this table; the README's
table is generated from it (``python scripts/generate_docs.py``).

Outside the order: ``kv_vla_ros`` (the version) and ``kv_vla_ros.tiers`` import nothing of the
package, ``kv_vla_ros.cli`` imports each subcommand's module by name when that subcommand runs, and
the `FOUNDATION` modules (progress bars, machine load) may be imported by every tier and import nothing of it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

# Distributions of ROS 2 itself: only the `ros` tier may import them (everything before it runs
# without a ROS graph). cv_bridge and ament_index_python are optional helpers that the data and
# vla tiers try when they import (a ROS install's image converter, its share directory).
ROS_MODULES = ("rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "diagnostic_msgs", "std_srvs",
               "trajectory_msgs", "builtin_interfaces", "rcl_interfaces", "lifecycle_msgs", "launch", "launch_ros")


@dataclass(frozen=True)
class Tier:
    package: str  # a subpackage of kv_vla_ros
    needs: str  # what it adds on top of the tiers before it (for the README)
    holds: str  # what it is for (for the README)
    forbids: tuple[str, ...] = ()  # third-party top-level modules it must not import


TIERS: tuple[Tier, ...] = (
    Tier("cache", "torch + transformers' cache base classes",
         "`CacheConfig`, `make_cache`, `ChunkedKVCache` / `ChunkedLayer`, eviction policies (one file each "
         "under `cache/eviction/`, registered by name), the gate, per-layer budgets and their calibration "
         "file, cache specs, the `kv_vla_*` attention",
         forbids=ROS_MODULES + ("ray", "gymnasium", "minigrid", "rosbags")),
    Tier("vla", "+ transformers",
         "the policies behind one contract, side by side (the package's own VLA in `vla/kv_vla/`, π0 in "
         "`vla/pi0/`), checkpoint I/O, `VLASession`, the action queue",
         forbids=ROS_MODULES + ("ray", "gymnasium", "minigrid", "rosbags")),
    Tier("sim", "gymnasium, minigrid, pybullet",
         "the worlds side by side: MiniGrid `Memory*` / BabyAI (`sim/minigrid/`) and a Franka Panda arm in "
         "PyBullet (`sim/arm/`), their experts, the task lists and expert rollouts",
         forbids=ROS_MODULES + ("ray", "torch", "transformers", "rosbags")),
    Tier("parallel", "ray",
         "the Ray runner that evaluation and training both use",
         forbids=ROS_MODULES),
    Tier("data", "rosbags, numpy, OpenCV; no rclpy",
         "rosbag2 files read into episodes (frames, states, actions, instructions), message decoding, "
         "image conversion, simulator episodes written into bags (`kv-vla bag generate`)",
         forbids=ROS_MODULES + ("ray",)),
    Tier("train", "vla + sim + data + parallel",
         "behaviour cloning, gate training, calibration",
         forbids=ROS_MODULES + ("ray",)),
    Tier("eval", "vla + sim + data + parallel",
         "closed-loop and bag evaluation, the gate report, tables and plots",
         forbids=ROS_MODULES + ("ray",)),
    Tier("ros", "+ rclpy",
         "the policy node in its own room (`ros/node/`: inputs, control thread, outputs, safety, parameters), "
         "the worlds' nodes and the demos (`ros/worlds/`), record/play of bags over DDS (`ros/bags/`)",
         forbids=("ray",)),
    Tier("bench", "everything above",
         "every benchmark and the soak, in one room above what they measure (`kv-vla bench ...`)"),
)

# Top-level modules outside the tiers (see the module docstring).
TOP_LEVEL = ("kv_vla_ros", "kv_vla_ros.cli", "kv_vla_ros.tiers")
FOUNDATION = ("kv_vla_ros.progress", "kv_vla_ros.machine_load")


def tier_index(module: str) -> int | None:
    """Position of ``module``'s tier in `TIERS` (``kv_vla_ros.data.bagio`` -> 3); None outside."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "kv_vla_ros":
        return None
    for i, tier in enumerate(TIERS):
        if tier.package == parts[1]:
            return i
    return None


def markdown_table() -> str:
    """The README's tier table."""
    lines = ["| tier | package | needs | holds |", "| --- | --- | --- | --- |"]
    for i, tier in enumerate(TIERS, 1):
        lines.append(f"| {i} | `kv_vla_ros.{tier.package}` | {tier.needs} | {tier.holds} |")
    lines.append(f"| any | {', '.join(f'`{m}`' for m in FOUNDATION)} | tqdm | progress bars (a line every few "
                 "seconds off a terminal), the machine's load beside a measurement; import nothing of the package |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported name (a kv_vla_ros module, or a third-party top-level module)
    line: int
    in_function: bool


MODULE_NAME = re.compile(r"kv_vla_ros(\.[a-z_][a-z0-9_]*)+")


def modules(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root`` (the ``kv_vla_ros`` directory)."""
    out = {}
    for path in sorted(Path(root).rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, (ast.Name, ast.Attribute)) and \
        (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING"


def imports(module: str, path: Path) -> list[Import]:
    """Every import of one module: module level and inside functions (not ``if TYPE_CHECKING:``
    blocks, which never run), plus string literals that name a package module (``python -m``,
    a runner shipping a function by name)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, node.lineno, in_function) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # ``from pkg import sub``: the submodule when there is one (resolved by the caller)
            found.extend(Import(module, f"{base}.{a.name}", node.lineno, in_function) for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            found.append(Import(module, node.value, node.lineno, in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The longest package module that ``name`` starts with (``kv_vla_ros.cache.CacheConfig`` ->
    ``kv_vla_ros.cache``)."""
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def internal_edges(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, leaving out a module's own ancestor
    packages (Python imports those first whatever the module does)."""
    known = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for imp in imports(module, path):
            if imp.target.split(".")[0] != root.name:
                continue
            target = _resolve(imp.target, known)
            if target != module and not module.startswith(target + "."):
                edges[module].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def violations(root: Path) -> list[str]:
    """What breaks the tier rule under ``root``: a module in no tier, an import of a later tier (or
    of the CLI), a third-party module its tier forbids, an import loop between modules."""
    root = Path(root)
    known = modules(root)
    problems = []
    for module, path in known.items():
        if module in TOP_LEVEL:
            continue
        if module in FOUNDATION:
            problems += [f"{path.relative_to(root.parent)}:{imp.line}: {module} (imported by every tier) imports "
                         f"{imp.target}" for imp in imports(module, path) if imp.target.split(".")[0] == root.name]
            continue
        own = tier_index(module)
        if own is None:
            problems.append(f"{module}: in no tier (kv_vla_ros.tiers.TIERS)")
            continue
        for imp in imports(module, path):
            where = f"{path.relative_to(root.parent)}:{imp.line}"
            top = imp.target.split(".")[0]
            if top == root.name:
                target = _resolve(imp.target, known)
                if target in TOP_LEVEL and target != root.name:
                    problems.append(f"{where}: {module} imports {target}, which sits above every tier")
                theirs = tier_index(target)
                if theirs is not None and theirs > own:
                    problems.append(f"{where}: {module} (tier {TIERS[own].package}) imports {target} "
                                    f"(later tier {TIERS[theirs].package})")
            elif top in TIERS[own].forbids:
                problems.append(f"{where}: {module} imports {top}, which tier {TIERS[own].package} must not")
    for loop in _cycles(internal_edges(root)):
        problems.append(f"import loop: {' <-> '.join(loop)}")
    return problems


__all__ = ["TIERS", "TOP_LEVEL", "FOUNDATION", "ROS_MODULES", "Tier", "Import", "tier_index", "markdown_table",
           "modules",
           "imports", "internal_edges", "violations"]
