"""``python -m benchmarks.report [--results DIR] [--write-readme README.md]``.

Writes the README's Performance table from the committed result files (``benchmarks/results/*.json``),
from the runs whose file marks the machine as quiet (``load.quiet``) only. Each figure gives the range
over those runs, whether its target was met in each, and the files it comes from; the files left out
are listed under the table. ``--write-readme`` replaces the table between the README's markers.
Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN = "<!-- benchmarks.report: begin (python -m benchmarks.report --write-readme README.md) -->"
END = "<!-- benchmarks.report: end -->"

Value = Callable[[dict[str, Any]], float | None]


def ratio(row: dict[str, Any]) -> float | None:
    return row.get("ratio")


def gflops(row: dict[str, Any]) -> float | None:
    return row.get("gflops_per_s")


def per_second(row: dict[str, Any]) -> float | None:
    return row.get("items_per_s")


def seconds(row: dict[str, Any]) -> float | None:
    return row.get("median_s")


def milliseconds(row: dict[str, Any]) -> float | None:
    return None if row.get("median_s") is None else 1000 * row["median_s"]


def extra(key: str, scale: float = 1.0) -> Value:
    def get(row: dict[str, Any]) -> float | None:
        v = (row.get("extra") or {}).get(key)
        return None if v is None else v * scale

    return get


@dataclass(frozen=True)
class Part:
    """One number of a figure: ``value`` of the rows named ``rows`` (all of them: a range over rows too)."""

    rows: tuple[str, ...]
    value: Value = ratio
    unit: str = "x"
    # target: a number, or the name of a row whose ratio in the same run is the bound
    target: float | str | None = None
    op: str = "<="


@dataclass(frozen=True)
class Figure:
    label: str
    parts: tuple[Part, ...]
    target_text: str = "-"


def _p(*rows: str, **kw: Any) -> Part:
    return Part(tuple(rows), **kw)


_DATA_2W = ("load 1024x1024 grayscale PNG -> 224 px, 2 workers", "load 1024x1024 grayscale PNG -> 512 px, 2 workers",
            "load 800x600 colour JPEG -> 224 px, 2 workers", "load 800x600 colour JPEG -> 512 px, 2 workers")
_MEM = [f"train step B={b} ({2 * b} images) {s} px" for s in (224, 384, 512) for b in (2, 4)]
_AP_SK = "sklearn average_precision_score per class (100000 x 30)"

FIGURES: tuple[Figure, ...] = (
    Figure("fp32 / bf16 matmul peak (2048²), GFLOP/s",
           (_p("matmul fp32 2048x2048", value=gflops, unit=""), _p("matmul bf16 2048x2048", value=gflops, unit=""))),
    Figure("dvxray paper model train step vs bare timm convnextv2_tiny (8 images, 224 px)",
           (_p("paper model train step", target=1.15),), "<= 1.15x"),
    Figure("dvxray `--batch_views false` vs batched views",
           (_p("paper model train step, --batch_views false", target=1.0),), "<= 1.00x (no slower)"),
    Figure("dvxray bf16 autocast vs fp32, paper model: NCHW / NHWC batches (`--channels_last auto`)",
           (_p("paper model train step, bf16 autocast", target=0.67),
            _p("paper model train step, bf16 autocast + NHWC batches", target=0.67)), "<= 0.67x"),
    Figure("dvxray `--compile` train / inference vs eager",
           (_p("paper model train step, torch.compile", target=0.87),
            _p("paper model inference, torch.compile", target=0.67)), "<= 0.87x / <= 0.67x"),
    Figure("dvxray `--compile` first train step / first inference (compile time), s",
           (_p("torch.compile first train step (compile time)", value=seconds, unit=" s"),
            _p("torch.compile first inference (compile time)", value=seconds, unit=" s"))),
    Figure("cxrlt BN + CSRA vs bare convnextv2_base + linear, train step",
           (_p("ConvNeXtV2CXR (BN + CSRA) train step", target=1.05),), "<= 1.05x"),
    Figure("cxrlt TTA flip / light / medium / heavy / flip_scale vs none (512 px)",
           tuple(_p(f"convnextv2_tiny 512 px, TTA {t}") for t in
                 ("flip (2 views)", "light (4 views)", "medium (6 views)", "heavy (8 views)", "flip_scale (6 views)"))),
    Figure("dcal SA + GLCA (PWCA off) train step vs bare DeiT-S; bare depth 14",
           (_p("DCAL SA+GLCA train step (PWCA off)", target="bare DeiT depth 14 train step"),
            _p("bare DeiT depth 14 train step")), "<= depth 14"),
    Figure("dcal SA + GLCA + PWCA train step vs bare DeiT-S",
           (_p("DCAL SA+GLCA+PWCA train step", target="bare DeiT depth 14 train step"),), "<= depth 14"),
    Figure("dcal eval (PWCA off) vs DeiT depth 14 inference; vectorised rollout vs loop",
           (_p("DCAL eval inference (PWCA off)"), _p("attention_rollout (vectorised)"))),
    Figure("charm_xray memory-bank retrieval, vectorised vs per-sample loop (bank 512, batch 128, C 1280)",
           (_p("MemoryBank.retrieve vectorised (bank 512, batch 128, C 1280)"),)),
    Figure("charm_xray full step vs bare EfficientNetV2-S; momentum update, ms per step",
           (_p("ChestXrayModel full train step"),
            _p("momentum update (MomentumFinalBlock.update)", value=milliseconds, unit=" ms"))),
    Figure("xmnet DenseNet-161 feature extraction, img/s; one XGBoost + Optuna trial at width 2208, s",
           (_p("feature extraction densenet161 224 px", value=per_second, unit=""),
            _p("XGBoost+Optuna study, 1 trial (D=2208, N=600, 10 classes)", value=seconds, unit=" s"))),
    Figure("metrics: AP / AUC (100,000 x 30) vs per-class scikit-learn",
           (_p("common.metrics average_precision (100000 x 30)", target=0.05),
            _p("common.metrics roc_auc_per_class (100000 x 30)", target=0.05)), "<= 0.05x"),
    Figure("re-ID CMC/mAP at Market-1501 size (given distances) vs per-query loop",
           (_p("evaluate_rank on given distances (3368 x 15913)", target=0.1),), "<= 0.1x"),
    Figure("data: 2 loader workers vs model consumption (1024² PNG / 800x600 JPEG, 224 and 512 px)",
           (_p(*_DATA_2W, value=extra("x_consumption"), target=2.0, op=">="),), ">= 2x"),
    Figure("PIL vs torchvision.io decode: PNG / JPEG (torchvision time over PIL's)",
           (_p("torchvision.io decode 1024x1024 grayscale PNG"), _p("torchvision.io decode 800x600 colour JPEG"))),
    Figure("peak RSS of a dvxray train step, GiB: 4 / 8 images at 224, 384, 512 px",
           tuple(_p(name, value=extra("peak_rss_mib", 1 / 1024), unit="") for name in _MEM)),
)


def load_results(folder: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(name, result) of the quiet runs in date order, and one line per file left out."""
    used, left_out = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        load = data.get("load") or {}
        if data.get("mode") != "full":
            left_out.append(f"`{path.name}`: a `{data.get('mode')}` run")
        elif load.get("quiet") is not True:
            left_out.append(f"`{path.name}`: marked not quiet (other processes used "
                            f"{load.get('others_cores_mean', float('nan')):.2f} cores on average)")
        else:
            used.append((path.name, data))
    used.sort(key=lambda item: (item[1].get("date", ""), item[0]))
    return used, left_out


