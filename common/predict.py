"""Use a trained model on your own images: the one implementation behind every paper's ``predict.py``.

A paper plugs in through a :class:`PredictAdapter` (its model builder from a checkpoint's stored
arguments, class names, preprocessing, which layer Grad-CAM uses, its own attention map, what to
export), registered with :func:`register_adapter` by the paper's ``<paper>/adapter.py``. ``common``
never imports a paper statically: each paper declares its adapter in pyproject.toml (entry-point group
``xray_papers.predict_adapters``, see :mod:`common.entry_points`), imported at run time (by
:func:`get_adapter`) when a checkpoint or a command asks for that paper.

What :func:`predict_main` does for ``predict.py --checkpoint C --images DIR|LIST|CSV --output OUT.csv``:

* lists the inputs: a folder (image files, recursively, sorted; multi-view papers pair the files by
  their naming), a list file (one input per line, its first path(s) used: the papers' own split lists
  work as they are) or a CSV (the first column(s), or the columns named like the output's);
* reads the preprocessing the checkpoint was trained with (``common.preprocessing``), never flags;
* runs batched inference with a progress bar; an unreadable image is named on stderr and gets a row
  with the reason in the ``skipped`` column, and the rest go on;
* writes the CSV atomically (every 50 batches and at the end), so a killed run leaves a complete file;
  ``--resume`` keeps its rows and adds only inputs not in it (rows skipped before are retried);
* prints one warning on the first batch when images look wrong for the checkpoint (all-constant, 16-bit
  not scaled, already normalised, colour for a grey model);
* ``--threshold val`` reads per-class thresholds stored with the checkpoint (:func:`read_thresholds`).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text
from common.data.errors import DataError, read_json
from common.entry_points import declared
from common.preprocessing import ImageFacts, Preprocessing, decode_image, input_range_warning, to_input

_logger = logging.getLogger(__name__)

ADAPTER_GROUP = "xray_papers.predict_adapters"


def adapter_modules() -> dict[str, str]:
    """paper name -> the module whose import registers its adapter (declared in pyproject.toml)."""
    return {paper: spec.partition(":")[0] for paper, spec in sorted(declared(ADAPTER_GROUP).items())}


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")
TASKS = ("multilabel", "multiclass", "reid")
SKIPPED = "skipped"
PREDICTED = "predicted"
TOP_K_MULTICLASS = 5
_WRITE_EVERY = 50  # batches between atomic rewrites of the CSV

_ADAPTERS: dict[str, PredictAdapter] = {}


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode, on its device) and what came with its checkpoint.

    Attributes:
        model: the network.
        preprocessing: how its inputs are made.
        source: the checkpoint file.
        run_dir: the training run's folder, where ``thresholds.json`` is looked for (default: the
            checkpoint's folder).
        metadata: safetensors metadata / checkpoint extras (``thresholds`` may be among them).
        info: paper-specific values the adapter needs later (e.g. the FGVC branch count).
    """

    model: nn.Module
    preprocessing: Preprocessing
    source: Path
    run_dir: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class PredictAdapter:
    """What a paper supplies to predict, explain and export. Subclasses set ``paper`` and implement
    :meth:`load`; the rest have defaults for a single-input model returning logits."""

    paper: str = ""
    #: "multilabel" (sigmoid per class, thresholded), "multiclass" (softmax, top-5) or "reid" (embedding)
    task: str = "multilabel"
    #: CSV column(s) naming the input file(s): one per view
    views: tuple[str, ...] = ("image",)

    def load(self, path: Path, *, device: torch.device, fallback: Mapping[str, Any] | None = None) -> LoadedModel:
        """Rebuild the model of ``path`` in eval mode on ``device``; ``fallback``: preprocessing fields for
        checkpoints that record none (see ``common.preprocessing.resolve_preprocessing``)."""
        raise NotImplementedError

    def recognises(self, ckpt: Mapping[str, Any]) -> bool:
        """Whether a loaded checkpoint dict without a ``paper`` record was written by this paper's code."""
        return False

    def forward(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"logits": [B, K]}`` (re-ID: ``{"embedding": [B, D]}``) plus optional extras, e.g.
        ``"masks"`` [B, H, W] probabilities."""
        return {"logits": model(*inputs)}

    def scores(self, out: Mapping[str, torch.Tensor], loaded: LoadedModel) -> torch.Tensor:
        """Per-class probabilities [B, K] from :meth:`forward`'s output."""
        logits = out["logits"].float()
        return torch.sigmoid(logits) if self.task == "multilabel" else logits.softmax(-1)

    def pair_view(self, path: Path) -> tuple[str, int] | None:
        """For multi-view papers: (pair key, view index) of a file in a folder, None if it is not a view."""
        return None

    def cam_layer(self, model: nn.Module) -> nn.Module | None:
        """The layer Grad-CAM weighs (the last convolutional stage); None: no Grad-CAM."""
        return None

    def attention(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """The model's own spatial attention, one [B, h, w] map per view, or None."""
        return None

    def attention_label(self) -> str:
        return "model attention"

    def export_module(self, model: nn.Module) -> nn.Module:
        """A module mapping the input tensor(s) to a tensor (or tuple of tensors) for export."""
        return model

    def export_output_names(self, model: nn.Module) -> list[str]:
        return ["logits"]

    def explain(self, loaded: LoadedModel, inputs: Sequence[torch.Tensor], names: Sequence[str],
                out_paths: Sequence[Path], *, top_k: int = 3) -> list[Path]:
        """One PNG per image (``out_paths``); by default Grad-CAM of the top classes (common.explain)."""
        from common.explain import explain_batch

        return explain_batch(self, loaded, inputs, names, out_paths, top_k=top_k)

    def identity(self, path: Path) -> tuple[int, int] | None:
        """re-ID: (person/vehicle id, camera id) from a file name, None when the naming is unknown."""
        return None


def register_adapter(adapter: PredictAdapter) -> PredictAdapter:
    """Register ``adapter`` under ``adapter.paper``; a second adapter with the same name is an error."""
    if adapter.task not in TASKS:
        raise ValueError(f"adapter {adapter.paper}: task must be one of {TASKS}, got {adapter.task!r}")
    old = _ADAPTERS.get(adapter.paper)
    if old is not None and type(old) is not type(adapter):
        raise ValueError(f"a predict adapter for '{adapter.paper}' is already registered ({type(old).__name__})")
    _ADAPTERS[adapter.paper] = adapter
    return adapter


def get_adapter(paper: str) -> PredictAdapter:
    """The adapter of ``paper``, importing its declared module (:func:`adapter_modules`) when needed."""
    if paper not in _ADAPTERS:
        modules = adapter_modules()
        module = modules.get(paper)
        if module is None:
            raise ValueError(f"unknown paper '{paper}' (choose from {', '.join(modules)})")
        importlib.import_module(module)
        if paper not in _ADAPTERS:
            raise ValueError(f"{module} did not register a predict adapter for '{paper}'")
    return _ADAPTERS[paper]


def paper_of_checkpoint(path: str | Path) -> str:
    """Which paper wrote a checkpoint: its ``preprocessing.paper`` record, else its ``trainer`` path
    (``dvxray/main_finetune.py``), else the first adapter that recognises its layout.

    Raises:
        CheckpointError: unreadable, or no paper can be told (pass ``--paper``).
    """
    from common.checkpoint import load_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
        paper = meta.get("paper") or _json_field(meta.get("preprocessing"), "paper")
        if paper:
            return str(paper)
        raise CheckpointError(f"{path}: its metadata names no paper (no 'paper' / 'preprocessing'); pass --paper")
    ckpt = load_checkpoint(path)
    prep = ckpt.get("preprocessing")
    if isinstance(prep, Mapping) and prep.get("paper"):
        return str(prep["paper"])
    trainer = ckpt.get("trainer")
    papers = adapter_modules()
    if isinstance(trainer, str) and trainer.split("/")[0] in papers:
        return trainer.split("/")[0]
    for paper in papers:
        if get_adapter(paper).recognises(ckpt):
            return paper
    raise CheckpointError(f"{path}: cannot tell which paper's code wrote this checkpoint (no 'preprocessing' or "
                          f"'trainer' entry, layout not recognised); pass --paper ({', '.join(papers)})")


def _json_field(text: Any, key: str) -> Any:
    if not isinstance(text, str):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj.get(key) if isinstance(obj, dict) else None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (empty when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error type
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None


def read_checkpoint_any(path: str | Path) -> dict[str, Any]:
    """A ``.pth`` checkpoint as a dict, or a weights-only ``.safetensors`` export as
    ``{"model": state_dict, "args", "preprocessing", "thresholds", "extra", "paper"}`` (from its JSON metadata;
    ``extra``: model state outside the state dict, e.g. dvxray's CoordAtt-U signal).

    Raises:
        CheckpointError: missing, unreadable or unsafe file.
    """
    from common.checkpoint import load_checkpoint, load_weights_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint: not found: {path}")
    if path.suffix != ".safetensors":
        return load_checkpoint(path)
    state = load_weights_file(path)
    meta = safetensors_metadata(path)
    ckpt: dict[str, Any] = {"model": state, "metadata": meta}
    for key in ("args", "preprocessing", "thresholds", "extra"):
        if meta.get(key):
            try:
                ckpt[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: metadata entry '{key}' is not valid JSON") from None
    if meta.get("paper"):
        ckpt["paper"] = meta["paper"]
    return ckpt


def preprocessing_metadata(prep: Preprocessing, *, thresholds: Any = None, **extra: str) -> dict[str, str]:
    """safetensors metadata (strings only) recording ``prep`` (and thresholds) in a weights-only export."""
    meta = {"paper": prep.paper or "", "preprocessing": prep.to_json(), **extra}
    if thresholds is not None:
        meta["thresholds"] = json.dumps(thresholds)
    return meta


# ----------------------------------------------------------------------------------------------
# thresholds


def parse_threshold(text: str) -> float | str:
    """``--threshold``: a number in [0, 1] or ``val``."""
    if text.strip().lower() == "val":
        return "val"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'val', got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'val', got {value}")
    return value


def parse_thresholds(obj: Any, class_names: Sequence[str], source: str) -> np.ndarray:
    """Per-class thresholds from ``{"thresholds": {class_name: value}}`` or ``{"thresholds": [values in class
    order]}`` (the bare dict / list too; a value may be ``{"threshold": v, ...}``).

    Raises:
        ValueError: classes missing or unknown, wrong length, values outside [0, 1]; the message names
            ``source``.
    """
    if isinstance(obj, Mapping) and "thresholds" in obj:
        obj = obj["thresholds"]
    names = list(class_names)

    def value(v: Any, what: str) -> float:
        if isinstance(v, Mapping) and "threshold" in v:
            v = v["threshold"]
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: threshold of {what} is not a number ({v!r})") from None
        if not (math.isfinite(f) and 0.0 <= f <= 1.0):
            raise ValueError(f"{source}: threshold of {what} is {f}, outside [0, 1]")
        return f

    if isinstance(obj, Mapping):
        missing = [c for c in names if c not in obj]
        unknown = [c for c in obj if c not in names]
        if missing or unknown:
            raise ValueError(f"{source}: thresholds do not match the model's classes (missing {missing[:5]}, "
                             f"unknown {unknown[:5]})")
        return np.array([value(obj[c], repr(c)) for c in names], dtype=np.float64)
    if isinstance(obj, list | tuple):
        if len(obj) != len(names):
            raise ValueError(f"{source}: {len(obj)} thresholds for {len(names)} classes")
        return np.array([value(v, repr(c)) for v, c in zip(obj, names)], dtype=np.float64)
    raise ValueError(f"{source}: expected {{'thresholds': {{class: value}}}} or a list in class order, "
                     f"got {type(obj).__name__}")


def read_thresholds(loaded: LoadedModel) -> np.ndarray:
    """The per-class thresholds stored with a checkpoint (``--threshold val``).

    Looked up in order: the checkpoint's own ``thresholds`` entry or safetensors metadata, then
    ``thresholds.json`` in the run folder and in the checkpoint's folder.

    Raises:
        ValueError: none stored (the message lists where it looked), or they do not fit the classes.
    """
    names = loaded.preprocessing.class_names
    stored = loaded.metadata.get("thresholds")
    if stored is not None:
        obj = json.loads(stored) if isinstance(stored, str) else stored
        return parse_thresholds(obj, names, f"{loaded.source} (stored thresholds)")
    places = []
    for folder in (loaded.run_dir, loaded.source.parent):
        if folder is not None and folder / "thresholds.json" not in places:
            places.append(folder / "thresholds.json")
    for place in places:
        if place.is_file():
            return parse_thresholds(read_json(place, error=ValueError), names, str(place))
    raise ValueError(f"--threshold val: no per-class thresholds are stored with {loaded.source} (looked in its "
                     f"metadata and {', '.join(str(p) for p in places)}); fit them on the validation predictions "
                     "with `python -m common.thresholds RUN_DIR`, or pass a number")


def resolve_thresholds(threshold: float | str | None, loaded: LoadedModel, task: str) -> np.ndarray | None:
    """Per-class thresholds for ``--threshold`` (multi-label default 0.5; multi-class: none unless given,
    then the top-1 class is predicted only when its probability reaches it)."""
    k = loaded.preprocessing.num_classes
    if threshold == "val":
        return read_thresholds(loaded)
    if threshold is None:
        return np.full(k, 0.5) if task == "multilabel" else None
    return np.full(k, float(threshold))


# ----------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Item:
    """One input: its key (the file name(s) as written to the CSV) and the file path(s)."""

    key: tuple[str, ...]
    paths: tuple[Path, ...]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _resolve(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return base / p


def list_inputs(spec: str | Path, *, views: Sequence[str] = ("image",),
                pair_view: Callable[[Path], tuple[str, int] | None] | None = None,
                flag: str = "--images") -> tuple[list[Item], list[tuple[str, str]]]:
    """The inputs named by ``spec``: a folder, a list file or a CSV (see the module docstring).

    Relative paths in a list or CSV are taken from the current folder when they exist there (as the
    papers' split lists are written), else from the list's folder.

    Returns:
        (items, problems): ``problems`` are (name, reason) of folder files that cannot be used (an
        unpaired view).

    Raises:
        DataError: ``spec`` is missing, empty or malformed (names the file and line).
    """
    spec = Path(spec)
    n = len(views)
    if spec.is_dir():
        files = sorted(p for p in spec.rglob("*") if _is_image(p))
        if n == 1:
            items = [Item((p.relative_to(spec).as_posix(),), (p,)) for p in files]
            problems: list[tuple[str, str]] = []
        else:
            if pair_view is None:
                raise ValueError(f"{flag}: a folder of {n}-view inputs needs a pairing rule")
            groups: dict[str, dict[int, Path]] = {}
            problems = []
            for p in files:
                kv = pair_view(p)
                if kv is None:
                    problems.append((p.relative_to(spec).as_posix(), f"not a view ({'/'.join(views)}) by its name"))
                    continue
                groups.setdefault(kv[0], {})[kv[1]] = p
            items = []
            for key in sorted(groups):
                g = groups[key]
                if len(g) != n:
                    have = ", ".join(p.relative_to(spec).as_posix() for p in g.values())
                    problems.append((have, f"no matching {'/'.join(v for i, v in enumerate(views) if i not in g)} view"))
                    continue
                items.append(Item(tuple(g[i].relative_to(spec).as_posix() for i in range(n)),
                                  tuple(g[i] for i in range(n))))
        if not items:
            raise DataError(f"{flag} {spec}: no {'image pairs' if n > 1 else 'images'} found "
                            f"({', '.join(IMAGE_EXTENSIONS[:5])}, ...)")
        return items, problems
    if not spec.is_file():
        raise DataError(f"{flag}: not found: {spec} (expected a folder, a list file or a CSV)")
    base = spec.parent
    items = []
    if spec.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(spec, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{flag} {spec}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        cols = [c for c in views if c in frame.columns] if all(c in frame.columns for c in views) else \
            list(frame.columns[:n])
        if len(cols) < n:
            raise DataError(f"{flag} {spec}: needs {n} path column(s) ({', '.join(views)}), found {list(frame.columns)}")
        for row, values in enumerate(frame[cols].itertuples(index=False, name=None), start=2):
            if any(not v.strip() for v in values):
                raise DataError(f"{spec}:{row}: empty path")
            items.append(Item(tuple(v.strip() for v in values), tuple(_resolve(v.strip(), base) for v in values)))
    else:
        try:
            text = spec.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{flag} {spec}: not a text list (an image? pass its folder)") from None
        for line_no, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < n:
                raise DataError(f"{spec}:{line_no}: expected {n} path(s) ({', '.join(views)}), got {len(parts)}")
            items.append(Item(tuple(parts[:n]), tuple(_resolve(p, base) for p in parts[:n])))
    if not items:
        raise DataError(f"{flag} {spec}: lists no inputs")
    return items, []


class _InputDataset(Dataset):
    """(index, inputs [V, 3, H, W], reason or "", facts of view 0) per item; unreadable -> zeros + reason."""

    def __init__(self, items: Sequence[Item], prep: Preprocessing):
        self.items, self.prep = list(items), prep

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str, dict[str, Any]]:
        tensors, reason, facts = [], "", None
        for path in self.items[i].paths:
            try:
                arr, f = decode_image(path, self.prep)
                tensors.append(to_input(arr, self.prep))
                facts = facts or f
            except DataError as err:
                reason = str(err)
                break
        if reason:
            h, w = self.prep.input_size
            return i, torch.zeros(len(self.items[i].paths), 3, h, w), reason, {}
        return i, torch.stack(tensors), "", facts.__dict__


def _collate(batch: list) -> tuple[list[int], torch.Tensor, list[str], list[dict]]:
    idx, x, reasons, facts = zip(*batch)
    return list(idx), torch.stack(x), list(reasons), list(facts)


def iterate_inputs(items: Sequence[Item], prep: Preprocessing, *, batch_size: int, num_workers: int = 0,
                   desc: str = "predict") -> Any:
    """Yield (indices, inputs [B, V, 3, H, W], reasons, facts) over ``items`` with a progress bar."""
    loader = DataLoader(_InputDataset(items, prep), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    yield from tqdm(loader, desc=desc, unit="batch", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# output CSV


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically (temp file + rename)."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_text(buf.getvalue(), path)


def read_previous(path: Path, columns: Sequence[str], key_columns: Sequence[str]) -> pd.DataFrame:
    """``--resume``: the rows of an earlier run's CSV that have a result (skipped rows are retried).

    Raises:
        DataError: the file has other columns (written for another checkpoint or paper).
    """
    try:
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"--resume: cannot read {path} ({str(exc).splitlines()[0]})") from None
    if list(old.columns) != list(columns):
        extra = [c for c in old.columns if c not in columns][:4]
        lacking = [c for c in columns if c not in old.columns][:4]
        raise DataError(f"--resume: {path} was written with other columns (another checkpoint or paper?): "
                        f"unexpected {extra}, missing {lacking}; write to a new --output")
    return old[old[SKIPPED] == ""].reset_index(drop=True) if SKIPPED in old.columns else old


def check_output(path: Path, *, resume: bool, overwrite: bool, flag: str = "--output") -> None:
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{flag} must end in .csv, got {path}")
    if path.exists() and not (resume or overwrite):
        raise ValueError(f"{flag} {path} exists: pass --resume to add only new images, or --overwrite to replace it")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")


# ----------------------------------------------------------------------------------------------
# the predict command


def add_predict_args(parser: argparse.ArgumentParser, *, views: Sequence[str] = ("image",),
                     images_required: bool = True, reid: bool = False, has_device: bool = False
                     ) -> argparse._ArgumentGroup:
    """The flags of every paper's ``predict.py``: ``--checkpoint``, ``--images`` (re-ID: ``--query``,
    ``--gallery``, ``--topk``), ``--output``, ``--batch_size``, ``--device``, ``--threshold``, ``--explain``,
    ``--resume``, ... ``has_device``: the script already defines ``--device`` (cxrlt's original flags)."""
    g = parser.add_argument_group("prediction on your own images")
    g.add_argument("--checkpoint", required=images_required and not reid, default=None,
                   help="a run's checkpoint, a weights-only safetensors export, or the original code's checkpoint"
                        + ("; required" if images_required and not reid else ""))
    if reid:
        g.add_argument("--query", default=None, help="folder (or list / CSV) of query images; required")
        g.add_argument("--gallery", default=None, help="folder (or list / CSV) of gallery images; required")
        g.add_argument("--topk", type=int, default=10, help="gallery matches per query (default: 10)")
        g.add_argument("--distance_metric", choices=("euclidean", "cosine"), default="euclidean",
                       help="re-ID distance (default: euclidean)")
    what = f" (pairs: a folder paired by file name, or a list / CSV with {len(views)} path columns)" \
        if len(views) > 1 else ""
    g.add_argument("--images", required=False, default=None,
                   help=f"a folder, a list file (one input per line) or a CSV of images{what}"
                        + ("; required" if images_required and not reid else ""))
    g.add_argument("--output", default=None, help="output CSV (default: predictions.csv)")
    g.add_argument("--batch_size", type=int, default=16, help="images per forward pass (default: 16)")
    g.add_argument("--num_workers", type=int, default=0, help="image-reading worker processes (default: 0)")
    if not has_device:
        g.add_argument("--device", default="cuda",
                       help="cuda or cpu; cuda without a GPU falls back to CPU (default: cuda)")
    g.add_argument("--threshold", type=parse_threshold, default=None,
                   help="probability at or above which a class is predicted, or 'val' for the per-class "
                        "thresholds stored with the checkpoint (default: 0.5 for multi-label models; multi-class "
                        "models always name their top class unless a threshold is given)")
    g.add_argument("--explain", type=int, default=0, metavar="N",
                   help="write an explanation PNG for each of the first N images (default: 0)")
    g.add_argument("--explain_dir", default=None,
                   help="folder of the explanation PNGs (default: <output stem>_explain next to the CSV)")
    g.add_argument("--resume", action="store_true",
                   help="keep the rows of an existing --output and add only new images (default: off)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output (default: off)")
    return g


def _safe_stem(key: Sequence[str]) -> str:
    text = "__".join(Path(k).with_suffix("").as_posix() for k in key)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("_") or "image"


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _columns(adapter: PredictAdapter, prep: Preprocessing, extra: Sequence[str]) -> list[str]:
    cols = list(adapter.views) + list(prep.class_names) + [PREDICTED]
    if adapter.task == "multiclass":
        for r in range(1, min(TOP_K_MULTICLASS, prep.num_classes) + 1):
            cols += [f"top{r}", f"top{r}_prob"]
    return cols + list(extra) + [SKIPPED]


def _prediction_fields(adapter: PredictAdapter, probs: np.ndarray, names: Sequence[str],
                       thresholds: np.ndarray | None) -> dict[str, str]:
    row = {c: _fmt(p) for c, p in zip(names, probs)}
    if adapter.task == "multilabel":
        row[PREDICTED] = ";".join(c for c, p, t in zip(names, probs, thresholds) if p >= t)
    else:
        order = np.argsort(-probs, kind="stable")
        top = int(order[0])
        row[PREDICTED] = names[top] if thresholds is None or probs[top] >= thresholds[top] else ""
        for r, j in enumerate(order[:TOP_K_MULTICLASS], start=1):
            row[f"top{r}"], row[f"top{r}_prob"] = names[int(j)], _fmt(probs[int(j)])
    return row


def save_mask_png(mask: np.ndarray, path: Path) -> Path:
    """A boolean / [0, 1] mask as an 8-bit PNG (0 / 255), written atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(((np.asarray(mask) > 0.5) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    atomic_write_bytes(buf.getvalue(), path)
    return path


@torch.no_grad()
def _forward(adapter: PredictAdapter, loaded: LoadedModel, x: torch.Tensor, device: torch.device
             ) -> dict[str, torch.Tensor]:
    inputs = [x[:, v].to(device) for v in range(x.shape[1])]
    return adapter.forward(loaded.model, inputs)


def predict_main(adapter: PredictAdapter, args: argparse.Namespace, *,
                 fallback: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run ``predict.py --checkpoint ... --images ... --output ...`` for ``adapter``'s paper.

    ``fallback``: preprocessing fields from paper flags, used only for checkpoints that do not record them.

    Returns:
        The full output table (earlier rows kept by ``--resume`` included).
    """
    from common.dist import resolve_device
    from common.run import setup_logging

    setup_logging()
    if adapter.task == "reid":
        return predict_reid_main(adapter, args, fallback=fallback)
    if not args.checkpoint or not args.images:
        raise ValueError("--checkpoint and --images are required")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.explain < 0:
        raise ValueError(f"--explain must be >= 0, got {args.explain}")
    out = Path(args.output or "predictions.csv")
    check_output(out, resume=args.resume, overwrite=args.overwrite)
    device = resolve_device(args.device)
    loaded = adapter.load(Path(args.checkpoint), device=device, fallback=fallback)
    prep = loaded.preprocessing
    thresholds = resolve_thresholds(args.threshold, loaded, adapter.task)
    items, problems = list_inputs(args.images, views=adapter.views, pair_view=adapter.pair_view)
    extra_cols = ["mask"] if loaded.info.get("masks") else []
    columns = _columns(adapter, prep, extra_cols)
    previous = read_previous(out, columns, adapter.views) if args.resume and out.exists() else None
    done = set() if previous is None else set(previous[list(adapter.views)].itertuples(index=False, name=None))
    todo = [it for it in items if it.key not in done]
    mask_dir = out.parent / f"{out.stem}_masks"
    _logger.info("%s: %d input(s) listed, %d already in %s, %d to predict (%s model, %d classes, input %dx%d)",
                 args.images, len(items), len(items) - len(todo), out, len(todo), adapter.paper, prep.num_classes,
                 *prep.input_size)
    rows: list[dict[str, str]] = []
    for name, reason in problems:
        print(f"skipped: {name}: {reason}", file=sys.stderr)
    warned = False
    explain_items: list[tuple[Item, torch.Tensor]] = []

    def table() -> pd.DataFrame:
        new = pd.DataFrame(rows, columns=columns).fillna("")
        return new if previous is None else pd.concat([previous, new], ignore_index=True)

    for n_batch, (idx, x, reasons, facts) in enumerate(iterate_inputs(todo, prep, batch_size=args.batch_size,
                                                                       num_workers=args.num_workers), start=1):
        ok = [j for j, r in enumerate(reasons) if not r]
        batch_rows: dict[int, dict[str, str]] = {}
        for j, r in enumerate(reasons):
            if r:
                print(f"skipped: {r}", file=sys.stderr)
                batch_rows[j] = {**dict(zip(adapter.views, todo[idx[j]].key)), SKIPPED: r}
        if not ok:
            rows.extend(batch_rows[j] for j in sorted(batch_rows))
            continue
        if not warned:
            warned = True
            text = input_range_warning([ImageFacts(**facts[j]) for j in ok], [todo[idx[j]].key[0] for j in ok], prep)
            if text:
                print(text, file=sys.stderr)
        out_t = _forward(adapter, loaded, x[ok], device)
        probs = adapter.scores(out_t, loaded).float().cpu().numpy()
        masks = out_t.get("masks")
        for r, j in enumerate(ok):
            item = todo[idx[j]]
            row = {**dict(zip(adapter.views, item.key)), **_prediction_fields(adapter, probs[r], prep.class_names,
                                                                             thresholds), SKIPPED: ""}
            if masks is not None:
                mpath = mask_dir / f"{_safe_stem(item.key)}.png"
                save_mask_png(masks[r].float().cpu().numpy(), mpath)
                row["mask"] = str(mpath)
            batch_rows[j] = row
            if len(explain_items) < args.explain:
                explain_items.append((item, x[j]))
        rows.extend(batch_rows[j] for j in sorted(batch_rows))
        if n_batch % _WRITE_EVERY == 0:
            write_csv(table(), out)
    result = table()
    write_csv(result, out)
    n_skipped = sum(1 for r in rows if r.get(SKIPPED))
    _logger.info("wrote %s (%d rows: %d new, %d skipped)", out, len(result), len(rows), n_skipped)
    if explain_items:
        explain_dir = Path(args.explain_dir) if args.explain_dir else out.parent / f"{out.stem}_explain"
        written = run_explain(adapter, loaded, explain_items, explain_dir, device)
        for p in written:
            print(f"explain: wrote {p}")
    return result


def run_explain(adapter: PredictAdapter, loaded: LoadedModel, chosen: Sequence[tuple[Item, torch.Tensor]],
                folder: Path, device: torch.device) -> list[Path]:
    """One explanation PNG per chosen input, named after its file(s)."""
    written: list[Path] = []
    for item, x in chosen:
        inputs = [x[v][None].to(device) for v in range(x.shape[0])]
        written += adapter.explain(loaded, inputs, [" | ".join(item.key)],
                                   [folder / f"{_safe_stem(item.key)}_explain.png"])
    return written


# ----------------------------------------------------------------------------------------------
# re-ID: ranked gallery matches


@torch.no_grad()
def embed_items(adapter: PredictAdapter, loaded: LoadedModel, items: Sequence[Item], *, batch_size: int,
                device: torch.device, desc: str) -> tuple[torch.Tensor, list[str]]:
    """(embeddings [N, D] with NaN rows for unreadable images, reasons per item)."""
    feats: list[torch.Tensor | None] = [None] * len(items)
    reasons = [""] * len(items)
    for idx, x, rs, _ in iterate_inputs(items, loaded.preprocessing, batch_size=batch_size, desc=desc):
        ok = [j for j, r in enumerate(rs) if not r]
        for j, r in enumerate(rs):
            if r:
                reasons[idx[j]] = r
                print(f"skipped: {r}", file=sys.stderr)
        if ok:
            emb = adapter.forward(loaded.model, [x[ok][:, 0].to(device)])["embedding"].float().cpu()
            for r, j in enumerate(ok):
                feats[idx[j]] = emb[r]
    dim = next((f.shape[0] for f in feats if f is not None), 1)
    return torch.stack([f if f is not None else torch.full((dim,), float("nan")) for f in feats]), reasons


def distances(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """Query x gallery distances: squared-free euclidean, or 1 - cosine similarity."""
    if metric == "cosine":
        return 1.0 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).t()
    return torch.cdist(q.double(), g.double()).float()


def predict_reid_main(adapter: PredictAdapter, args: argparse.Namespace, *,
                      fallback: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """``predict.py --checkpoint C --query Q --gallery G``: for each query, the ``--topk`` nearest gallery
    images with their distances (and, when the file names carry identities, whether each is a match)."""
    from common.dist import resolve_device

    if not args.checkpoint or not args.query or not args.gallery:
        raise ValueError("re-ID prediction needs --checkpoint, --query and --gallery")
    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    out = Path(args.output or "predictions.csv")
    check_output(out, resume=args.resume, overwrite=args.overwrite)
    device = resolve_device(args.device)
    loaded = adapter.load(Path(args.checkpoint), device=device, fallback=fallback)
    queries, _ = list_inputs(args.query, flag="--query")
    gallery, _ = list_inputs(args.gallery, flag="--gallery")
    k = min(args.topk, len(gallery))
    columns = ["query", "query_id", "query_camera"]
    for r in range(1, k + 1):
        columns += [f"match{r}", f"match{r}_distance", f"match{r}_same_id"]
    columns.append(SKIPPED)
    previous = read_previous(out, columns, ["query"]) if args.resume and out.exists() else None
    done = set() if previous is None else set(previous["query"])
    todo = [q for q in queries if q.key[0] not in done]
    g_emb, g_reasons = embed_items(adapter, loaded, gallery, batch_size=args.batch_size, device=device,
                                   desc="gallery")
    good = [i for i, r in enumerate(g_reasons) if not r]
    if not good:
        raise DataError(f"--gallery {args.gallery}: no readable image")
    q_emb, q_reasons = embed_items(adapter, loaded, todo, batch_size=args.batch_size, device=device, desc="query")
    dist = distances(q_emb, g_emb[good], args.distance_metric) if todo else torch.zeros(0, len(good))
    k = min(k, len(good))
    rows = []
    ranked: list[tuple[Item, list[int], list[float]]] = []
    for i, item in enumerate(todo):
        qid = adapter.identity(item.paths[0])
        row = {"query": item.key[0], "query_id": "" if qid is None else str(qid[0]),
               "query_camera": "" if qid is None else str(qid[1]), SKIPPED: q_reasons[i]}
        if not q_reasons[i]:
            order = torch.argsort(dist[i], stable=True)[:k].tolist()
            picks = [good[j] for j in order]
            for r, (gi, j) in enumerate(zip(picks, order), start=1):
                gid = adapter.identity(gallery[gi].paths[0])
                row[f"match{r}"] = gallery[gi].key[0]
                row[f"match{r}_distance"] = _fmt(float(dist[i, j]))
                row[f"match{r}_same_id"] = "" if qid is None or gid is None else str(int(gid[0] == qid[0]))
            ranked.append((item, picks, [float(dist[i, j]) for j in order]))
        rows.append(row)
    new = pd.DataFrame(rows, columns=columns).fillna("")
    result = new if previous is None else pd.concat([previous, new], ignore_index=True)
    write_csv(result, out)
    _logger.info("wrote %s (%d queries ranked against %d gallery images)", out, len(result), len(good))
    if args.explain > 0 and ranked:
        from common.explain import draw_ranked

        folder = Path(args.explain_dir) if args.explain_dir else out.parent / f"{out.stem}_explain"
        for item, picks, dists in ranked[: args.explain]:
            same = []
            qid = adapter.identity(item.paths[0])
            for gi in picks[:10]:
                gid = adapter.identity(gallery[gi].paths[0])
                same.append(None if qid is None or gid is None else gid[0] == qid[0])
            path = draw_ranked(item.paths[0], [gallery[gi].paths[0] for gi in picks[:10]], dists[:10], same,
                               folder / f"{_safe_stem(item.key)}_ranked.png", query_name=item.key[0],
                               gallery_names=[gallery[gi].key[0] for gi in picks[:10]])
            print(f"explain: wrote {path}")
    return result
