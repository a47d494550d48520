"""Pure image conversion (no rclpy): every encoding, values checked, padding, endianness, bad input."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

from kv_vla_ros.data.image_conversion import (ImageConversionError, compressed_to_rgb, fill_image_msg, image_to_rgb,
                                             shrink_for_model)
from ros_helpers import FakeImage

RGB = np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90]],
                [[100, 110, 120], [130, 140, 150], [160, 170, 180]]], dtype=np.uint8)  # 2 x 3


def make(encoding, pixels: np.ndarray, pad: int = 0, big: bool = False) -> FakeImage:
    """Pack ``pixels`` (H, W, C) into a message of ``encoding`` with ``pad`` bytes per row."""
    h, w = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if big else "<u2")
    rows = pixels.reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((h, pad), 0xEE, np.uint8)], axis=1)
    return FakeImage(h, w, encoding, rows.shape[1], rows.tobytes(), int(big))


@pytest.mark.parametrize("pad", [0, 5])
def test_rgb8_and_bgr8_swap(pad):
    assert np.array_equal(image_to_rgb(make("rgb8", RGB, pad)), RGB)
    assert np.array_equal(image_to_rgb(make("bgr8", RGB[:, :, ::-1].copy(), pad)), RGB)


@pytest.mark.parametrize("pad", [0, 3])
def test_alpha_encodings_drop_alpha(pad):
    alpha = np.full(RGB.shape[:2] + (1,), 7, np.uint8)
    assert np.array_equal(image_to_rgb(make("rgba8", np.concatenate([RGB, alpha], 2), pad)), RGB)
    bgra = np.concatenate([RGB[:, :, ::-1], alpha], 2)
    assert np.array_equal(image_to_rgb(make("bgra8", bgra, pad)), RGB)


def test_mono8_replicated():
    mono = RGB[:, :, 0].copy()
    for enc in ("mono8", "8UC1"):
        out = image_to_rgb(make(enc, mono[:, :, None], pad=2))
        assert out.shape == (2, 3, 3) and np.array_equal(out[:, :, 1], mono) and np.array_equal(out[:, :, 2], mono)


@pytest.mark.parametrize("big", [False, True])
def test_mono16_scaled_and_endianness(big):
    values = np.array([[0, 257, 32896], [65535, 1000, 65280]], dtype=np.uint16)
    out = image_to_rgb(make("mono16", values[:, :, None], pad=4, big=big))
    assert out[:, :, 0].tolist() == [[0, 1, 128], [255, 4, 254]]
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


def test_rgb16_and_bgr16():
    rgb16 = RGB.astype(np.uint16) * 257  # exact 8-bit values scaled up
    assert np.array_equal(image_to_rgb(make("rgb16", rgb16)), RGB)
    assert np.array_equal(image_to_rgb(make("bgr16", rgb16[:, :, ::-1].copy(), big=True)), RGB)


def test_data_types_accepted():
    msg = make("rgb8", RGB)
    for data in (bytes(msg.data), bytearray(msg.data), list(msg.data), np.frombuffer(msg.data, np.uint8)):
        msg.data = data
        assert np.array_equal(image_to_rgb(msg), RGB)


@pytest.mark.parametrize("case, field", [
    (FakeImage(2, 3, "rgb8", 8, bytes(16)), "step"),  # step smaller than a row
    (FakeImage(2, 3, "rgb8", 9, bytes(17)), "data"),  # data shorter than step x height
    (FakeImage(2, 3, "rgb8", 9, bytes(19)), "data"),  # and longer
    (FakeImage(2, 3, "yuv422_yuy2", 6, bytes(12)), "encoding"),
    (FakeImage(0, 0, "rgb8", 0, b""), "height/width"),
    (FakeImage(100_000, 100_000, "rgb8", 300_000, b""), "height/width"),  # a header lying about its size
])
def test_bad_images_raise_naming_the_field(case, field):
    with pytest.raises(ImageConversionError, match=f"^{field}"):
        image_to_rgb(case)


def _encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


class FakeCompressed:
    def __init__(self, data, fmt="jpeg"):
        self.data, self.format = data, fmt


def test_compressed_png_exact_and_jpeg_close():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    assert np.array_equal(compressed_to_rgb(FakeCompressed(_encoded(rgb, "PNG"), "png")), rgb)
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    out = compressed_to_rgb(FakeCompressed(_encoded(flat, "JPEG")))
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - flat).max() <= 3


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0garbage",
                                  _encoded(np.zeros((8, 8, 3), np.uint8), "JPEG")[:40]])
def test_corrupt_compressed_raises(data):
    with pytest.raises(ImageConversionError, match="^data"):
        compressed_to_rgb(FakeCompressed(data))


def test_compressed_over_pixel_limit_rejected_before_decoding():
    data = _encoded(np.zeros((64, 64, 3), np.uint8), "PNG")
    with pytest.raises(ImageConversionError, match="max_image_pixels"):
        compressed_to_rgb(FakeCompressed(data, "png"), max_pixels=64 * 63)


def test_4k_frame_converted_and_shrunk():
    frame = np.zeros((2160, 3840, 3), np.uint8)
    frame[:, 1920:] = 255
    msg = FakeImage(2160, 3840, "bgr8", 3840 * 3, frame.tobytes())
    rgb = image_to_rgb(msg)
    small = shrink_for_model(rgb, 56)
    assert small.shape[0] < 300 and small.dtype == np.uint8  # box-averaged to ~2x the model input
    assert small[:, 0].max() == 0 and small[:, -1].min() == 255
    assert shrink_for_model(RGB, 56) is RGB  # small frames pass untouched (bit-exact with offline eval)


def test_fill_image_msg_round_trip():
    msg = fill_image_msg(FakeImage(0, 0, "", 0, b""), RGB)
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("rgb8", 9, 2, 3)
    assert np.array_equal(image_to_rgb(msg), RGB)
    with pytest.raises(ImageConversionError, match="^rgb"):
        fill_image_msg(msg, RGB.astype(np.float32))


# ---- OpenCV and cv_bridge ------------------------------------------------------------

_ALL_ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "rgb16", "bgr16", "rgba16", "bgra16", "mono16",
                  "16UC1"]


def _ros_image(encoding: str, pad: int, big: bool, seed: int = 0):
    """A real sensor_msgs/Image (what cv_bridge takes) and the RGB frame it must give."""
    Image = pytest.importorskip("sensor_msgs.msg").Image
    from kv_vla_ros.data.image_conversion import ENCODINGS

    channels, depth, order = ENCODINGS[encoding.lower()]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256 ** depth, (5, 7, channels), dtype=np.uint16 if depth == 2 else np.uint8)
    fake = make(encoding, pixels, pad=pad, big=big)
    msg = Image(height=fake.height, width=fake.width, encoding=encoding, is_bigendian=fake.is_bigendian,
                step=fake.step, data=fake.data)
    values = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8) if depth == 2 else pixels
    rgb = {"mono": np.repeat(values, 3, axis=2), "rgb": values[:, :, :3], "rgba": values[:, :, :3],
           "bgr": values[:, :, 2::-1], "bgra": values[:, :, 2::-1]}[order]
    return msg, rgb


_CASES = [(e, pad, big) for e in _ALL_ENCODINGS for pad, big in [(0, False), (4, False), (0, True)]
          if not big or "16" in e]  # endianness only matters for 16-bit encodings


@pytest.mark.parametrize("encoding, pad, big", _CASES)
def test_own_conversion_gives_the_reference_frames(encoding, pad, big):
    msg, expected = _ros_image(encoding, pad, big)
    assert np.array_equal(image_to_rgb(msg, use_cv_bridge=False), expected)
    assert np.array_equal(image_to_rgb(msg), expected)  # the default path (cv_bridge where it imports)


def _has_cv_bridge() -> bool:
    from kv_vla_ros.data.image_conversion import cv_bridge_available

    return cv_bridge_available()


@pytest.mark.skipif(not _has_cv_bridge(), reason="cv_bridge (ROS 2 vision_opencv) does not import here")
@pytest.mark.parametrize("encoding, pad, big", _CASES)
def test_cv_bridge_and_own_conversion_give_the_same_frames(encoding, pad, big):
    msg, _ = _ros_image(encoding, pad, big)
    assert np.array_equal(image_to_rgb(msg, use_cv_bridge=True), image_to_rgb(msg, use_cv_bridge=False))


def test_decoding_and_resizing_are_opencv():
    cv2 = pytest.importorskip("cv2")
    rgb = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    assert ok
    decoded = compressed_to_rgb(FakeCompressed(jpeg.tobytes()))
    assert np.array_equal(decoded, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])  # cv2.imdecode, bit for bit
    small = shrink_for_model(decoded, 56)
    assert np.array_equal(small, cv2.resize(decoded, (160, 120), interpolation=cv2.INTER_AREA))
    # a frame that is not a multiple of the shrink factor: area interpolation over the whole frame
    # (an integer box average would crop the last rows and columns, or differ at the seams)
    odd = np.random.default_rng(2).integers(0, 256, (482, 642, 3), dtype=np.uint8)
    assert np.array_equal(shrink_for_model(odd, 56), cv2.resize(odd, (160, 120), interpolation=cv2.INTER_AREA))


def test_the_image_path_needs_no_pillow(monkeypatch):
    """JPEG and PNG decoding, colour conversion and shrinking run on OpenCV alone (pillow is not
    imported on the node's image path)."""
    cv2 = pytest.importorskip("cv2")
    rgb = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    encoded = {ext: cv2.imencode(ext, rgb[:, :, ::-1])[1].tobytes() for ext in (".jpg", ".png")}
    for name in [m for m in list(sys.modules) if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now raises ImportError
    assert np.array_equal(compressed_to_rgb(FakeCompressed(encoded[".png"], "png")), rgb)
    assert compressed_to_rgb(FakeCompressed(encoded[".jpg"])).shape == (480, 640, 3)
    msg = make("bgr8", rgb[:, :, ::-1].copy())
    assert np.array_equal(shrink_for_model(image_to_rgb(msg, use_cv_bridge=False), 56),
                          cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA))