def _num(v: float, unit: str) -> str:
    if unit == "x":
        return f"{v:.3f}" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:.0f}"
    return f"{v:.2g}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


def _range(values: Sequence[float], unit: str) -> str:
    lo, hi = _num(min(values), unit), _num(max(values), unit)
    if unit == "x":
        return f"{lo}x" if lo == hi else f"{lo}x-{hi}x"
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def _met(v: float, part: Part, rows: dict[str, dict[str, Any]]) -> bool | None:
    bound = part.target
    if isinstance(bound, str):
        bound = (rows.get(bound) or {}).get("ratio")
    if bound is None:
        return None
    return v <= bound if part.op == "<=" else v >= bound


def figure_line(fig: Figure, runs: Sequence[tuple[str, dict[str, Any]]]) -> str | None:
    measured, met, files = [], [], []
    for part in fig.parts:
        values, verdicts = [], []
        for name, data in runs:
            rows = {r["name"]: r for r in data.get("rows", [])}
            got = [v for v in (part.value(rows[n]) for n in part.rows if n in rows) if v is not None]
            if not got:
                continue
            values += got
            if name not in files:
                files.append(name)
            verdict = [_met(v, part, rows) for v in got]
            if all(x is not None for x in verdict):
                verdicts.append(all(verdict))
        if not values:
            return None
        measured.append(_range(values, part.unit))
        if part.target is not None and verdicts:
            k = sum(verdicts)
            met.append("yes" if k == len(verdicts) else "no" if k == 0 else f"{k} of {len(verdicts)} runs")
    sources = ", ".join(f"`{f}`" for f in files)
    return (f"| {fig.label} | {' / '.join(measured)} | {fig.target_text} | {' / '.join(met) or '-'} | "
            f"{len(files)} | {sources} |")


def render(folder: Path = RESULTS) -> str:
    """The Markdown table (and the list of files left out)."""
    runs, left_out = load_results(folder)
    lines = ["| figure | measured (range over runs) | target | met | runs | from (benchmarks/results/) |",
             "| --- | --- | --- | --- | ---: | --- |"]
    lines += [line for fig in FIGURES if (line := figure_line(fig, runs)) is not None]
    if left_out:
        lines += ["", "Left out: " + "; ".join(left_out) + "."]
    return "\n".join(lines) + "\n"


def replace_in_readme(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: the markers {BEGIN!r} and {END!r} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")


def readme_table(readme: Path) -> str:
    """The text between the README's markers (what ``--write-readme`` wrote)."""
    text = readme.read_text(encoding="utf-8")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="result folder (default: benchmarks/results)")
    parser.add_argument("--write-readme", type=Path, default=None, metavar="README",
                        help="replace the table between the README's benchmarks.report markers")
    args = parser.parse_args(argv)
    try:
        table = render(args.results)
        if args.write_readme is not None:
            replace_in_readme(args.write_readme, table)
    except (OSError, ValueError) as err:
        print(f"benchmarks.report: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
