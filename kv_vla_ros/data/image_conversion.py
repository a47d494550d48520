"""ROS image messages <-> numpy RGB frames, with numpy and OpenCV (no rclpy; cv_bridge where it imports).

Functions take any object with the fields of ``sensor_msgs/Image`` (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``) or ``sensor_msgs/CompressedImage``
(``format``, ``data``), so they are tested without ROS objects. Every malformed input raises
``ImageConversionError`` (a ``ValueError``) naming the field at fault: the node logs it and drops
the frame; nothing here may take the node down.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
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


def _check_image(msg: Any, max_pixels: int) -> tuple[int, int, str, int, int]:
    """Validate a raw image's header against its data; -> (height, width, encoding, channels, depth)."""
    height, width = int(msg.height), int(msg.width)
    encoding = str(msg.encoding).strip().lower()
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"height/width: empty frame {width}x{height}")
    if height * width > max_pixels:
        raise ImageConversionError(f"height/width: {width}x{height} frame is larger than max_image_pixels={max_pixels}")
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"encoding: unsupported {msg.encoding!r} (supported: {', '.join(ENCODINGS)})")
    channels, depth, _ = ENCODINGS[encoding]
    row_bytes = width * channels * depth
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(f"step: {step} is smaller than width x pixel size = {row_bytes} for {encoding}")
    size = _as_bytes(msg.data).size
    if size != step * height:
        raise ImageConversionError(
            f"data: {size} bytes, expected step x height = {step} x {height} = {step * height}")
    return height, width, encoding, channels, depth


def _numpy_pixels(msg: Any, height: int, width: int, channels: int, depth: int) -> np.ndarray:
    """The package's own message -> (H, W, C) array of the native depth (uint8 or uint16)."""
    step = int(msg.step)
    rows = _as_bytes(msg.data).reshape(height, step)[:, : width * channels * depth]  # drop the row padding
    if depth == 2:
        dtype = ">u2" if msg.is_bigendian else "<u2"
        return np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels).astype(np.uint16)
    return rows.reshape(height, width, channels)


def cv_bridge_available() -> bool:
    """True where ROS 2's own cv_bridge (vision_opencv) imports. PyPI's ``cv-bridge`` is a broken
    ROS 1 copy (its ``imgmsg_to_cv2`` fails on ROS 2 messages): never install it."""
    return _bridge() is not None


@functools.lru_cache(maxsize=1)
def _bridge():
    try:
        from cv_bridge import CvBridge
    except Exception:  # ImportError, or a cv_bridge built against another numpy/OpenCV
        return None
    return CvBridge()


def _bridge_pixels(msg: Any, height: int, width: int, channels: int) -> np.ndarray | None:
    """cv_bridge's ``imgmsg_to_cv2(passthrough)``: (H, W, C) of the native depth, or None if it
    cannot take this message (then the package's own conversion is used)."""
    bridge = _bridge()
    if bridge is None:
        return None
    try:
        pixels = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception:  # e.g. a step that is not a whole number of pixels
        return None
    pixels = pixels.reshape(height, width, channels)
    return pixels.astype(np.uint16) if pixels.dtype.itemsize == 2 else pixels


_TO_RGB = {"rgb": None, "rgba": cv2.COLOR_RGBA2RGB, "bgr": cv2.COLOR_BGR2RGB, "bgra": cv2.COLOR_BGRA2RGB,
           "mono": cv2.COLOR_GRAY2RGB}


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS, use_cv_bridge: bool | None = None) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object -> uint8 (H, W, 3) RGB.

    Honours ``step`` (row padding) and ``is_bigendian`` (16-bit encodings); 16-bit values are
    scaled to 8 bit; alpha is dropped; mono is replicated to three channels (OpenCV ``cvtColor``).
    ``use_cv_bridge``: None = cv_bridge's ``imgmsg_to_cv2`` where it imports and takes the
    message, the package's own unpacking otherwise; False = always the package's own; True = only
    cv_bridge (ImageConversionError where it is missing). Both give the same frames.
    """
    height, width, encoding, channels, depth = _check_image(msg, max_pixels)
    pixels = None
    if use_cv_bridge is not False:
        pixels = _bridge_pixels(msg, height, width, channels)
        if pixels is None and use_cv_bridge:
            raise ImageConversionError(f"encoding: cv_bridge cannot convert this {encoding} frame (or is missing)")
    if pixels is None:
        pixels = _numpy_pixels(msg, height, width, channels, depth)
    if depth == 2:
        pixels = _to_8bit(pixels)
    code = _TO_RGB[ENCODINGS[encoding][2]]
    rgb = pixels[:, :, :3] if code is None else cv2.cvtColor(np.ascontiguousarray(pixels), code)
    return np.ascontiguousarray(rgb).reshape(height, width, 3)


def _header_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if raw[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(raw):  # walk the JPEG segments to the first start-of-frame
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(raw[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(raw[i + 7:i + 9], "big"), int.from_bytes(raw[i + 5:i + 7], "big")
        i += 2 + length
    return None


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage``-like object (JPEG, PNG, ...) -> uint8 (H, W, 3) RGB,
    decoded by OpenCV (``cv2.imdecode``). PNG/JPEG sizes are checked against ``max_pixels`` from
    the header, before decoding (a decompression bomb never allocates)."""
    buf = _as_bytes(msg.data)
    fmt = getattr(msg, "format", "")
    if not buf.size:
        raise ImageConversionError(f"data: empty compressed frame (format {fmt!r})")
    size = _header_size(buf[:65536].tobytes())
    if size is not None:
        if size[0] <= 0 or size[1] <= 0:
            raise ImageConversionError(f"data: empty compressed frame {size[0]}x{size[1]}")
        if size[0] * size[1] > max_pixels:
            raise ImageConversionError(f"data: {size[0]}x{size[1]} frame is larger than max_image_pixels={max_pixels}")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageConversionError(f"data: cannot decode {fmt!r} frame: {exc}") from exc
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(f"data: cannot decode {fmt!r} frame ({buf.size} bytes: corrupt or unknown format)")
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ImageConversionError(f"data: {bgr.shape[1]}x{bgr.shape[0]} frame is larger than "
                                   f"max_image_pixels={max_pixels}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def shrink_for_model(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Shrink a frame much larger than the model input to about 2x ``image_size`` (OpenCV area
    interpolation: a box average, the right filter for downscaling).

    The model's processor resizes with an antialiased bilinear filter; doing that on a 4K frame
    costs tens of ms per frame, while an area resize is cheap and loses nothing the model sees.
    Frames under 4x the input size are returned unchanged, so small frames (the simulator's)
    reach the model exactly as offline evaluation gives them.
    """
    height, width = rgb.shape[:2]
    factor = min(height, width) // (2 * image_size)
    if min(height, width) < 4 * image_size or factor < 2:
        return rgb
    return cv2.resize(rgb, (width // factor, height // factor), interpolation=cv2.INTER_AREA)


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
           "shrink_for_model", "fill_image_msg", "cv_bridge_available"]
