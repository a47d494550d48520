"""The typestore a bag is decoded with: the bag's own message definitions first, the ROS 2
distribution's built-in types for the rest.

A bag recorded by ``ros2 bag record`` on Jazzy/Kilted (and any bag written by rosbags) stores the
full definition of every type it holds; Humble sqlite3 bags store none. The bag's own definitions
are what its bytes were serialized with, so they win over any built-in store; types the bag does
not define come from the store of the distribution that wrote it (``ros_distro`` in the metadata,
else guessed from the metadata generation: type hashes appeared with Iron).
"""

from __future__ import annotations

import warnings

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

DISTRO_STORES = {
    "foxy": Stores.ROS2_FOXY, "galactic": Stores.ROS2_GALACTIC, "humble": Stores.ROS2_HUMBLE,
    "iron": Stores.ROS2_IRON, "jazzy": Stores.ROS2_JAZZY, "kilted": Stores.ROS2_KILTED,
    "rolling": Stores.ROS2_KILTED,
}
IDL_SEPARATOR = "=" * 80 + "\n"

# What the live tools (record/play/generate) write: the ROS 2 wheels on these machines are Kilted.
WRITE_STORE = Stores.ROS2_KILTED


def store_for_distro(distro: str | None, has_type_hashes: bool) -> Stores:
    """The built-in store for a bag's ``ros_distro`` (None or ``rosbags`` when not a ROS name)."""
    name = (distro or "").strip().lower()
    if name in DISTRO_STORES:
        return DISTRO_STORES[name]
    # No distro recorded: metadata before v8. Type hashes (v7, Iron+) mean a post-Humble writer.
    return WRITE_STORE if has_type_hashes else Stores.ROS2_HUMBLE


def types_from_definition(msgtype: str, fmt, text: str) -> dict:
    """Parse one connection's stored definition (``ros2msg`` with its dependencies, or IDL)."""
    if fmt == MessageDefinitionFormat.MSG:
        return dict(get_types_from_msg(text, msgtype))
    if text.startswith(IDL_SEPARATOR + "IDL: "):
        typs: dict = {}
        for block in text.split(IDL_SEPARATOR)[1:]:
            _, _, idl = block.partition("\n")
            typs.update(get_types_from_idl(idl))
        return typs
    return dict(get_types_from_idl(text))


def typestore_for_connections(connections, distro: str | None):
    """A typestore that decodes every connection it can; returns ``(typestore, store_name)``.

    A definition that does not parse is skipped with a warning (the built-in type is used, if
    any); a type found nowhere is reported by the reader when a message of it is needed.
    """
    has_hashes = any(str(c.digest).startswith("RIHS01_") for c in connections)
    base_name = store_for_distro(distro, has_hashes)
    base = get_typestore(base_name)
    own: dict = {}
    for conn in connections:
        if conn.msgdef.format == MessageDefinitionFormat.NONE or not conn.msgdef.data or conn.msgtype in own:
            continue
        try:
            own.update(types_from_definition(conn.msgtype, conn.msgdef.format, conn.msgdef.data))
        except Exception as exc:  # a foreign writer's malformed definition: fall back to the store
            warnings.warn(f"topic {conn.topic}: cannot parse the stored definition of {conn.msgtype} "
                          f"({exc}); using the {base_name.value} type", RuntimeWarning, stacklevel=2)
    store = get_typestore(Stores.EMPTY)
    merged = {name: fields for name, fields in base.fielddefs.items() if name not in own}
    merged.update(own)
    store.register(merged)
    return store, base_name.value


__all__ = ["DISTRO_STORES", "WRITE_STORE", "store_for_distro", "types_from_definition",
           "typestore_for_connections"]
