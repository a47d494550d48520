"""Bag tools without a ROS graph: generate -> eval round trips (sqlite3 and mcap), equality with a
live closed-loop session, the clear errors (truncated bag, missing topic, bad encoding, empty bag),
a Humble-era bag, and atomic outputs. Real bags written and read with rosbags."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kv_vla_ros.data.bagio import AtomicBagWriter, BagReader
from kv_vla_ros.data.errors import BagError
from kv_vla_ros.data.generate import generate_bag
from kv_vla_ros.data.messages import COMPRESSED_IMAGE, IMAGE, STRING, make_image, make_string
from kv_vla_ros.eval.bag_eval import evaluate_bag
from kv_vla_ros.vla import ActionSpaceConfig, VLAConfig, VLAModel, VLASession

TASK = "MiniGrid-MemoryS7-v0"  # short expert episodes: the whole file runs in seconds
SEED_OFFSET = 3
EVICTIONS = ["full", "gated:budget_tokens=38", "window:budget_tokens=30"]


def tiny_model(seed: int = 0) -> VLAModel:
    torch.manual_seed(seed)
    backbone = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048}
    cfg = VLAConfig(backbone=backbone, image_size=24, patch_size=8, vision_hidden=32, max_instruction_tokens=8,
                    action=ActionSpaceConfig())
    return VLAModel(cfg).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny-vla"
    tiny_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir) -> VLAModel:
    return VLAModel.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def sqlite_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "expert_sqlite"
    generate_bag(path, TASK, episodes=2, seed_offset=SEED_OFFSET, storage="sqlite3", start_time_ns=10**18)
    return path


def kv_vla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def live_actions(model, seeds) -> list[np.ndarray]:
    """The same seeds without any bag: SimRobot frames straight into a full-cache session, the
    expert driving (as in the bag), one action array per episode."""
    from kv_vla_ros.sim import SimRobot, make_expert

    robot = SimRobot(TASK)
    expert = make_expert(robot)
    session = VLASession(model, model.config.cache.replace(eviction="full"))
    out = []
    for seed in seeds:
        frame, instruction = robot.reset(seed)
        session.reset(instruction)
        actions = []
        while not robot.done:
            actions.append(session.step(frame))
            frame = robot.step(expert.act()).frame
        out.append(np.stack(actions))
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_generate_eval_round_trip_matches_live_session(storage, model, sqlite_bag, tmp_path):
    from kv_vla_ros.sim import eval_seeds

    bag = sqlite_bag
    if storage == "mcap":
        bag = tmp_path / "expert_mcap"
        generate_bag(bag, TASK, episodes=2, seed_offset=SEED_OFFSET, storage="mcap", start_time_ns=10**18)
        assert (bag / "expert_mcap.mcap").is_file()
    with BagReader(bag) as reader:
        topics = reader.topics
        assert topics["/instruction"] == ("std_msgs/msg/String", 2) and topics["/episode"][1] == 2
        assert topics["/image"][1] == topics["/action"][1] > 0
    result = evaluate_bag(bag, model, EVICTIONS, flops_every=3, progress=False)
    rows = {r["policy"]: r for r in result["results"]}
    assert list(rows) == EVICTIONS and result["meta"]["episodes"] == 2
    # The expert's actions are the recorded ones: every step has one.
    assert rows["full"]["agreement_recorded"]["n"] == rows["full"]["steps"] == result["meta"]["steps"]
    assert rows["full"]["agreement_full"]["match"] == 1.0
    assert rows["full"]["cache"]["budget_tokens"] is None  # full holds everything: it reports no budget
    assert rows["window:budget_tokens=30"]["peak_tokens_held"] <= 30 < rows["full"]["peak_tokens_held"]
    assert rows["full"]["flops_per_step"] > 0 and rows["full"]["latency_p99_ms"] >= rows["full"]["latency_p50_ms"]
    # Bag pipeline (rgb8 -> CDR -> storage -> decode) == frames fed live, bit for bit.
    live = live_actions(model, eval_seeds(2, SEED_OFFSET))
    bag_actions = result["actions"]["full"]
    assert [len(ep) for ep in bag_actions] == [len(ep) for ep in live]
    for got, want in zip(bag_actions, live):
        assert np.array_equal(np.stack(got), want)


def test_eval_cli_writes_json_markdown_and_plots(model_dir, sqlite_bag, tmp_path):
    out = tmp_path / "eval"
    proc = kv_vla("bag", "eval", sqlite_bag, "--model", model_dir, "--cache", "gated:budget_tokens=38",
                  "--out", out, "--no-progress", "--flops-every", "4", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["agreement.png", "bag_eval.json", "bag_eval.md", "gate_scores.png", "tokens_held.png"]
    table = (out / "bag_eval.md").read_text()
    assert "| full |" in table and "| gated:budget_tokens=38 |" in table  # full reference added
    assert (out / "tokens_held.png").read_bytes()[:4] == b"\x89PNG"


def test_truncated_bags_fail_with_one_clear_line(model_dir, sqlite_bag, tmp_path):
    import shutil

    for name in ("expert_sqlite", "expert_mcap"):
        bag = tmp_path / name
        if name == "expert_sqlite":
            shutil.copytree(sqlite_bag, bag)
        else:
            generate_bag(bag, TASK, episodes=1, seed_offset=SEED_OFFSET, storage="mcap")
        data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
        proc = kv_vla("bag", "eval", bag, "--model", model_dir, "--out", tmp_path / f"out_{name}", "--no-progress")
        assert proc.returncode == 1
        assert "truncated or corrupt" in proc.stderr and str(bag) in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / f"out_{name}").exists()


def test_missing_image_topic_names_it_and_lists_the_bag(model_dir, sqlite_bag, tmp_path):
    proc = kv_vla("bag", "eval", sqlite_bag, "--model", model_dir, "--image-topic", "camera/color",
                  "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no image topic '/camera/color'" in proc.stderr and "/image (sensor_msgs/msg/Image)" in proc.stderr


def _rosbag2_style_bag(path: Path, with_topics: bool, serialization_format: str = "cdr") -> Path:
    """An mcap bag as rosbag2 writes them with service introspection: a service-event topic whose
    stored definition is the raw .srv (rosbags cannot parse it), beside an ordinary topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as bag:
        if with_topics:
            conn = bag.add_connection("/instruction", STRING, typestore=store,
                                      serialization_format=serialization_format)
            data = store.serialize_cdr(make_string(store, "go"), STRING) if serialization_format == "cdr" else b"{}"
            bag.write(conn, 1000, data)
        if serialization_format == "cdr":
            event = bag.add_connection("/add_two_ints/_service_event", "example_interfaces/srv/AddTwoInts_Event",
                                       msgdef="int64 a\nint64 b\n---\nint64 sum\n", rihs01="RIHS01_" + "0" * 64)
            bag.write(event, 2000, bytes(48))
    return path


