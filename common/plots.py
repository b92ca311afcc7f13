"""Pictures of a finished run, written as PNGs beside it (headless matplotlib, Agg backend).

Usage::

    python -m common.plots RUN_DIR [--paper P] [--no_overlays]

* ``curves_<log>.png``: one per CSV log of the run (``training_log.csv`` / ``log.csv`` in RUN_DIR and
  in its stage sub-folders, e.g. charm_xray's ``phase1/log.csv``): panels for the losses, the
  validation metric(s) and the learning rate against the epoch.
* ``per_class_<key>.png``: the run's per-class AP/AUC (``metrics.json`` ``best.per_class_*``) as
  bars beside the published per-class numbers of the paper's registry entry, when it has them.
* Attention / evidence overlays: a paper declares its ``overlays(run_dir: Path, *, n_images: int) ->
  list[Path]`` in the ``xray_papers.overlays`` entry-point group (pyproject.toml), or registers one
  with :func:`register_overlays`; it is imported only when called. Common names no paper.

The paper is taken from ``--paper``, else from metrics.json ``paper``, else from the first folder
name on the run's path that is a registry paper. Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import csv
import math
import sys
import textwrap
from argparse import ArgumentParser
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import entry_points  # noqa: E402
from common.results import ResultsError, available_papers, convert_scale, load_paper  # noqa: E402

LOG_NAMES = ("training_log.csv", "log.csv")
#: entry-point group in which each paper package declares its overlay function (``[project.entry-points]``
#: of pyproject.toml: ``<paper> = "<paper>.plots:overlays"``); common itself names no paper
OVERLAY_GROUP = "xray_papers.overlays"
_REGISTERED: dict[str, Callable[..., list[Path]]] = {}
_SKIP = ("time", "remaining", "completion", "epoch", "step", "grad_var")


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run never leaves half a picture) and close it."""
    import io

    from common.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)
    return Path(path)


class PlotError(ValueError):
    """Bad input to the plotter (missing run folder, unreadable log, ...); one-line message."""


def find_logs(run_dir: str | Path) -> list[Path]:
    """CSV logs of a run: ``training_log.csv`` / ``log.csv`` in RUN_DIR and one level of sub-folders."""
    run = Path(run_dir)
    found = [run / n for n in LOG_NAMES if (run / n).is_file()]
    found += sorted(p for n in LOG_NAMES for p in run.glob(f"*/{n}"))
    return found


