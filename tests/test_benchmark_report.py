"""benchmarks.report: the README's Performance table is its output, from the quiet committed runs only."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import main, readme_table, render

ROOT = Path(__file__).resolve().parents[1]


def test_readme_performance_table_is_the_report_of_the_committed_results():
    assert readme_table(ROOT / "README.md") == render(ROOT / "benchmarks" / "results")


def _result(path: Path, *, quiet: bool, ratio: float, date: str) -> None:
    rows = [{"section": "metrics", "name": f"common.metrics {name} (100000 x 30)", "ratio": ratio,
             "median_s": 1.0, "extra": {}} for name in ("average_precision", "roc_auc_per_class")]
    path.write_text(json.dumps({"mode": "full", "date": date, "rows": rows,
                                "load": {"quiet": quiet, "others_cores_mean": 0.0 if quiet else 0.9}}))


def test_only_quiet_runs_count_and_each_figure_names_its_files(tmp_path, capsys):
    _result(tmp_path / "a.json", quiet=True, ratio=0.04, date="2026-01-01")
    _result(tmp_path / "b.json", quiet=True, ratio=0.07, date="2026-01-02")
    _result(tmp_path / "noisy.json", quiet=False, ratio=0.5, date="2026-01-03")
    table = render(tmp_path)
    line = next(line for line in table.splitlines() if line.startswith("| metrics: AP"))
    assert "0.040x-0.070x / 0.040x-0.070x" in line and "1 of 2 runs / 1 of 2 runs" in line and "`a.json`, `b.json`" in line
    assert "0.50" not in table and "`noisy.json`: marked not quiet (other processes used 0.90 cores" in table
    # figures without any row in the files are not printed
    assert "dvxray" not in table
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- benchmarks.report: begin (python -m benchmarks.report --write-readme README.md) -->\n"
                      "old\n<!-- benchmarks.report: end -->\ny\n")
    assert main(["--results", str(tmp_path), "--write-readme", str(readme)]) == 0
    assert readme_table(readme) == table and capsys.readouterr().out == table
    assert readme.read_text().startswith("x\n") and readme.read_text().endswith("-->\ny\n")
