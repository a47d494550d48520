"""π0's processor files: loading them (tokenizer, image processor, state/action statistics) with
transformers' own classes, and the steps the streaming policy needs from them.

transformers registers π0's image processor for the torchvision backend only; where torchvision
cannot be imported (it must match the installed torch build exactly), the same preprocessing runs
on transformers' PIL backend with π0's defaults, configured from the checkpoint's own
``processor_config.json`` (resize within ``size`` keeping the aspect ratio, pad to ``pad_size``,
rescale, normalize). Both write the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling

PROCESSOR_FILE = "processor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class PI0ImageProcessorPil(PilBackend):
    """``PI0ImageProcessor``'s defaults on transformers' PIL backend (see the module docstring)."""

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    size = {"max_height": 224, "max_width": 224}
    default_to_square = False
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    image_seq_length = 256
    pad_size = {"height": 224, "width": 224}
    do_pad = True


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401  (π0's registered image processor needs it)
    except Exception:  # missing, or built for another torch (its C ops fail to register)
        return False
    return True


def _image_processor(directory: Path):
    if _torchvision_works():
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(directory))
    return PI0ImageProcessorPil.from_pretrained(str(directory))


def load_processor(directory: str | Path):
    """``PI0Processor`` of a checkpoint directory; ``FileNotFoundError``/``ValueError`` name the file."""
    from transformers import AutoTokenizer, PI0Processor

    directory = Path(directory)
    path = directory / PROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{PROCESSOR_FILE}: missing from π0 checkpoint directory {directory} (write it with "
                                "PI0Processor.save_pretrained: image processing, state/action statistics)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"tokenizer.json: missing from π0 checkpoint directory {directory} "
                                "(write it with PI0Processor.save_pretrained)")
    from kv_vla_ros.vla.policy import read_json_object

    meta = read_json_object(path)
    if not isinstance(meta.get("image_processor"), dict):
        raise ValueError(f"{PROCESSOR_FILE}: expected an object with an 'image_processor' entry ({directory})")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    kwargs = {k: meta[k] for k in ("state_mean", "state_std", "actions_mean", "actions_std", "max_state_dim",
                                   "chunk_size") if k in meta}
    return PI0Processor(image_processor=_image_processor(directory), tokenizer=tokenizer, **kwargs)


def prompt_ids(processor, instruction: str) -> list[int]:
    """π0's text prompt ``<bos>{instruction}\\n`` as token ids (no image tokens: frames stream after)."""
    tok = processor.tokenizer
    return list(tok(f"{tok.bos_token or ''}{instruction}\n", add_special_tokens=False)["input_ids"])


def pixel_values(processor, frames: list[np.ndarray], dtype: torch.dtype, device) -> torch.Tensor:
    """float32 (H, W, 3) frames in [0, 1] -> (1, cameras, 3, S, S) normalized by the checkpoint's processor."""
    # uint8 in: the processor rescales itself, exactly as for a camera's own uint8 frames
    images = [np.rint(f * 255.0).astype(np.uint8) for f in frames]
    out = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return out.unsqueeze(0).to(device=device, dtype=dtype)


def normalized_state(processor, state: np.ndarray | None, max_state_dim: int, dtype, device) -> torch.Tensor:
    """(state_dim,) robot units -> (1, max_state_dim) normalized and zero-padded (zeros when None)."""
    if state is None:
        return torch.zeros(1, max_state_dim, dtype=dtype, device=device)
    x = torch.as_tensor(state, dtype=torch.float32)
    if processor.state_mean is not None and processor.state_std is not None:
        x = processor.normalize(x, "state")
    x = torch.nn.functional.pad(x, (0, max_state_dim - x.shape[-1]))
    return x.view(1, max_state_dim).to(device=device, dtype=dtype)


def unnormalize_actions(processor, actions: torch.Tensor) -> np.ndarray:
    """(n, action_dim) model units -> float32 robot units: the inverse of ``PI0Processor.normalize``."""
    x = actions.float().cpu()
    mean, std = processor.actions_mean, processor.actions_std
    if mean is not None and std is not None:
        x = x * (torch.tensor(std, dtype=torch.float32) + 1e-8) + torch.tensor(mean, dtype=torch.float32)
    return x.numpy().astype(np.float32)


__all__ = ["PI0ImageProcessorPil", "load_processor", "prompt_ids", "pixel_values", "normalized_state",
           "unnormalize_actions", "PROCESSOR_FILE"]