@pytest.mark.parametrize("kind", ["topics_and_service_events", "only_services", "json"])
def test_service_event_and_non_cdr_bags_are_refused_in_one_line(model_dir, tmp_path, kind):
    bag = _rosbag2_style_bag(tmp_path / kind, with_topics=kind != "only_services",
                             serialization_format="json" if kind == "json" else "cdr")
    proc = kv_vla("bag", "eval", bag, "--model", model_dir, "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Warning" not in proc.stderr and "---" not in proc.stderr
    if kind == "json":
        assert "format {'json'} is not supported; only CDR" in proc.stderr and "corrupt" not in proc.stderr
    else:
        assert "no image topic '/image'" in proc.stderr and "/add_two_ints/_service_event" in proc.stderr


def write_bag(path: Path, frames: list[tuple[str, bytes, int, int]], instruction: str | None = "go to the ball"):
    """A hand-made bag: an instruction then frames given as (encoding, data, height, width)."""
    with AtomicBagWriter(path, "sqlite3") as bag:
        ts = bag.typestore
        bag.add_connection("/image", IMAGE)
        if instruction:
            bag.write("/instruction", 1, make_string(ts, instruction), STRING)
        for i, (encoding, data, h, w) in enumerate(frames):
            msg = make_image(ts, np.zeros((h, w, 3), np.uint8), 10 + i)
            msg.encoding, msg.data = encoding, np.frombuffer(data, np.uint8)
            msg.step = len(data) // h
            bag.write("/image", 10 + i, msg, IMAGE)


def test_bad_encoding_empty_bag_and_no_instruction(model, tmp_path):
    write_bag(tmp_path / "yuv", [("yuv422", bytes(8 * 8 * 2), 8, 8)])
    with pytest.raises(BagError, match=r"/image message #1: encoding: unsupported 'yuv422'"):
        evaluate_bag(tmp_path / "yuv", model, ["full"], topics=_no_actions(), progress=False)
    write_bag(tmp_path / "empty", [], instruction=None)
    with BagReader(tmp_path / "empty") as bag, pytest.raises(BagError, match="the bag is empty"):
        bag.require_topic("/image")
    write_bag(tmp_path / "noinst", [("mono8", bytes(64), 8, 8)], instruction=None)
    with pytest.raises(BagError, match="no instruction topic '/instruction'"):
        evaluate_bag(tmp_path / "noinst", model, ["full"], topics=_no_actions(), progress=False)


def test_encodings_reach_the_model_as_rgb(model, tmp_path):
    """bgr8 and mono8 frames give the actions of the same pixels sent as rgb8."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    gray = np.repeat(rgb[..., :1], 3, axis=-1)
    write_bag(tmp_path / "rgb", [("rgb8", f.tobytes(), 16, 16) for f in rgb])
    write_bag(tmp_path / "bgr", [("bgr8", f[..., ::-1].tobytes(), 16, 16) for f in rgb])
    write_bag(tmp_path / "gray_rgb", [("rgb8", f.tobytes(), 16, 16) for f in gray])
    write_bag(tmp_path / "mono", [("mono8", f[..., 0].tobytes(), 16, 16) for f in gray])
    act = {n: evaluate_bag(tmp_path / n, model, ["full"], topics=_no_actions(), progress=False)["actions"]["full"]
           for n in ("rgb", "bgr", "gray_rgb", "mono")}
    assert np.array_equal(act["rgb"], act["bgr"]) and np.array_equal(act["gray_rgb"], act["mono"])
    # CompressedImage (PNG, lossless) on its own topic decodes to the same pixels.
    import io

    from PIL import Image

    with AtomicBagWriter(tmp_path / "png", "mcap") as bag:
        ts = bag.typestore
        bag.write("/instruction", 1, make_string(ts, "go to the ball"), STRING)
        for i, f in enumerate(rgb):
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="PNG")
            msg = ts.types[COMPRESSED_IMAGE](header=make_image(ts, f, 10 + i).header, format="rgb8; png compressed",
                                             data=np.frombuffer(buf.getvalue(), np.uint8))
            bag.write("/camera/compressed", 10 + i, msg, COMPRESSED_IMAGE)
    topics = _no_actions()
    topics.image = "/camera/compressed"
    png = evaluate_bag(tmp_path / "png", model, ["full"], topics=topics, progress=False)["actions"]["full"]
    assert np.array_equal(png, act["rgb"])


def _no_actions():
    from kv_vla_ros.data.episodes import BagTopics

    return BagTopics(action=None)


def make_humble_bag(src: Path, dst: Path) -> None:
    """Turn a rosbags-written sqlite3 bag into what Humble's ``ros2 bag record`` writes: metadata
    version 5 (no ros_distro, no type hashes), db schema 3, no stored message definitions."""
    import shutil

    shutil.copytree(src, dst)
    db = next(dst.glob("*.db3"))
    db.rename(dst / f"{dst.name}_0.db3")
    with sqlite3.connect(dst / f"{dst.name}_0.db3") as con:
        con.execute("DROP TABLE message_definitions")
        con.execute("UPDATE schema SET schema_version = 3")
    meta = (dst / "metadata.yaml").read_text().replace("version: 9", "version: 5")
    meta = meta.replace(db.name, f"{dst.name}_0.db3")
    lines = [ln for ln in meta.splitlines() if "ros_distro" not in ln]
    out, skip = [], False
    for ln in lines:  # type_description_hash may wrap onto the next line
        if "type_description_hash" in ln:
            skip = ln.rstrip().endswith(":")
            continue
        if skip:
            skip = False
            continue
        out.append(ln)
    (dst / "metadata.yaml").write_text("\n".join(out) + "\n")


def test_humble_bag_reads_with_the_humble_typestore(model, sqlite_bag, tmp_path):
    humble = tmp_path / "humble_bag"
    make_humble_bag(sqlite_bag, humble)
    assert "version: 5" in (humble / "metadata.yaml").read_text()
    with BagReader(humble) as bag:
        assert bag.store_name == "ros2_humble" and bag.distro is None
        assert all(c.msgdef.data == "" for c in bag.connections)  # no stored definitions
    got = evaluate_bag(humble, model, ["full"], progress=False)
    want = evaluate_bag(sqlite_bag, model, ["full"], progress=False)
    assert got["actions"]["full"] and all(
        np.array_equal(np.stack(a), np.stack(b)) for a, b in zip(got["actions"]["full"], want["actions"]["full"]))
    assert got["results"][0]["agreement_recorded"] == want["results"][0]["agreement_recorded"]
    # The same messages under definitions from rosbags' Humble typestore, in mcap.
    from rosbags.typesys import Stores, get_typestore

    humble_defs = tmp_path / "humble_defs"
    with BagReader(sqlite_bag) as src, AtomicBagWriter(humble_defs, "mcap", get_typestore(Stores.ROS2_HUMBLE)) as dst:
        for conn in src.connections:
            dst.add_connection(conn.topic, conn.msgtype)
        for conn, stamp, raw in src.raw_messages():
            dst.write_raw(conn.topic, stamp, raw)
    again = evaluate_bag(humble_defs, model, ["full"], progress=False)
    assert all(np.array_equal(np.stack(a), np.stack(b))
               for a, b in zip(again["actions"]["full"], want["actions"]["full"]))


def test_failed_writes_leave_no_bag(tmp_path):
    target = tmp_path / "never"
    with pytest.raises(RuntimeError):
        with AtomicBagWriter(target, "mcap") as bag:
            bag.write("/instruction", 1, make_string(bag.typestore, "x"), STRING)
            raise RuntimeError("simulated crash mid-recording")
    assert list(tmp_path.iterdir()) == []
    proc = kv_vla("bag", "generate", "-o", tmp_path / "bad", "--task", "NoSuchTask", "--no-progress")
    assert proc.returncode == 1 and "task 'NoSuchTask' is not supported" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_reset_topic_splits_like_instructions(model, sqlite_bag):
    from kv_vla_ros.data.episodes import BagTopics

    by_instruction = evaluate_bag(sqlite_bag, model, ["full"], flops_every=0, progress=False)
    by_reset = evaluate_bag(sqlite_bag, model, ["full"], topics=BagTopics(reset="/episode"), flops_every=0,
                            progress=False)
    assert by_reset["meta"]["episodes"] == by_instruction["meta"]["episodes"] == 2
    for a, b in zip(by_reset["actions"]["full"], by_instruction["actions"]["full"]):
        assert np.array_equal(np.stack(a), np.stack(b))


def test_offline_bag_tools_never_import_rclpy():
    code = ("import sys; import kv_vla_ros.eval.bag_eval_cli, kv_vla_ros.data.generate, kv_vla_ros.eval.bag_eval, "
            "kv_vla_ros.eval.bag_report, kv_vla_ros.data.episodes, kv_vla_ros.data.messages; "
            "import kv_vla_ros.data.image_conversion; assert 'rclpy' not in sys.modules, 'rclpy imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_continuous_agreement_and_unfinished_recording(tmp_path, sqlite_bag):
    from kv_vla_ros.eval.bag_eval import _agreement

    pred = [np.array([0.0, 1.0]), np.array([1.0, 1.0])]
    rec = [np.array([0.0, 0.0]), None]
    assert _agreement(pred, rec, discrete=False) == {"n": 1, "l1": 0.5, "l2": 1.0}
    assert _agreement(pred, [np.array([0.0, 1.0]), np.array([1.0, 2.0])], discrete=True)["match"] == 0.5
    # A recording killed before its metadata was written: say so, and point at the storage file.
    import shutil

    cut = tmp_path / "unfinished"
    shutil.copytree(sqlite_bag, cut)
    (cut / "metadata.yaml").unlink()
    with pytest.raises(BagError, match=r"no metadata.yaml .*open the storage file itself: .*\.db3"):
        BagReader(cut)
    with BagReader(next(cut.glob("*.db3"))) as bag:  # which rosbags reads on its own
        assert bag.topics["/image"][1] > 0


def test_closed_loop_bag_matches_live_closed_loop(model, tmp_path):
    """--driver model: the checkpoint drives the robot; eval of that bag reproduces every action,
    and so does a live closed loop (SimRobot + VLASession, no bag) on the same seeds."""
    from kv_vla_ros.sim import SimRobot, eval_seeds

    bag = tmp_path / "closed_loop"
    summary = generate_bag(bag, TASK, episodes=2, seed_offset=SEED_OFFSET, storage="mcap", max_steps=8, model=model)
    assert summary["driver"] == "model"
    result = evaluate_bag(bag, model, ["full"], flops_every=0, progress=False)
    assert result["results"][0]["agreement_recorded"] == {"n": summary["steps"], "match": 1.0}
    robot = SimRobot(TASK, max_steps=8)
    session = VLASession(model, model.config.cache.replace(eviction="full"))
    for seed, got in zip(eval_seeds(2, SEED_OFFSET), result["actions"]["full"]):
        frame, instruction = robot.reset(seed)
        session.reset(instruction)
        live = []
        while not robot.done:
            live.append(session.step(frame))
            frame = robot.step(int(live[-1][0])).frame
        assert np.array_equal(np.stack(got), np.stack(live))


@pytest.mark.parametrize("slop_s, paired", [(0.05, True), (0.0, False)])
def test_cameras_are_paired_by_header_stamp(tmp_path, slop_s, paired):
    """The wrist camera's frame of the next stamp arrives before the first camera's frame of this
    stamp: by stamp each step meets its own wrist frame; by arrival order (slop 0) the next one."""
    from kv_vla_ros.data.episodes import BagTopics, iter_episode_events

    path = tmp_path / "two_cameras"
    frame = lambda k: np.full((8, 8, 3), 10 * k, np.uint8)  # noqa: E731
    with AtomicBagWriter(path, "mcap") as bag:
        ts = bag.typestore
        bag.write("/instruction", 1, make_string(ts, "go to the ball"), STRING)
        bag.write("/wrist", 2, make_image(ts, frame(0), 100_000_000), IMAGE)
        for k in range(5):
            t = 10 + 10 * k
            bag.write("/wrist", t, make_image(ts, frame(k + 1), (k + 2) * 100_000_000), IMAGE)
            bag.write("/high", t + 1, make_image(ts, frame(k), (k + 1) * 100_000_000), IMAGE)
    topics = BagTopics(image="/high", extra_images=("/wrist",), action=None, camera_sync_slop_s=slop_s)
    with BagReader(path) as reader:
        frames = [e[1] for e in iter_episode_events(reader, topics, None) if e[0] == "frame"]
    pairs = [(int(f.cameras[0].mean()), int(f.cameras[1].mean())) for f in frames]
    assert len(pairs) == 5
    assert all(a == b for a, b in pairs) == paired and (paired or all(b == a + 10 for a, b in pairs)), pairs
