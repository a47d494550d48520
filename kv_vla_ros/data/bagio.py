"""Reading and writing rosbag2 bags (sqlite3 and mcap) with rosbags, failing with a `BagError`
that names the problem (missing bag, missing topic, empty bag, truncated or corrupt storage,
unknown message type) instead of a storage-layer traceback.

Writing is atomic: `AtomicBagWriter` writes into a hidden temporary bag next to the target and
renames it into place only when closed successfully, so a failed or interrupted run never leaves
a bag that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from kv_vla_ros.data.errors import BagError
from kv_vla_ros.data.typestores import WRITE_STORE, typestore_for_connections

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


def normalize_topic(name: str, field: str = "topic") -> str:
    """``image`` -> ``/image``; rejects empty names and spaces (a ROS name cannot hold them)."""
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ValueError(f"{field}: not a topic name: {name!r}")
    name = name.strip()
    return name if name.startswith("/") else "/" + name


def bag_paths(paths: list[str]) -> list[Path]:
    """The bags named by ``paths``, in order: a bag (a directory with metadata.yaml, or a storage
    file) stands for itself; another directory for its subdirectories that are bags (sorted), or,
    if it has none, for itself (so `BagReader` names what is wrong with it)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / "metadata.yaml").exists():
            inner = sorted(p for p in path.iterdir() if p.is_dir() and (p / "metadata.yaml").exists())
            out.extend(inner or [path])
        else:
            out.append(path)
    if len(set(out)) != len(out):
        raise ValueError("bag: the same bag is named twice")
    return out


