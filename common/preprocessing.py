"""The preprocessing a model was trained with, stored with its checkpoint, and applied to new images.

A checkpoint written by a trainer of this collection carries a ``preprocessing`` dict (safetensors
exports: the JSON string in the ``preprocessing`` metadata entry). Its fields:

* ``input_size``: ``[height, width]`` of the network input.
* ``mean``, ``std``: per-channel normalisation after scaling to [0, 1].
* ``channels``: ``"rgb"`` (PIL ``convert("RGB")``; grey images are replicated) or ``"gray"`` (colour
  images become ITU-R 601 luma, then 3 identical channels: models trained on grey X-rays).
* ``resize``: ``"resize"`` (bilinear to ``input_size``, as torchvision ``Resize`` on a PIL image),
  ``"resize_cv2"`` (bilinear without antialiasing on the uint8 tensor, OpenCV ``INTER_LINEAR``),
  ``"resize_center_crop"`` (bilinear to ``resize_to``, then the centre ``input_size`` window) or
  ``"pad_center_crop"`` (no resize: the normalised image zero-padded to at least ``input_size`` and
  its centre window taken).
* ``high_bit_depth``: how a 16-bit / 32-bit / float grey image becomes 8 bits: ``"min_max"`` (min-max
  rescale, ``common.data.images.to_8bit``) or ``"percentile"`` (clip to the 0.5 / 99.5 percentiles).
* ``class_names``: the model's output order.
* ``paper``: the paper folder that wrote the checkpoint (used to find its predict adapter).

Older checkpoints without the dict get it derived from their stored training arguments by the paper's
adapter; what cannot be derived is named in the error (:func:`resolve_preprocessing`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from common.checkpoint import CheckpointError
from common.data.images import load_image

CHANNELS = ("rgb", "gray")
RESIZES = ("resize", "resize_cv2", "resize_center_crop", "pad_center_crop")
HIGH_BIT_DEPTHS = ("min_max", "percentile")
#: fields without which a checkpoint is refused for prediction
REQUIRED_FIELDS = ("input_size", "mean", "std", "channels", "resize", "class_names")
_REEXPORT = "re-export it from the run's training checkpoint (python -m common.export ... --format safetensors)"
_HIGH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the network input (see the module docstring for the fields)."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: str
    resize: str
    class_names: tuple[str, ...]
    resize_to: tuple[int, int] | None = None
    high_bit_depth: str = "min_max"
    paper: str | None = None

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise CheckpointError(f"preprocessing: channels must be one of {CHANNELS}, got {self.channels!r}")
        if self.resize not in RESIZES:
            raise CheckpointError(f"preprocessing: resize must be one of {RESIZES}, got {self.resize!r}")
        if self.high_bit_depth not in HIGH_BIT_DEPTHS:
            raise CheckpointError(f"preprocessing: high_bit_depth must be one of {HIGH_BIT_DEPTHS}, "
                                  f"got {self.high_bit_depth!r}")
        if self.resize == "resize_center_crop" and self.resize_to is None:
            raise CheckpointError("preprocessing: resize 'resize_center_crop' needs resize_to")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str) -> Preprocessing:
        """Build from a stored dict; a missing field is an error naming it and ``source``."""
        missing = [k for k in REQUIRED_FIELDS if d.get(k) is None]
        if missing:
            raise CheckpointError(f"{source}: the preprocessing the model was trained with is incomplete: missing "
                                  f"{', '.join(missing)}")
        return cls(input_size=_pair(d["input_size"]), mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]), channels=str(d["channels"]), resize=str(d["resize"]),
                   class_names=tuple(str(c) for c in d["class_names"]),
                   resize_to=_pair(d["resize_to"]) if d.get("resize_to") is not None else None,
                   high_bit_depth=str(d.get("high_bit_depth") or "min_max"), paper=d.get("paper"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int | float):
        return int(v), int(v)
    v = list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def resolve_preprocessing(stored: Mapping[str, Any] | None, derived: Mapping[str, Any] | None, source: str,
                          *, fallback: Mapping[str, Any] | None = None, hint: str | None = None) -> Preprocessing:
    """The checkpoint's preprocessing: the stored dict, else what its training arguments give.

    Args:
        stored: the checkpoint's ``preprocessing`` dict (new checkpoints), or None.
        derived: fields the paper's adapter derived from the stored args (older checkpoints), or None.
        source: names the checkpoint in errors.
        hint: how to supply what is missing (default: re-export from the training checkpoint).
        fallback: fields given by the caller for checkpoints that record neither (the original code's
            layouts, e.g. a plain state dict); used only where nothing stored or derived gives the field.

    Raises:
        CheckpointError: a required field is neither stored nor derivable; the message names them all.
    """
    merged: dict[str, Any] = {k: v for k, v in (fallback or {}).items() if v is not None}
    merged.update({k: v for k, v in (derived or {}).items() if v is not None})
    merged.update({k: v for k, v in (stored or {}).items() if v is not None})
    missing = [k for k in REQUIRED_FIELDS if merged.get(k) is None]
    if missing:
        how = "no 'preprocessing' entry and its stored training arguments do not give" if not stored else \
            "its 'preprocessing' entry lacks"
        raise CheckpointError(f"{source}: cannot tell how images were preprocessed for this model ({how} "
                              f"{', '.join(missing)}); {hint or _REEXPORT}")
    return Preprocessing.from_dict(merged, source)


# ----------------------------------------------------------------------------------------------
# decoding


def percentile_rescale(arr: np.ndarray) -> np.ndarray:
    """A non-8-bit image to uint8 as the CXR-LT original: clip to the 0.5 / 99.5 percentiles of every
    s-th pixel (s = max(1, n // 2000)) and map linearly to 0..255; if those are equal, divide by the
    maximum (when positive). 8-bit input is returned unchanged."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    flat = a.reshape(-1)
    step = max(1, flat.size // 2000)
    lo, hi = np.percentile(flat[::step], [0.5, 99.5])
    if hi > lo:
        a = (np.clip(a, lo, hi) - lo) / (hi - lo) * 255.0
    else:
        peak = float(a.max())
        if peak > 0:
            a = a / peak * 255.0
    return np.clip(a, 0, 255).astype(np.uint8)


def _min_max(arr: np.ndarray) -> np.ndarray:
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageFacts:
    """What the input-range check needs to know about one decoded file."""

    mode: str
    constant: bool
    raw_min: float
    raw_max: float
    colour: bool
    low_contrast: bool = False


def decode_image(path: str | Path, prep: Preprocessing) -> tuple[np.ndarray, ImageFacts]:
    """Read ``path`` as an H x W x 3 uint8 array the way the checkpoint's training read its images.

    Raises:
        DataError: missing, not an image, or corrupt (the message names the file).
    """
    img = load_image(path, mode=None)  # the file's own pixels; missing / corrupt -> DataError naming it
    mode = img.mode
    if mode in _HIGH_MODES:
        raw = np.asarray(img)
        if raw.ndim == 3:
            raw = raw[..., 0]
        grey = percentile_rescale(raw) if prep.high_bit_depth == "percentile" else _min_max(raw)
        arr = np.repeat(grey[..., None], 3, axis=2)
        colour = False
    else:
        raw = None
        rgb = np.asarray(img.convert("RGB"))
        colour = mode not in ("L", "1", "LA", "P") and not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
        if prep.channels == "gray":
            grey = np.asarray(img.convert("L"))
            arr = np.repeat(grey[..., None], 3, axis=2)
        else:
            arr = rgb
    values = raw if raw is not None else arr
    lo, hi = float(values.min()), float(values.max())
    low = int(arr.max()) - int(arr.min()) < 8
    return np.require(arr, requirements=["C", "W"]), ImageFacts(mode=mode, constant=lo == hi, raw_min=lo, raw_max=hi, colour=colour,
                                                 low_contrast=low)


def to_input(arr: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """H x W x 3 uint8 -> the normalised 3 x H' x W' float tensor the model was trained on."""
    h, w = prep.input_size
    if prep.resize == "resize_cv2":
        t = TF.resize(torch.from_numpy(arr).permute(2, 0, 1), [h, w], interpolation=TF.InterpolationMode.BILINEAR,
                      antialias=False)
    elif prep.resize in ("resize", "resize_center_crop"):
        # PIL's bilinear resize: what torchvision's Resize does to the PIL images of the training loaders
        rh, rw = (h, w) if prep.resize == "resize" else prep.resize_to
        img = Image.fromarray(arr).resize((rw, rh), Image.BILINEAR)
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        if prep.resize == "resize_center_crop":
            t = TF.center_crop(t, [h, w])
    else:
        t = torch.from_numpy(arr).permute(2, 0, 1)
    x = t.float() / 255.0
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(-1, 1, 1)
    x = (x - mean) / std
    if prep.resize == "pad_center_crop":
        ph, pw = max(0, h - x.shape[1]), max(0, w - x.shape[2])
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
        x = x[:, top:top + h, left:left + w]
    return x.contiguous()


def input_range_warning(facts: Sequence[ImageFacts], names: Sequence[str], prep: Preprocessing) -> str | None:
    """One warning line when the first batch's images look wrong for the checkpoint, else None.

    Checks (as TorchXRayVision warns on a first batch outside its expected range): an all-constant image;
    an image left with fewer than 8 grey levels after the conversion to 8 bits (a 16-bit image whose
    values were not scaled, e.g. kept as their high byte); a float image whose values are already within
    [-5, 5] (normalised already; the checkpoint's own mean/std are applied on top); a colour image given
    to a model trained on grey images.
    """
    problems = []
    for f, name in zip(facts, names):
        if f.constant:
            problems.append(f"{name} is all-constant ({f.raw_min:g})")
        elif f.mode == "F" and f.raw_min >= -5 and f.raw_max <= 5:
            problems.append(f"{name} is a float image in [{f.raw_min:.3g}, {f.raw_max:.3g}] (already "
                            "normalised? the checkpoint's own mean/std are applied on top)")
        elif f.low_contrast:
            problems.append(f"{name} ({f.mode}, values {f.raw_min:g}..{f.raw_max:g}) has fewer than 8 grey levels "
                            "in 8 bits (16-bit values not scaled?)")
        elif f.colour and prep.channels == "gray":
            problems.append(f"{name} is a colour image but the model was trained on grey images (converted to grey)")
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return ("warning: the first batch looks wrong for this checkpoint: " + "; ".join(problems[:3]) + more
            + f"; the model expects {prep.channels} images resized to {prep.input_size[0]}x{prep.input_size[1]}")