def read_log(path: str | Path) -> dict[str, list[float]]:
    """Numeric columns of a CSV log (non-numeric cells become NaN; all-text columns are dropped)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise PlotError(f"{path}: cannot read ({err.strerror})") from None
    cols: dict[str, list[float]] = {}
    for name in (rows[0].keys() if rows else ()):
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(name) or "nan"))
            except ValueError:
                vals.append(math.nan)
        if any(not math.isnan(v) for v in vals):
            cols[name] = vals
    return cols


def _groups(cols: dict[str, list[float]]) -> dict[str, list[str]]:
    names = [c for c in cols if not any(s in c.lower() for s in _SKIP) or c.lower() == "val_metric"]
    lr = [c for c in names if c.lower() == "lr" or c.lower().endswith("_lr") or c.lower().startswith("lr")]
    loss = [c for c in names if c not in lr and ("loss" in c.lower() or c.lower().endswith("_ce"))]
    val = [c for c in names if c not in lr and c not in loss and (c.startswith("val") or c.startswith("test")
                                                                  or c in ("best_metric",))]
    return {"loss": loss, "validation metric": val, "learning rate": lr}


def plot_curves(log: str | Path, out: str | Path, *, title: str) -> Path | None:
    """Draw losses / validation metrics / learning rate of one CSV log against the epoch.

    Args:
        log: the CSV file.
        out: PNG path to write.
        title: figure title.

    Returns:
        ``out``, or None when the log has no rows or no column to plot.
    """
    cols = read_log(log)
    groups = {k: v for k, v in _groups(cols).items() if v}
    if not groups:
        return None
    n = len(next(iter(cols.values())))
    x = cols.get("epoch", list(range(n)))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (what, names) in zip(axes[0], groups.items()):
        for c in names:
            ax.plot(x, cols[c], marker="o", ms=3, label=c)
        ax.set_title(what)
        ax.set_xlabel("epoch" if "epoch" in cols else "row")
        ax.set_ylabel(what)
        if what == "learning rate" and all(v > 0 for c in names for v in cols[c] if not math.isnan(v)):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def plot_per_class(metrics: dict[str, Any], paper: str, out_dir: str | Path, *, title: str,
                   results_dir: str | Path | None = None) -> list[Path]:
    """Bar chart of the run's per-class values beside the registry's published per-class numbers.

    Args:
        metrics: parsed metrics.json (``best`` or ``final`` section with ``per_class_*`` lists,
            ``class_names`` at the top level or from the registry's ``class_order``).
        paper: registry name.
        out_dir: folder for ``per_class_<key>.png``.
        title: figure title prefix.
        results_dir: registry folder (tests).

    Returns:
        The PNGs written (none when the run has no per-class list).
    """
    reg = load_paper(paper, results_dir)
    section = metrics.get("best") or metrics.get("final") or {}
    names = metrics.get("class_names") or (list(reg.class_order) if reg.class_order else None)
    written = []
    for key, values in section.items():
        if not key.startswith("per_class_") or not isinstance(values, list) or names is None or len(values) != len(names):
            continue
        base = key.removesuffix("_ema")  # the EMA model's list is compared with the same published numbers
        entry = next((e for e in reg.entries if e.per_class and e.per_class_key == base and e.show_by_default), None)
        entry = entry or next((e for e in reg.entries if e.per_class and e.per_class_key == base), None)
        pub = {}
        if entry is not None:
            pub = {_norm(c): convert_scale(v, entry.scale, reg.run_scale) for c, v in entry.per_class.items()}
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.2))
        xs = range(len(names))
        w = 0.4 if pub else 0.8
        ax.bar([i - (w / 2 if pub else 0) for i in xs], [v if v is not None else math.nan for v in values], w,
               label="this run")
        if pub:
            ax.bar([i + w / 2 for i in xs], [pub.get(_norm(c), math.nan) for c in names], w,
                   label=f"published: {entry.name}", alpha=0.8)
        metric = base.removeprefix("per_class_").upper() + (" (EMA model)" if key != base else "")
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} ({reg.run_scale})")
        ax.set_xlabel("class (no visible bar: 0, or undefined on this run, e.g. no positive example)")
        ax.set_title(f"{title}: per-class {metric}" + ("" if pub else " (no published per-class numbers)"))
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        out = Path(out_dir) / f"{key}.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(out)
    return written


def save_overlay_grid(rows: Sequence[Sequence[tuple[Any, Any, str]]], out: str | Path, *, title: str,
                      map_label: str = "attention") -> Path:
    """Write a grid of images with heat maps over them (the papers' attention overlays).

    Args:
        rows: one row per validation image; each panel is ``(image [H, W] or [H, W, 3] in [0, 1],
            heat map [h, w] or None, caption)``; maps are resized to the image and min-max scaled.
        out: PNG path.
        title: figure title (say what the maps are).
        map_label: colour-bar label.

    Returns:
        ``out``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    first = np.asarray(rows[0][0][0])
    panel_h = 2.0 * min(2.5, max(0.5, first.shape[0] / first.shape[1]))  # panels about as tall as the images
    # a caption line may be as wide as the image it stands over: at most ~2.2 of the 2.6-inch column, a
    # square image only panel_h, and about 0.8 of that once the colour bar and spacing take their share;
    # about 0.06 inch per character at font size 7. Longer lines are wrapped so that neighbouring
    # captions never run into each other
    image_w = 0.8 * min(2.2, panel_h * first.shape[1] / first.shape[0])
    chars = max(16, int(image_w / 0.06))
    rows = [[(img, heat, "\n".join(textwrap.fill(line, chars) for line in str(cap).split("\n")))
             for img, heat, cap in row] for row in rows]
    heading = textwrap.wrap(title, width=max(40, 30 * n_cols))
    # room (inches) for the wrapped title and the tallest caption, so neither runs into a panel
    cap_h = 0.04 + 0.13 * max(str(p[2]).count("\n") + 1 for r in rows for p in r)
    head_h = 0.2 + 0.16 * len(heading)
    height = n_rows * (panel_h + cap_h) + head_h + 0.2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, height), squeeze=False)
    fig.subplots_adjust(top=1 - (head_h + cap_h) / height, bottom=0.2 / height, hspace=cap_h / panel_h)
    im = None
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(row):
                continue
            image, heat, caption = row[j]
            image = np.asarray(image, dtype=np.float32)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            if heat is not None:
                h = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
                h = F.interpolate(h, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
                h = (h - h.min()) / (h.max() - h.min() + 1e-12)
                im = ax.imshow(h, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(caption, fontsize=7)
    if im is not None:
        # two short lines: one long vertical label is taller than a one-row figure and gets clipped
        bar = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02)
        bar.set_label(f"{map_label}\nmin-max scaled per panel", fontsize=7)
    fig.suptitle("\n".join(heading), fontsize=9, y=1 - 0.1 / height, va="top")
    return save_figure(fig, out, dpi=90)


def to_display(x: Any) -> Any:
    """A normalised image tensor [C, H, W] as a [H, W] (grey) or [H, W, 3] array in [0, 1] (min-max)."""
    x = x.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min() + 1e-12)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def register_overlays(paper: str, func: Callable[..., list[Path]]) -> None:
    """Register ``func(run_dir, *, n_images) -> list[Path]`` as ``paper``'s overlays (before any declared one)."""
    _REGISTERED[paper] = func


