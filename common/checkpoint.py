"""Atomic checkpoint files, safe loading and weights-only exports.

* Writes go to a temporary file in the same folder, are fsync'ed, then ``os.replace``-d over the
  target, so a crash mid-save leaves the previous checkpoint intact.
* ``.pth`` files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary
  unpickling is refused (loading it could run code).
* Weights-only exports use safetensors.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save as _safetensors_bytes


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, unsafe or has an unexpected layout."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 - umask)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # fsync the directory so the rename itself survives a power loss
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# mkstemp names: "." + target name + "." + 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that an interrupted atomic write left in ``folder``.

    A kill during a save leaves ``.<name>.<random>.tmp`` next to the target (up to a checkpoint's size);
    the target itself is intact. Call this at the start of a run, when no other writer uses the folder.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _TEMP_NAME.match(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Save a training checkpoint atomically. ``state`` must hold only tensors and plain types."""
    atomic_save(dict(state), path)


# Leading bytes of file types that are sometimes passed by mistake where a checkpoint is expected.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"RIFF", "a RIFF (WebP/WAV/AVI) file"),
    (b"DICM", "a DICOM file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF", "an HDF5 file (Keras/h5py)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"version https://git-lfs", "a Git LFS pointer (the weights were never downloaded)"),
)


def describe_file(path: str | Path) -> str | None:
    """What a file that is not a PyTorch checkpoint seems to be, from its first bytes.

    Returns:
        e.g. ``"empty (0 bytes)"``, ``"a PNG image"``, ``"a safetensors file"``, ``"text"``; None when the
        file starts like a PyTorch checkpoint (zip archive or pickle) or nothing is recognised.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return "empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # torch's zip format, or a legacy / protocol-2+ pickle
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) >= 10 and head[8:10] in (b'{"', b"{'") and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.lstrip().startswith(("{", "[")):
        return "JSON text"
    if text.lstrip().startswith("<"):
        return "XML/HTML text"
    return "text" if text.isprintable() or "\n" in text else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``.pth`` checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, empty, of another type (named from its first bytes),
            truncated or corrupted, or holds objects that need arbitrary unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = describe_file(path)
    if kind is not None:
        if kind.startswith("empty"):
            raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes; an interrupted "
                                  "copy or download?)")
        hint = " (load it with --finetune / a weights flag that takes .safetensors)" if "safetensors" in kind else ""
        raise CheckpointError(f"cannot read checkpoint {path}: it is {kind}, not a PyTorch checkpoint{hint}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary unpickling, which can run code "
            f"(weights_only=True rejected it: {first}). Re-save it as a plain state dict or safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, EOFError) or "zip archive" in text or not zipfile.is_zipfile(path):
            size = path.stat().st_size
            raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupted "
                                  f"({size} bytes; {text.split('. ')[0]})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {text}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


_STATE_DICT_KEYS = ("model", "state_dict", "model_ema", "module")


def load_weights_file(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{name: tensor}`` state dict.

    Args:
        path: ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.
        key: entry to take from a ``.pth`` dict; by default the first of model, state_dict,
            model_ema, module that holds a dict, else the file itself.

    Raises:
        CheckpointError: missing file, unsafe pickle, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return _load_safetensors(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError type
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None
    obj = load_checkpoint(path)
    if key is not None:
        if key not in obj or not isinstance(obj[key], Mapping):
            raise CheckpointError(f"{path}: no state dict under key '{key}' (keys: {sorted(obj)[:10]})")
        obj = obj[key]
    else:
        for k in _STATE_DICT_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    return tensors


def export_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write a weights-only safetensors file atomically (tensors copied contiguous, so shared storage is split)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(_safetensors_bytes(tensors, metadata=metadata), path)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), NumPy and Python, as checkpoint-safe values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(state: Mapping[str, Any]) -> tuple:
    return (state["version"], tuple(int(x) for x in state["internal"].tolist()), state["gauss"])


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, *,
                           allow_missing: bool | tuple[str, ...] = False) -> None:
    """``module.load_state_dict(state)`` with strict semantics and a one-line error.

    Args:
        module: the model to fill.
        state: the state dict to load.
        what: names the source in the message, e.g. ``"--checkpoint run/best.pth"``.
        allow_missing: a partial load (e.g. a backbone only): keys of ``module`` absent from ``state``
            keep their values; shape mismatches and unexpected keys are still errors. A tuple of key
            prefixes allows only those keys to be missing (e.g. a head the file never had).

    Raises:
        CheckpointError: shapes differ, or keys are missing or unexpected (torch would raise a
            RuntimeError with one line per tensor); the message counts them and shows a few.
    """
    own = module.state_dict()
    # an empty tensor in the module is a lazily sized buffer/parameter whose load hook takes the saved shape
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor)
             and own[k].numel() > 0 and v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{what}: weights do not fit the model ({len(wrong)} tensors differ in shape, "
                              f"e.g. {wrong[:3]})")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch's report: one line per tensor
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise CheckpointError(f"{what}: weights do not fit the model ({detail})") from None
    if allow_missing is True:
        missing = []
    elif allow_missing:
        missing = [k for k in missing if not k.startswith(allow_missing)]
    if missing or unexpected:
        raise CheckpointError(f"{what}: weights do not fit the model ({len(missing)} missing, e.g. "
                              f"{sorted(missing)[:4]}; {len(unexpected)} unexpected, e.g. {sorted(unexpected)[:4]})")