class BagReader:
    """An open bag with the typestore it decodes with.

    Usage::

        with BagReader(path) as bag:
            bag.require_topic("/image", ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"))
            for topic, stamp_ns, msg in bag.messages(["/image", "/instruction"]):
                ...
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path}: does not exist")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            files = sorted(p.name for p in self.path.iterdir() if p.suffix in (".db3", ".mcap"))
            hint = f"; open the storage file itself: {self.path / files[0]}" if files else ""
            raise BagError(f"bag {self.path}: no metadata.yaml (a recording that did not finish?){hint}")
        try:
            with warnings.catch_warnings():  # rosbags warns about definitions it cannot use: errors say it
                warnings.simplefilter("ignore")
                self._reader = Reader(self.path)
                self._reader.open()
        except BagError:
            raise
        except Exception as exc:  # ReaderError, apsw/mcap errors, YAML errors: all mean "not a usable bag"
            text = _describe(exc)
            if "serialization format" in text.lower():  # a readable bag, in a format rosbags does not decode
                raise BagError(f"bag {self.path}: {text.rstrip('.')}; only CDR (what rosbag2 records) is "
                               "read") from None
            raise BagError(f"bag {self.path}: cannot open ({text}); is it truncated or corrupt?") from None
        try:
            self.distro = self._reader.ros_distro
            self.typestore, self.store_name, self.unparsed_definitions = typestore_for_connections(
                self._reader.connections, self.distro)
        except Exception as exc:
            self.close()
            raise BagError(f"bag {self.path}: cannot build the message types ({_describe(exc)})") from None

    # ---- metadata -----------------------------------------------------------------------
    @property
    def connections(self):
        return self._reader.connections

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """``{topic: (msgtype, message count)}``."""
        out: dict[str, tuple[str, int]] = {}
        for conn in self._reader.connections:
            msgtype, count = out.get(conn.topic, (conn.msgtype, 0))
            out[conn.topic] = (msgtype, count + conn.msgcount)
        return out

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def duration_ns(self) -> int:
        return int(self._reader.duration) if self.message_count else 0

    @property
    def start_time(self) -> int:
        return int(self._reader.start_time)

    def require_topic(self, topic: str, msgtypes: tuple[str, ...] | None = None, what: str = "topic") -> str:
        """The topic's message type; `BagError` if the bag lacks it, it is empty or of another type."""
        topics = self.topics
        if self.message_count == 0 or not topics:
            raise BagError(f"bag {self.path}: the bag is empty (no messages)")
        if topic not in topics:
            listing = ", ".join(f"{t} ({m})" for t, (m, _) in sorted(topics.items()))
            raise BagError(f"bag {self.path}: no {what} topic {topic!r}; the bag has: {listing}")
        msgtype, count = topics[topic]
        if msgtypes and msgtype not in msgtypes:
            raise BagError(f"bag {self.path}: {what} topic {topic} has type {msgtype}, expected one of "
                           f"{', '.join(msgtypes)}")
        if count == 0:
            raise BagError(f"bag {self.path}: {what} topic {topic} has no messages")
        if msgtype not in self.typestore.types:
            stored = self.unparsed_definitions.get(msgtype)
            why = f"its definition in the bag does not parse: {stored}" if stored else "no definition in the bag"
            raise BagError(f"bag {self.path}: unknown message type {msgtype} on {topic} ({why}; none in the "
                           f"{self.store_name} typestore)")
        return msgtype

    # ---- messages -----------------------------------------------------------------------
    def raw_messages(self, topics: list[str] | None = None, start: int | None = None) -> Iterator[tuple]:
        """``(connection, bag timestamp ns, CDR bytes)`` in bag time order; storage errors -> `BagError`."""
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        iterator = self._reader.messages(conns, start=start)
        count = 0
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # raised by the storage layer, not by the caller's code
                raise BagError(f"bag {self.path}: truncated or corrupt after {count} messages "
                               f"({_describe(exc)})") from None
            count += 1
            yield item

    def messages(self, topics: list[str]) -> Iterator[tuple[str, int, object]]:
        """``(topic, bag timestamp ns, deserialized message)`` in bag time order."""
        index: dict[str, int] = {}
        for conn, stamp, raw in self.raw_messages(topics):
            n = index[conn.topic] = index.get(conn.topic, 0) + 1
            yield conn.topic, stamp, self.deserialize(raw, conn.msgtype, f"{conn.topic} message #{n}")

    def deserialize(self, raw: bytes, msgtype: str, where: str):
        if msgtype not in self.typestore.types:
            raise BagError(f"bag {self.path}: unknown message type {msgtype} ({where})")
        try:
            return self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:
            raise BagError(f"bag {self.path}: {where} does not decode as {msgtype} ({_describe(exc)}); "
                           f"is the bag truncated or corrupt?") from None

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class AtomicBagWriter:
    """A rosbags `Writer` on a temporary bag that becomes ``path`` only on a successful `close`.

    ``add_connection(topic, msgtype)`` takes the definition from ``typestore`` (default: the
    Kilted store the live tools use) unless ``msgdef``/``rihs01`` are given.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "sqlite3", typestore=None):
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output {self.path}: exists already (rosbag2 never overwrites a bag)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if typestore is None:
            from rosbags.typesys import get_typestore

            typestore = get_typestore(WRITE_STORE)
        self.typestore = typestore
        self.storage = storage
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        self._writer = Writer(self._tmpdir / self.path.name, version=Writer.VERSION_LATEST,
                              storage_plugin=STORAGES[storage])
        self._writer.open()
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def add_connection(self, topic: str, msgtype: str, msgdef: str | None = None, rihs01: str | None = None,
                       offered_qos_profiles=()):
        if topic in self._connections:
            return self._connections[topic]
        if msgdef is None and msgtype not in self.typestore.types:
            raise BagError(f"topic {topic}: unknown message type {msgtype} (not in the {WRITE_STORE.value} typestore)")
        conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore, msgdef=msgdef, rihs01=rihs01,
                                           offered_qos_profiles=list(offered_qos_profiles))
        self._connections[topic] = conn
        self.counts[topic] = 0
        return conn

    def write_raw(self, topic: str, stamp_ns: int, data: bytes) -> None:
        self._writer.write(self._connections[topic], int(stamp_ns), data)
        self.counts[topic] += 1

    def write(self, topic: str, stamp_ns: int, msg, msgtype: str) -> None:
        self.add_connection(topic, msgtype)
        self.write_raw(topic, stamp_ns, bytes(self.typestore.serialize_cdr(msg, msgtype)))

    def close(self) -> Path:
        """Finish the bag and move it to ``path``; returns ``path``."""
        try:
            self._writer.close()
            if self.path.exists():
                raise BagError(f"output {self.path}: appeared while writing; the new bag is not moved there")
            os.replace(self._tmpdir / self.path.name, self.path)
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written: no bag appears at ``path``."""
        try:
            self._writer.abort()  # no index, no metadata.yaml
        except Exception:  # a half-written storage file may refuse to close; it is deleted anyway
            pass
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> "AtomicBagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["STORAGES", "BagReader", "AtomicBagWriter", "bag_paths", "normalize_topic"]
