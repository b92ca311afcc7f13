"""The benchmark harness runs and writes a well-formed result (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"section", "name", "median_s", "min_s", "max_s", "reps", "items", "items_per_s", "flops", "gflops_per_s",
            "pct_peak", "ref", "ratio", "extra", "note"}


def _run(tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--threads", "1", "--out", str(tmp_path),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jsons = list(tmp_path.glob("*.json"))
    mds = list(tmp_path.glob("*.md"))
    assert len(jsons) == 1 and len(mds) == 1
    only = [args[i + 1] for i, a in enumerate(args) if a == "--only"]
    # a quick or partial run is named so that it never overwrites the day's full run
    suffix = "-quick" + ("-only-" + "-".join(only) if only else "")
    assert jsons[0].stem == mds[0].stem and jsons[0].stem.endswith(suffix)
    result = json.loads(jsons[0].read_text())
    md = mds[0].read_text()
    assert "| section | case | median ms |" in md
    assert md in proc.stdout  # the table is also printed
    return result


def _check(result: dict, sections: list[str]) -> None:
    for key in ("command", "mode", "date", "duration_s", "machine", "peak_gflops", "load", "sections", "errors",
                "notes", "rows"):
        assert key in result, key
    assert result["mode"] == "quick"
    assert result["errors"] == {}
    m = result["machine"]
    for key in ("cpu_model", "logical_cpus", "torch_threads", "torch_version", "device", "native_bf16"):
        assert key in m, key
    assert isinstance(m["native_bf16"], bool)
    assert result["sections"] == sections
    assert {"fp32", "bf16"} <= set(result["peak_gflops"])
    assert isinstance(result["load"]["quiet"], bool)
    assert math.isfinite(result["load"]["others_cores_mean"])
    seen = set()
    for row in result["rows"]:
        assert set(row) == ROW_KEYS
        seen.add(row["section"])
        assert "not available" in row["note"] or row["median_s"] is not None, row
        for key in ("median_s", "min_s", "max_s", "items_per_s", "flops", "gflops_per_s", "pct_peak", "ratio"):
            v = row[key]
            assert v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0), (key, row)
        if row["median_s"] is not None:
            assert row["min_s"] <= row["median_s"] <= row["max_s"]
        for k, v in row["extra"].items():
            assert isinstance(v, (int, float)) and math.isfinite(v), (k, row)
    assert seen == set(sections)


def test_quick_one_section(tmp_path: Path) -> None:
    result = _run(tmp_path, "--only", "metrics")
    _check(result, ["matmul", "metrics"])
    diffs = [r["extra"]["max_abs_diff"] for r in result["rows"] if "max_abs_diff" in r["extra"]]
    assert diffs and max(diffs) < 1e-9


@pytest.mark.slow
def test_quick_all_sections(tmp_path: Path) -> None:
    from benchmarks.run import SECTIONS

    _check(_run(tmp_path), list(SECTIONS))
