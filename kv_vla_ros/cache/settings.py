"""Settings described once: a dataclass field carries its help text, its bounds and when a change
applies, as field metadata (`setting`). Everything a user reads about a setting is generated from
it: the ROS parameter descriptors, the ``kv-vla`` cache spec help, the comments of config/*.yaml and
the parameter table of docs/ros.md (``python scripts/generate_docs.py``; a test fails when the
committed files differ).

Used by `kv_vla_ros.cache.CacheConfig` and by the policy node's own settings
(`kv_vla_ros.ros.node.param_specs.NodeSettings`); it lives in the lowest tier so that both can.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# When a change of a running node's setting takes effect.
LIVE = "live"  # at once, keeping the episode's history
NEXT_EPISODE = "next episode"  # accepted now, used from the next episode (it changes the history's layout)
RESTART = "restart"  # read at start-up only (read-only parameter)
FIXED = "fixed by the checkpoint"  # must equal what the checkpoint was trained with; other values are rejected
APPLIES = (LIVE, NEXT_EPISODE, RESTART, FIXED)

_MISSING = dataclasses.MISSING


def setting(default: Any = _MISSING, help: str = "", *, bounds: tuple[float, float] | None = None,
            applies: str = LIVE, when: str = "", param: str | None = None, default_factory: Any = _MISSING):
    """A dataclass field with its documentation.

    Args:
        help: one sentence a user reads (descriptor, YAML comment, docs table, CLI help).
        bounds: inclusive (low, high) of a number; None: unbounded (or not a number).
        applies: one of `APPLIES`.
        when: a detail of ``applies`` (e.g. "to or from window: next episode").
        param: the parameter's name where it differs from the field's (``action.min``).
    """
    if applies not in APPLIES:
        raise ValueError(f"applies: {applies!r} is not one of {', '.join(APPLIES)}")
    meta = {"help": help, "bounds": bounds, "applies": applies, "when": when, "param": param}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class SettingInfo:
    """What `setting` recorded about one field, plus its name, type and default."""

    name: str  # the field's name
    param: str  # the parameter's name (the field's unless `setting(param=...)` says otherwise)
    annotation: str  # the field's type annotation, as written ("int | None")
    default: Any
    help: str
    bounds: tuple[float, float] | None
    applies: str
    when: str

    @property
    def applies_text(self) -> str:
        return f"{self.applies} ({self.when})" if self.when else self.applies


def settings_of(cls) -> list[SettingInfo]:
    """Every field of dataclass ``cls``, in order; ValueError naming a field without its help."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("help"):
            raise ValueError(f"{cls.__name__}.{f.name}: no help text (declare it with "
                             "kv_vla_ros.cache.settings.setting)")
        default = f.default_factory() if f.default is _MISSING and f.default_factory is not _MISSING else f.default
        annotation = f.type.__name__ if isinstance(f.type, type) else str(f.type)  # "int | None" either way
        out.append(SettingInfo(f.name, meta.get("param") or f.name, annotation, default, meta["help"],
                               meta.get("bounds"), meta.get("applies", LIVE), meta.get("when", "")))
    return out


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_setting(info: SettingInfo, raw: str) -> Any:
    """A value written as text (a cache spec, a command line) -> the field's type, by its annotation
    (``none`` for an optional field; ``a/b/c`` for a list); ValueError naming the field."""
    text = raw.strip()
    optional = info.annotation.endswith("| None")
    base = info.annotation.removesuffix("| None").strip()
    if optional and text.lower() == "none":
        return None
    try:
        if base == "str":
            value = text
        elif base == "bool":
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            value = text.lower() in _TRUE
        elif base == "int":
            value = int(text)
        elif base == "float":
            value = float(text)
        elif base in ("list[int]", "list[float]", "list[str]"):
            element = {"list[int]": int, "list[float]": float, "list[str]": str}[base]
            value = [element(v) for v in text.split("/") if v.strip()]
        else:  # a new field type: teach this function, do not guess
            raise TypeError(f"{info.name}: no text form for the annotation {info.annotation!r}")
    except ValueError:
        raise ValueError(f"{info.name}: expected {info.annotation}, got {raw!r}") from None
    if info.bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = info.bounds
        if not low <= value <= high:
            raise ValueError(f"{info.name}: must be in [{low:g}, {high:g}], got {value!r}")
    return value


def check_bounds(obj) -> None:
    """ValueError naming the first numeric field of dataclass ``obj`` outside its bounds."""
    for info in settings_of(type(obj)):
        value = getattr(obj, info.name)
        if info.bounds is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = info.bounds
        if not low <= value <= high:
            raise ValueError(f"{info.param}: must be in [{low:g}, {high:g}], got {value!r}")


__all__ = ["setting", "settings_of", "SettingInfo", "parse_setting", "check_bounds", "LIVE", "NEXT_EPISODE", "RESTART",
           "FIXED",
           "APPLIES"]
