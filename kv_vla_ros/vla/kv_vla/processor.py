"""Frame checking and normalization (the processor saved with the checkpoint).

A robot hands us whatever its camera gives; we accept uint8 HxWx3 / HxW (mono, broadcast to
RGB) and float HxWx3 / HxW in [0, 1], and reject everything else with a ValueError naming
``image`` and what was expected.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kv_vla_ros.vla.kv_vla.config import ProcessorConfig

EXPECTED = "uint8 HxWx3 (RGB) or HxW (mono), or float HxWx3/HxW in [0, 1]"


def check_image(image) -> np.ndarray:
    """Validate one camera frame; returns float32 (H, W, 3) in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a numpy array ({EXPECTED}), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image: expected {EXPECTED}; got ndim={image.ndim}, shape {image.shape}")
    if image.shape[2] == 1:
        image = np.broadcast_to(image, image.shape[:2] + (3,))
    if image.shape[2] != 3:
        raise ValueError(f"image: expected 3 channels ({EXPECTED}); got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: empty frame of shape {image.shape}; expected {EXPECTED}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError("image: contains NaN or inf values")
        if image.min() < 0.0 or image.max() > 1.0:
            raise ValueError(f"image: float frames must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]")
        return image.astype(np.float32)
    raise ValueError(f"image: unsupported dtype {image.dtype}; expected {EXPECTED}")


class ImageProcessor:
    """(T, H, W, 3) frames -> normalized float tensor (T, 3, S, S)."""

    def __init__(self, config: ProcessorConfig, image_size: int):
        self.config = config
        self.image_size = image_size
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, frames: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """frames: (T, H, W, 3) uint8, or float in [0, 1] -> (T, 3, S, S) float32 on ``device``."""
        x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        x = x.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = x.permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            # antialias: downscaling a large camera frame should average, not alias.
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @staticmethod
    def stats(frames: np.ndarray) -> ProcessorConfig:
        """Per-channel mean/std (in [0, 1] units) of uint8 frames (..., 3)."""
        flat = frames.reshape(-1, 3).astype(np.float64) / 255.0
        std = np.maximum(flat.std(axis=0), 1e-3)
        return ProcessorConfig(mean=flat.mean(axis=0).tolist(), std=std.tolist())


__all__ = ["check_image", "ImageProcessor", "EXPECTED"]
