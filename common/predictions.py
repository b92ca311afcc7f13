"""What an evaluation rests on: its saved predictions and its split manifest.

Every trainer's evaluation writes, atomically, into its run folder:

* ``predictions.csv`` (the evaluation ``metrics.json`` reports; ``predictions_val.csv`` for a separate
  validation split): one row per sample, ``id``, the grouping columns the data has (``patient``,
  ``study``), then ``target_<class>`` columns (multi-label) or one ``target`` column (single-label),
  then ``prob_<class>`` columns, then any per-sample extras (``iou``, ``dice``). Rows are in dataset
  order (a DDP evaluation is put back in that order).
* re-ID: ``distmat.npy`` (query x gallery distances, float32) and ``predictions.csv`` with one row per
  image: ``id, role (query|gallery), pid, camid``; the matrix rows / columns follow the query / gallery
  rows of the CSV.
* ``split_manifest.json``: per split, the number of samples, the SHA-256 of its sorted ids, the id
  lists (and the per-sample patient / study / identity lists) gzip-compressed and base64-encoded, the
  protocol, and the overlaps the protocol allows (see :mod:`common.splits`).

``metrics.json`` names these files (key ``predictions``: file, epoch, rows, SHA-256; key
``split_manifest``; key ``split_check``: the overlap report of the check every trainer runs at start).
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import atomic_write_bytes, atomic_write_text
from common.data.errors import read_json

_logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
VAL_PREDICTIONS_FILE = "predictions_val.csv"
DISTMAT_FILE = "distmat.npy"
MANIFEST_FILE = "split_manifest.json"
#: per-sample grouping levels a split may carry, coarsest last (bootstrap resamples the coarsest present)
GROUP_LEVELS = ("study", "patient", "identity")


class PredictionsError(ValueError):
    """A predictions file or split manifest is missing or malformed; the message is one line."""


def relative_id(path: str | Path, root: str | Path | None = None) -> str:
    """A sample id from its file path: relative to ``root`` when it lies below it, else as given."""
    path = Path(path)
    if root:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# split manifest


def ids_sha256(ids: Sequence[Any]) -> str:
    """SHA-256 of the sorted ids joined by newlines (the same set gives the same hash in any order)."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode("utf-8")).hexdigest()


def encode_list(values: Sequence[Any]) -> str:
    """gzip + base64 of a JSON list of strings (``decode_list`` inverts it)."""
    raw = json.dumps([str(v) for v in values], separators=(",", ":")).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")


def decode_list(text: str) -> list[str]:
    return json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))


def build_split_manifest(splits: Mapping[str, Mapping[str, Sequence[Any]]], *, protocol: str | None = None,
                         allowed: Sequence[Mapping[str, Any]] = (), dataset: str | None = None) -> dict[str, Any]:
    """The manifest of a run's splits.

    Args:
        splits: ``{split name: {"ids": [...], "patient": [...], ...}}``; every level list is aligned with
            ``ids`` (one value per sample). Levels: ``ids`` (image / sample), ``study``, ``patient``,
            ``identity``, ``camera``.
        protocol: the split protocol's name (``official``, ``charm_notebook``, ...).
        allowed: overlaps the protocol allows (see :func:`common.splits.split_overlaps`).
        dataset: the data set's name.
    """
    out: dict[str, Any] = {"format": 1, "protocol": protocol, "dataset": dataset, "allowed_overlaps": list(allowed),
                           "splits": {}}
    for name, levels in splits.items():
        ids = [str(i) for i in levels["ids"]]
        entry: dict[str, Any] = {"num_samples": len(ids), "sha256": ids_sha256(ids), "ids_gz_b64": encode_list(ids)}
        for level, values in levels.items():
            if level == "ids" or values is None:
                continue
            if len(values) != len(ids):
                raise ValueError(f"split {name!r}: {len(values)} {level} values for {len(ids)} samples")
            entry[f"num_{level}"] = len({str(v) for v in values})
            entry[f"{level}_gz_b64"] = encode_list(values)
        out["splits"][name] = entry
    return out


