"""Small synthetic demonstration bags written with rosbags (tests of the bag -> π0 training path):
a memory task in miniature. A cue (a red or blue frame) is shown for the first ``cue_steps``
steps, then grey frames; the commanded action is ``(0.5, 0)`` until the last ``decide_steps``
steps, then ``(0, +1)`` after a red cue and ``(0, -1)`` after a blue one: only memory of the cue
tells the sign. Joint state: ``(t / steps, 0.5)``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from kv_vla_ros.data.bagio import AtomicBagWriter
from kv_vla_ros.data.messages import (
    COMPRESSED_IMAGE,
    FLOAT32_ARRAY,
    IMAGE,
    JOINT_STATE,
    STRING,
    make_action,
    make_image,
    make_joint_state,
    make_string,
)

INSTRUCTION = "go to the box"
PERIOD_NS = 100_000_000  # 10 Hz


def memory_frame(t: int, cue: int, side: int, camera: int, cue_steps: int) -> np.ndarray:
    """uint8 (side, side, 3): the cue's colour while it shows (camera 0), grey with a moving bar after."""
    img = np.full((side, side, 3), 90 + 20 * camera, np.uint8)
    if t < cue_steps and camera == 0:
        img[:] = (220, 30, 30) if cue == 0 else (30, 30, 220)
    img[:, (t * 3) % side] = 200
    return img


def memory_action(t: int, cue: int, steps: int, decide_steps: int) -> np.ndarray:
    if t < steps - decide_steps:
        return np.array([0.5, 0.0], np.float32)
    return np.array([0.0, 1.0 if cue == 0 else -1.0], np.float32)


def write_memory_bag(path: Path, cues: list[int], steps: int = 10, storage: str = "sqlite3", cameras: int = 1,
                     compressed: bool = False, side: int = 32, cue_steps: int = 2, decide_steps: int = 3,
                     with_state: bool = True, t0: int = 1_000_000_000) -> dict:
    """One episode per cue; returns what was written (``frames [E][T][cam]``, ``states``, ``actions``)."""
    topics = [f"/camera{c}/image" + ("/compressed" if compressed else "") for c in range(cameras)]
    written = {"frames": [], "states": [], "actions": [], "topics": topics}
    t = t0
    with AtomicBagWriter(path, storage) as bag:
        ts = bag.typestore
        for cue in cues:
            bag.write("/instruction", t, make_string(ts, INSTRUCTION), STRING)
            t += PERIOD_NS // 2
            frames, states, actions = [], [], []
            for step in range(steps):
                state = np.array([step / steps, 0.5], np.float32)
                if with_state:
                    bag.write("/joint_states", t - 1000, make_joint_state(ts, state, t - 1000), JOINT_STATE)
                cams = [memory_frame(step, cue, side, c, cue_steps) for c in range(cameras)]
                # the driving camera (the first) last: the others are then received at or before its frame
                for topic, img in reversed(list(zip(topics, cams))):
                    _write_image(bag, topic, img, t, compressed)
                action = memory_action(step, cue, steps, decide_steps)
                bag.write("/action", t + PERIOD_NS // 4, make_action(ts, action, source_stamp_ns=t), FLOAT32_ARRAY)
                frames.append(cams)
                states.append(state)
                actions.append(action)
                t += PERIOD_NS
            written["frames"].append(frames)
            written["states"].append(np.stack(states))
            written["actions"].append(np.stack(actions))
    return written


def _write_image(bag, topic: str, img: np.ndarray, t: int, compressed: bool) -> None:
    ts = bag.typestore
    msg = make_image(ts, img, t)
    if not compressed:
        bag.write(topic, t, msg, IMAGE)
        return
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")  # lossless: the frames read back exactly
    bag.write(topic, t, ts.types[COMPRESSED_IMAGE](header=msg.header, format="rgb8; png compressed",
                                                    data=np.frombuffer(buf.getvalue(), np.uint8)), COMPRESSED_IMAGE)