def declared_overlays() -> dict[str, str]:
    """paper -> "module:function" declared in :data:`OVERLAY_GROUP` (see :func:`common.entry_points.declared`)."""
    return entry_points.declared(OVERLAY_GROUP)


def overlay_function(paper: str) -> Callable[..., list[Path]] | None:
    """The paper's overlay function (registered, else declared and imported now); None if it has none."""
    if paper in _REGISTERED:
        return _REGISTERED[paper]
    spec = declared_overlays().get(paper)
    return None if spec is None else entry_points.load(spec)


def _guess_paper(run: Path, metrics: dict[str, Any]) -> str | None:
    papers = available_papers()
    if isinstance(metrics.get("paper"), str) and metrics["paper"] in papers:
        return metrics["paper"]
    for part in run.resolve().parts:
        if part in papers:
            return part
    return None


def plot_run(run_dir: str | Path, *, paper: str | None = None, overlays: bool = True, n_images: int = 4,
             results_dir: str | Path | None = None) -> list[Path]:
    """Write all pictures of a run beside it.

    Args:
        run_dir: the run folder.
        paper: registry / paper name (default: guessed, see the module docstring).
        overlays: also draw the paper's attention overlays (needs its checkpoint and data).
        n_images: validation images per overlay figure.
        results_dir: registry folder (tests).

    Returns:
        The PNG paths written.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PlotError(f"run folder not found: {run}")
    metrics: dict[str, Any] = {}
    if (run / "metrics.json").is_file():
        from common.data.errors import read_json  # common.data imports torch; this module stays light

        metrics = read_json(run / "metrics.json", error=PlotError)
    paper = paper or _guess_paper(run, metrics)
    title = f"{paper or 'run'} {run.name}"
    written: list[Path] = []
    for log in find_logs(run):
        stem = log.stem if log.parent == run else f"{log.parent.name}_{log.stem}"
        out = plot_curves(log, run / f"curves_{stem}.png", title=f"{title}: {log.relative_to(run)}")
        if out is not None:
            written.append(out)
    if paper is not None and metrics:
        written += plot_per_class(metrics, paper, run, title=title, results_dir=results_dir)
    if overlays and paper is not None:
        func = overlay_function(paper)
        if func is not None:
            written += func(run, n_images=n_images)
    return written


def plot_run_at_end(run_dir: str | Path, paper: str, **kwargs: Any) -> list[Path]:
    """:func:`plot_run` for a trainer's last step: a failure is one warning line, never a failed run.

    Args:
        run_dir: the run folder just written.
        paper: the paper name.
        **kwargs: passed to :func:`plot_run`.

    Returns:
        The PNGs written ([] after a failure).
    """
    try:
        written = plot_run(run_dir, paper=paper, **kwargs)
    except Exception as err:  # noqa: BLE001 - pictures must never fail a finished training
        print(f"plots: warning: pictures of {run_dir} not drawn ({type(err).__name__}: {err})", file=sys.stderr)
        return []
    for path in written:
        print(f"plots: wrote {path}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints one PNG path per line; returns 0, or 2 on bad input."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="run folder(s) (with metrics.json / CSV logs)")
    parser.add_argument("--paper", default=None, help="paper name (default: guessed from metrics.json or the path)")
    parser.add_argument("--no_overlays", action="store_true", help="skip the attention overlays (default: drawn)")
    parser.add_argument("--n_images", type=int, default=4, help="validation images per overlay (default: 4)")
    args = parser.parse_args(argv)
    try:
        for run in args.run_dir:
            for path in plot_run(run, paper=args.paper, overlays=not args.no_overlays, n_images=args.n_images):
                print(path)
    except (PlotError, ResultsError) as err:
        print(f"plots: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