def manifest_levels(manifest: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Decode a manifest into ``{split: {"ids": [...], "patient": [...], ...}}``."""
    try:
        return {name: {k[: -len("_gz_b64")]: decode_list(v) for k, v in entry.items() if k.endswith("_gz_b64")}
                for name, entry in manifest["splits"].items()}
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise PredictionsError(f"split manifest: cannot decode its id lists ({type(exc).__name__}: {exc})") from None


def write_split_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> Path:
    path = Path(folder) / MANIFEST_FILE
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", path)
    return path


def read_split_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise PredictionsError(f"split manifest not found: {path}")
    data = read_json(path, error=PredictionsError)
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
        raise PredictionsError(f"{path}: not a split manifest (no 'splits' object)")
    return data


def manifest_digest(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{split: sha256}``: two runs on the same splits have equal digests."""
    return {name: entry.get("sha256") for name, entry in manifest.get("splits", {}).items()}


# ----------------------------------------------------------------------------------------------
# predictions


def _columns(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    names = list(class_names) if class_names is not None and len(class_names) == num_classes else [
        f"c{i}" for i in range(num_classes)]
    return [str(n) for n in names]


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.15g}"


def predictions_csv_text(ids: Sequence[Any], targets: np.ndarray, probs: np.ndarray, *,
                         class_names: Sequence[str] | None = None, groups: Mapping[str, Sequence[Any]] | None = None,
                         extras: Mapping[str, np.ndarray] | None = None) -> str:
    """The CSV text of one evaluation (see the module docstring for the columns)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    n, c = probs.shape
    if len(ids) != n or targets.shape[0] != n:
        raise ValueError(f"predictions: {len(ids)} ids, {targets.shape[0]} targets and {n} probability rows")
    names = _columns(class_names, c)
    groups = {k: v for k, v in (groups or {}).items() if v is not None}
    extras = {k: np.asarray(v, dtype=np.float64).reshape(n) for k, v in (extras or {}).items()}
    multilabel = targets.ndim == 2
    header = ["id", *groups]
    header += [f"target_{x}" for x in names] if multilabel else ["target"]
    header += [f"prob_{x}" for x in names] + list(extras)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for i in range(n):
        row: list[Any] = [ids[i], *(g[i] for g in groups.values())]
        row += [_fmt(float(t)) for t in targets[i]] if multilabel else [int(targets[i])]
        row += [_fmt(float(p)) for p in probs[i]] + [_fmt(float(e[i])) for e in extras.values()]
        writer.writerow(row)
    return buf.getvalue()


@dataclass
class Predictions:
    """A parsed ``predictions.csv``: ``targets`` is (N, C) for multi-label, (N,) int for single-label."""

    ids: list[str]
    targets: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2


@dataclass
class ReidPredictions:
    distmat: np.ndarray
    q_ids: list[str]
    g_ids: list[str]
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    path: Path | None = None


def read_predictions(path: str | Path) -> Predictions | ReidPredictions:
    """Parse a ``predictions.csv`` (classification) or a re-ID one (with ``distmat.npy`` beside it)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise PredictionsError(f"predictions file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"id": str, "patient": str, "study": str, "identity": str},
                            keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise PredictionsError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from None
    if "id" not in frame.columns:
        raise PredictionsError(f"{path}: no 'id' column (columns: {', '.join(frame.columns)})")
    if "role" in frame.columns:
        mat_path = path.parent / DISTMAT_FILE
        if not mat_path.is_file():
            raise PredictionsError(f"{path}: a re-ID predictions file needs {mat_path}, which is missing")
        dist = np.load(mat_path, allow_pickle=False)
        q, g = frame[frame["role"] == "query"], frame[frame["role"] == "gallery"]
        if dist.shape != (len(q), len(g)):
            raise PredictionsError(f"{mat_path}: shape {dist.shape}, but {path} lists {len(q)} queries and "
                                   f"{len(g)} gallery images")
        return ReidPredictions(dist, q["id"].tolist(), g["id"].tolist(), q["pid"].to_numpy(np.int64),
                               g["pid"].to_numpy(np.int64), q["camid"].to_numpy(np.int64),
                               g["camid"].to_numpy(np.int64), path)
    prob_cols = [c for c in frame.columns if c.startswith("prob_")]
    if not prob_cols:
        raise PredictionsError(f"{path}: no prob_<class> column")
    names = [c[len("prob_"):] for c in prob_cols]
    tcols = [f"target_{n}" for n in names]
    if all(c in frame.columns for c in tcols):
        targets = frame[tcols].to_numpy(np.float64)
    elif "target" in frame.columns:
        targets = frame["target"].to_numpy(np.int64)
    else:
        raise PredictionsError(f"{path}: neither target_<class> columns nor a 'target' column")
    probs = frame[prob_cols].to_numpy(np.float64)
    if np.isnan(probs).any():
        row = int(np.argwhere(np.isnan(probs))[0][0])
        raise PredictionsError(f"{path}:{row + 2}: empty or non-numeric probability")
    groups = {g: frame[g].astype(str).tolist() for g in GROUP_LEVELS if g in frame.columns}
    used = {"id", "target", *tcols, *prob_cols, *groups}
    extras = {c: frame[c].to_numpy(np.float64) for c in frame.columns if c not in used}
    return Predictions(frame["id"].tolist(), targets, probs, names, groups, extras, path)


def loader_order(loader: Any, ctx: Any) -> np.ndarray:
    """Dataset index of each row of ``collect_outputs(loader)``: the ranks' sampler orders gathered in
    rank order (``0..n-1`` in a single process with a sequential sampler)."""
    source = loader.batch_sampler if loader.sampler is None else loader.sampler
    local = [int(i) for item in source for i in (item if isinstance(item, list | tuple) else [item])]
    if getattr(loader, "drop_last", False) and loader.batch_size:
        local = local[: len(local) // loader.batch_size * loader.batch_size]
    t = torch.tensor(local, dtype=torch.long)
    if getattr(ctx, "distributed", False):
        t = ctx.all_gather_cat(t.to(ctx.device)).cpu()
    return t.numpy()


class PredictionWriter:
    """Turns gathered evaluation outputs into ``predictions.csv`` (classification).

    Args:
        ids: one id per dataset index.
        class_names: class names (column suffixes); None -> ``c0, c1, ...``.
        groups: per-dataset-index grouping lists (``{"patient": [...]}``).
        score_key: the output holding the scores (``logits`` / ``probs``).
        activation: ``sigmoid`` (multi-label), ``softmax`` (single-label) or ``none`` (already
            probabilities).
        target_key: the output holding the targets.
        extra_keys: per-sample scalar outputs to keep as columns (``iou``, ``dice``).
    """

    def __init__(self, ids: Sequence[Any], *, class_names: Sequence[str] | None = None,
                 groups: Mapping[str, Sequence[Any]] | None = None, score_key: str = "logits",
                 activation: str = "sigmoid", target_key: str = "target", extra_keys: Sequence[str] = ()):
        if activation not in ("sigmoid", "softmax", "none"):
            raise ValueError(f"activation must be sigmoid, softmax or none, got {activation!r}")
        self.ids = [str(i) for i in ids]
        self.class_names = list(class_names) if class_names is not None else None
        self.groups = {k: list(v) for k, v in (groups or {}).items() if v is not None}
        self.score_key, self.activation, self.target_key = score_key, activation, target_key
        self.extra_keys = tuple(extra_keys)

    def write(self, folder: str | Path, outputs: Mapping[str, torch.Tensor], order: np.ndarray,
              name: str = PREDICTIONS_FILE) -> dict[str, Any]:
        # float64 activations written with 15 digits keep the ranking of large logits (a float32
        # sigmoid is 1.0 from logit 17 on, which would tie the top scores and change AP / AUC)
        scores = outputs[self.score_key].double()
        if self.activation == "sigmoid":
            scores = torch.sigmoid(scores)
        elif self.activation == "softmax":
            scores = torch.softmax(scores, dim=1)
        order = np.asarray(order)
        if len(order) != scores.shape[0]:
            raise ValueError(f"predictions: {scores.shape[0]} output rows but {len(order)} sample indices")
        back = np.argsort(order, kind="stable")  # dataset order
        order = order[back]
        probs = scores.numpy()[back]
        targets = outputs[self.target_key].numpy()[back]
        extras = {k: outputs[k].float().numpy().reshape(-1)[back] for k in self.extra_keys if k in outputs}
        text = predictions_csv_text([self.ids[i] for i in order], targets, probs, class_names=self.class_names,
                                    groups={k: [v[i] for i in order] for k, v in self.groups.items()}, extras=extras)
        path = Path(folder) / name
        atomic_write_text(text, path)
        return {"file": name, "rows": int(len(order)), "sha256": sha256_file(path)}


class ReidPredictionWriter:
    """Writes ``distmat.npy`` + the query / gallery listing from gathered ``feat, pid, camid, is_query``."""

    def __init__(self, ids: Sequence[Any], *, distance_metric: str = "euclidean"):
        self.ids = [str(i) for i in ids]
        self.distance_metric = distance_metric

    def write(self, folder: str | Path, outputs: Mapping[str, torch.Tensor], order: np.ndarray,
              name: str = PREDICTIONS_FILE) -> dict[str, Any]:
        from common.metrics import compute_distance_matrix

        order = np.asarray(order)
        back = np.argsort(order, kind="stable")
        order = order[back]
        is_query = outputs["is_query"].bool().numpy()[back]
        feat = outputs["feat"].float()[torch.from_numpy(back)]
        pid, cam = outputs["pid"].long().numpy()[back], outputs["camid"].long().numpy()[back]
        q = torch.from_numpy(is_query)
        dist = compute_distance_matrix(feat[q], feat[~q], metric=self.distance_metric).float().numpy()
        write_reid_predictions(folder, dist, [self.ids[i] for i in order[is_query]],
                               [self.ids[i] for i in order[~is_query]], pid[is_query], pid[~is_query],
                               cam[is_query], cam[~is_query], name=name)
        path = Path(folder) / name
        return {"file": name, "distmat": DISTMAT_FILE, "rows": int(len(order)), "sha256": sha256_file(path),
                "distance_metric": self.distance_metric}


def write_reid_predictions(folder: str | Path, distmat: np.ndarray, q_ids: Sequence[str], g_ids: Sequence[str],
                           q_pids: Sequence[int], g_pids: Sequence[int], q_camids: Sequence[int],
                           g_camids: Sequence[int], *, name: str = PREDICTIONS_FILE) -> None:
    folder = Path(folder)
    buf = io.BytesIO()
    np.save(buf, np.asarray(distmat, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(buf.getvalue(), folder / DISTMAT_FILE)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "role", "pid", "camid"])
    for role, ids, pids, cams in (("query", q_ids, q_pids, q_camids), ("gallery", g_ids, g_pids, g_camids)):
        for i, p, c in zip(ids, pids, cams):
            writer.writerow([i, role, int(p), int(c)])
    atomic_write_text(out.getvalue(), folder / name)


# ----------------------------------------------------------------------------------------------
# what a trainer hands to common.engine.fit


class EvalRecorder:
    """The evaluation record of one run: its split check (done at start) and its predictions writer.

    ``common.engine.fit`` (``FitConfig.recorder``) calls :meth:`save` with the outputs of the epoch
    ``metrics.json`` reports as best and merges :meth:`metrics_entries` into ``metrics.json``; trainers
    with their own test step call :meth:`save` themselves.
    """

    def __init__(self, writer: PredictionWriter | ReidPredictionWriter | None = None, *,
                 name: str = PREDICTIONS_FILE, manifest: Mapping[str, Any] | None = None,
                 split_check: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None):
        self.writer, self.name = writer, name
        self.extra = dict(extra or {})  # more metrics.json entries (e.g. train_class_counts)
        self.manifest = manifest
        self.split_check = dict(split_check) if split_check is not None else None
        self.saved: dict[str, dict[str, Any]] = {}

    def save(self, folder: str | Path, outputs: Mapping[str, torch.Tensor], order: np.ndarray, *,
             epoch: int | None = None, name: str | None = None, writer: Any = None) -> dict[str, Any]:
        writer = writer or self.writer
        name = name or self.name
        record = writer.write(folder, outputs, order, name=name)
        record["epoch"] = epoch
        self.saved[name] = record
        return record

    def metrics_entries(self, folder: str | Path | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.saved:
            out["predictions"] = dict(self.saved)
        elif folder is not None and (Path(folder) / self.name).is_file():  # a resumed, already finished run
            out["predictions"] = {self.name: {"file": self.name, "sha256": sha256_file(Path(folder) / self.name)}}
        if self.manifest is not None:
            out["split_manifest"] = {"file": MANIFEST_FILE, "protocol": self.manifest.get("protocol"),
                                     "sha256": manifest_digest(self.manifest)}
        if self.split_check is not None:
            out["split_check"] = self.split_check
        return {**out, **self.extra}


def start_recording(folder: str | Path, splits: Mapping[str, Mapping[str, Sequence[Any]]], *,
                    writer: Any = None, name: str = PREDICTIONS_FILE, protocol: str | None = None,
                    allowed: Sequence[Mapping[str, Any]] = (), dataset: str | None = None,
                    is_primary: bool = True, extra: Mapping[str, Any] | None = None) -> EvalRecorder:
    """What every trainer does at start: write ``split_manifest.json``, run the split check (log it;
    a forbidden overlap is a warning naming it) and return the :class:`EvalRecorder` for ``fit``."""
    from common.splits import split_overlaps

    manifest = build_split_manifest(splits, protocol=protocol, allowed=allowed, dataset=dataset)
    report = split_overlaps(splits, allowed=allowed)
    report["protocol"] = protocol
    if is_primary:
        write_split_manifest(folder, manifest)
    for line in report["forbidden"]:
        _logger.warning("split check: forbidden overlap: %s", line)
    for line in report["allowed"]:
        _logger.info("split check: %s", line)
    if not report["forbidden"]:
        _logger.info("split check: no forbidden overlap between %s", ", ".join(splits))
    return EvalRecorder(writer, name=name, manifest=manifest, split_check=report, extra=extra)
