"""ROS image messages <-> numpy RGB frames, with numpy and pillow only (no rclpy, no cv_bridge).

Functions take any object with the fields of ``sensor_msgs/Image`` (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``) or ``sensor_msgs/CompressedImage``
(``format``, ``data``), so they are tested without ROS objects. Every malformed input raises
``ImageConversionError`` (a ``ValueError``) naming the field at fault: the node logs it and drops
the frame; nothing here may take the node down.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

# 4096 x 4096: a 4K camera (3840 x 2160) passes, a corrupt header claiming 10^5 x 10^5 does not.
DEFAULT_MAX_PIXELS = 4096 * 4096

# encoding -> (channels, bytes per channel, how to get RGB out of the channels)
ENCODINGS: dict[str, tuple[int, int, str]] = {
    "rgb8": (3, 1, "rgb"), "bgr8": (3, 1, "bgr"), "rgba8": (4, 1, "rgba"), "bgra8": (4, 1, "bgra"),
    "mono8": (1, 1, "mono"), "8uc1": (1, 1, "mono"),
    "rgb16": (3, 2, "rgb"), "bgr16": (3, 2, "bgr"), "rgba16": (4, 2, "rgba"), "bgra16": (4, 2, "bgra"),
    "mono16": (1, 2, "mono"), "16uc1": (1, 2, "mono"),
}


class ImageConversionError(ValueError):
    """A frame that cannot be turned into an RGB image; the message names the field at fault."""


def _as_bytes(data: Any) -> np.ndarray:
    """``data`` (bytes, bytearray, array.array('B'), list of ints, numpy) as a flat uint8 array."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"data: not a byte buffer ({type(data).__name__}): {exc}") from exc


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit channel values -> 8 bit, full range to full range (65535 -> 255, 32896 -> 128)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object -> uint8 (H, W, 3) RGB.

    Honours ``step`` (row padding) and ``is_bigendian`` (16-bit encodings); 16-bit values are
    scaled to 8 bit; alpha is dropped; mono is replicated to three channels.
    """
    height, width = int(msg.height), int(msg.width)
    encoding = str(msg.encoding).strip().lower()
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"height/width: empty frame {width}x{height}")
    if height * width > max_pixels:
        raise ImageConversionError(f"height/width: {width}x{height} frame is larger than max_image_pixels={max_pixels}")
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"encoding: unsupported {msg.encoding!r} (supported: {', '.join(ENCODINGS)})")
    channels, depth, order = ENCODINGS[encoding]
    row_bytes = width * channels * depth
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(f"step: {step} is smaller than width x pixel size = {row_bytes} for {encoding}")
    buf = _as_bytes(msg.data)
    if buf.size != step * height:
        raise ImageConversionError(
            f"data: {buf.size} bytes, expected step x height = {step} x {height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row_bytes]  # drop the row padding
    if depth == 2:
        dtype = ">u2" if msg.is_bigendian else "<u2"
        pixels = _to_8bit(np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels))
    else:
        pixels = rows.reshape(height, width, channels)
    if order == "mono":
        rgb = np.repeat(pixels, 3, axis=2)
    elif order in ("rgb", "rgba"):
        rgb = pixels[:, :, :3]
    else:  # bgr, bgra: swap to RGB
        rgb = pixels[:, :, 2::-1]
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage``-like object (JPEG, PNG, ...) -> uint8 (H, W, 3) RGB."""
    from PIL import Image

    raw = _as_bytes(msg.data).tobytes()
    if not raw:
        raise ImageConversionError(f"data: empty compressed frame (format {getattr(msg, 'format', '')!r})")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size  # header only: checked before decoding a possible bomb
            if width <= 0 or height <= 0:
                raise ImageConversionError(f"data: empty compressed frame {width}x{height}")
            if width * height > max_pixels:
                raise ImageConversionError(f"data: {width}x{height} frame is larger than max_image_pixels={max_pixels}")
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ImageConversionError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ImageConversionError(f"data: cannot decode {getattr(msg, 'format', '')!r} frame: {exc}") from exc
    return np.ascontiguousarray(rgb)


def shrink_for_model(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Box-average a frame much larger than the model input down to about 2x ``image_size``.

    The model's processor resizes with an antialiased bilinear filter; doing that on a 4K frame
    costs tens of ms per frame, while an integer box average is cheap and loses nothing the
    model sees. Frames under 4x the input size are returned unchanged, so small frames (the
    simulator's) reach the model exactly as offline evaluation gives them.
    """
    height, width = rgb.shape[:2]
    factor = min(height, width) // (2 * image_size)
    if min(height, width) < 4 * image_size or factor < 2:
        return rgb
    h, w = (height // factor) * factor, (width // factor) * factor
    blocks = rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return blocks.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8)


def fill_image_msg(msg: Any, rgb: np.ndarray) -> Any:
    """Fill a ``sensor_msgs/Image``-like ``msg`` with a uint8 (H, W, 3) RGB frame as ``rgb8``."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(f"rgb: expected a uint8 (H, W, 3) array, got {getattr(rgb, 'shape', rgb)!r}")
    height, width = rgb.shape[:2]
    msg.height, msg.width = int(height), int(width)
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(width * 3)
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


__all__ = ["ImageConversionError", "ENCODINGS", "DEFAULT_MAX_PIXELS", "image_to_rgb", "compressed_to_rgb",
           "shrink_for_model", "fill_image_msg"]
