"""`kv-vla bench image`: per-frame cost of turning a camera frame into the model's input, the node's
OpenCV path (`image_conversion`: ``cv2.imdecode``, ``cvtColor``, area resize) against a pillow
path (``PIL.Image.open`` + ``convert`` + ``reduce``), on the same frames in one run. Prints a table
of median milliseconds per frame and the ratio; writes JSON. No rclpy needed.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from kv_vla_ros.data.image_conversion import compressed_to_rgb, fill_image_msg, image_to_rgb, shrink_for_model

REPO = Path(__file__).resolve().parents[2]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=640, help="camera frame width (px)")
    parser.add_argument("--height", type=int, default=480, help="camera frame height (px)")
    parser.add_argument("--image-size", type=int, default=56, help="model input side (the shrink target is ~2x)")
    parser.add_argument("--frames", type=int, default=200, help="frames timed per case")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_image"))


class _Msg:
    """Duck-typed sensor_msgs Image / CompressedImage (the conversion reads fields only)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _camera_frame(height: int, width: int) -> np.ndarray:
    """A smooth synthetic scene with noise (compresses like a camera image, unlike pure noise)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 8, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _pillow_decode_shrink(data: bytes, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    factor = min(rgb.size) // (2 * image_size)
    return np.asarray(rgb.reduce(factor) if factor >= 2 and min(rgb.size) >= 4 * image_size else rgb)


def _pillow_raw_shrink(msg: _Msg, image_size: int) -> np.ndarray:
    from PIL import Image

    raw = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
    image = Image.frombuffer("RGB", (msg.width, msg.height), raw[:, :, None].tobytes(), "raw", "BGR", 0, 1)
    factor = min(image.size) // (2 * image_size)
    return np.asarray(image.reduce(factor) if factor >= 2 and min(image.size) >= 4 * image_size else image)


def _median_ms(fn, frames: int) -> float:
    fn()  # warm-up (lazy imports, first allocation)
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from kv_vla_ros.progress import progress_bar

    rgb = _camera_frame(args.height, args.width)
    encoded = {}
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        encoded[fmt] = buf.getvalue()
    bgr_msg = fill_image_msg(_Msg(), np.ascontiguousarray(rgb[:, :, ::-1]))
    bgr_msg.encoding = "bgr8"
    size = args.image_size
    cases = {
        "jpeg": (lambda: shrink_for_model(compressed_to_rgb(_Msg(format="jpeg", data=encoded["JPEG"])), size),
                 lambda: _pillow_decode_shrink(encoded["JPEG"], size)),
        "png": (lambda: shrink_for_model(compressed_to_rgb(_Msg(format="png", data=encoded["PNG"])), size),
                lambda: _pillow_decode_shrink(encoded["PNG"], size)),
        "bgr8 raw": (lambda: shrink_for_model(image_to_rgb(bgr_msg, use_cv_bridge=False), size),
                     lambda: _pillow_raw_shrink(bgr_msg, size)),
    }
    rows = []
    for name, (opencv_fn, pillow_fn) in progress_bar(cases.items(), desc="bench image", unit="case"):
        assert opencv_fn().shape == pillow_fn().shape, name  # the same work on both paths
        opencv_ms, pillow_ms = _median_ms(opencv_fn, args.frames), _median_ms(pillow_fn, args.frames)
        rows.append({"input": name, "opencv_ms": opencv_ms, "pillow_ms": pillow_ms, "speedup": pillow_ms / opencv_ms})
    table = "\n".join(
        [f"per frame, {args.width}x{args.height} camera image to the model's input (median of {args.frames})",
         "| input | OpenCV (node) | pillow | pillow / OpenCV |", "|---|---|---|---|"]
        + [f"| {r['input']} | {r['opencv_ms']:.2f} ms | {r['pillow_ms']:.2f} ms | {r['speedup']:.2f}x |" for r in rows])
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"width": args.width, "height": args.height, "image_size": size, "frames": args.frames}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


__all__ = ["configure", "run"]
