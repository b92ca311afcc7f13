"""Published-results registry (common/results/*.yaml) and the `python -m common.compare` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.compare import main
from common.results import ResultsError, available_papers, convert_scale, load_paper

PAPERS = ["charm_xray", "cxrlt", "dcal", "dvxray", "xmnet"]
DV_CLASSES = ["Gun", "Knife", "Wrench", "Pliers", "Scissors", "Lighter", "Battery", "Bat", "Razor_blade",
              "Saw_blade", "Fireworks", "Hammer", "Screwdriver", "Dart", "Pressure_vessel"]


# ----------------------------------------------------------------------------- registry files


def test_registry_has_one_valid_file_per_paper():
    assert available_papers() == PAPERS
    for paper in PAPERS:
        res = load_paper(paper)
        assert res.run_scale == "fraction" and res.entries
        for e in res.entries:
            if e.value is None:
                assert e.note, e.name  # a gap always says why
            else:
                assert 0.0 < e.value <= (1.0 if e.scale == "fraction" else 100.0), e.name
            if e.per_class:
                assert res.class_order is not None and set(e.per_class) <= set(res.class_order), e.name
                assert all(0.0 <= v <= 1.0 for v in e.per_class.values()), e.name


def test_registry_headline_numbers():
    dv, ch, cx, dc = (load_paper(p) for p in ("dvxray", "charm_xray", "cxrlt", "dcal"))
    assert dv.entry("mcbu").value == pytest.approx(0.9334) and dv.entry("mcbu").metric == "mAP"
    assert dv.entry("ahcr_tifs2024").value is None
    ourv3 = dv.entry("dagnet_ourv3_convnext_test")
    assert ourv3.value == pytest.approx(0.9192) and ourv3.per_class["Lighter"] == pytest.approx(0.651)
    assert ourv3.per_class_key == "per_class_ap" and list(ourv3.per_class) == DV_CLASSES
    best = ch.entry("charm_best")
    assert best.metric == "auc" and best.value == pytest.approx(0.8752) and best.per_class["Hernia"] == 0.9854
    assert len([e for e in ch.entries if e.name.startswith("charm_m")]) == 25
    assert cx.entry("cxrlt2026_task1_winner").value == pytest.approx(0.5854)
    assert cx.entry("sulake_5th_official_test").value == pytest.approx(0.3950)
    assert dc.entry("dcal_market1501_rank1").value == pytest.approx(0.947)
    assert dc.entry("dcal_market1501_map").value == pytest.approx(0.875)
    assert dc.entry("dcal_cub_acc1").metric == "acc1" and dc.entry("dcal_veri776_map").value is None
    assert load_paper("xmnet").entry("xmnet_paper").value is None


def test_registry_per_class_means_match_reported_means():
    """Transcription check: where a source gives all per-class values, their mean is the headline."""
    checked = 0
    for paper in PAPERS:
        res = load_paper(paper)
        for e in res.entries:
            if e.per_class and e.value is not None and len(e.per_class) == len(res.class_order or ()):
                mean = sum(e.per_class.values()) / len(e.per_class)
                assert mean == pytest.approx(e.value, abs=6e-4), e.name
                checked += 1
    assert checked >= 10  # 6 DAGNet logs, CHARM notebook, Wang 2017, 2 TorchXRayVision


def _write_registry(folder: Path, entry_yaml: str, *, run_scale: str = "fraction") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.yaml").write_text(
        "paper: toy\ntitle: toy\nrun_scale: " + run_scale + "\nclass_order: [a, b_c]\nentries:\n" + entry_yaml
    )
    return folder


_GOOD = """  - name: e1
    metric: mAP
    value: 90.0
    scale: percent
    dataset: d
    protocol: p
    source: s
    source_type: P
    caveat: c
    per_class_key: per_class_ap
    per_class: {a: 80.0, b_c: 100.0}
"""


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (("caveat: c", "caveat: c\n    vaule: 1"), r"toy.yaml: entries\[0\] \(e1\): unknown key\(s\) vaule"),
        (("value: 90.0", "value: null"), "value is null, so a 'note' saying why is required"),
        (("scale: percent", "scale: permille"), "scale must be one of fraction, percent"),
        (("value: 90.0", "value: '90'"), "value must be a number or null"),
        (("    source: s\n", ""), r"missing key\(s\) source"),
        (("    per_class_key: per_class_ap\n", ""), "per_class needs per_class_key"),
    ],
)
def test_registry_validation_errors_name_file_entry_and_key(tmp_path, mutation, message):
    folder = _write_registry(tmp_path, _GOOD.replace(*mutation))
    with pytest.raises(ResultsError, match=message):
        load_paper("toy", folder)


def test_registry_rejects_duplicates_and_unknown_names(tmp_path):
    folder = _write_registry(tmp_path, _GOOD + _GOOD)
    with pytest.raises(ResultsError, match="duplicate entry name 'e1'"):
        load_paper("toy", folder)
    with pytest.raises(ResultsError, match="unknown paper 'nope'; valid: toy"):
        load_paper("nope", folder)
    with pytest.raises(ResultsError, match="unknown entry 'x' for paper 'dcal'; valid: dcal_market1501_rank1"):
        load_paper("dcal").entry("x")
    assert convert_scale(90.0, "percent", "fraction") == pytest.approx(0.9)
    assert convert_scale(0.25, "fraction", "percent") == pytest.approx(25.0)


# ----------------------------------------------------------------------------- compare CLI


def _run_dir(tmp_path: Path, best: dict, **extra) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"monitor": "mAP", "best_epoch": 2, "best": best,
                                                  "final": {"mAP": 0.5}, **extra}))
    return run


def test_compare_dvxray_table_with_per_class_rows_matched_by_name(tmp_path, capsys):
    # run class order reversed and spelled differently: rows must follow names, not positions
    names = [c.replace("_", " ").lower() for c in reversed(DV_CLASSES)]
    ap = [0.5 + 0.01 * i for i in range(15)]  # Pressure_vessel 0.50 ... Gun 0.64
    run = _run_dir(tmp_path, {"mAP": 0.9, "per_class_ap": ap}, class_names=names)
    assert main([str(run), "--paper", "dvxray", "--entry", "dagnet_ourv3_convnext_test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["metric"]: r for r in out["rows"]}
    head = rows["mAP"]
    assert head["run"] == 0.9 and head["published"] == pytest.approx(0.9192)
    assert head["delta"] == pytest.approx(0.9 - 0.9192)
    gun = rows["per_class_ap[Gun]"]
    assert gun["run"] == pytest.approx(0.64) and gun["published"] == pytest.approx(0.972)
    assert gun["delta"] == pytest.approx(0.64 - 0.972)
    assert rows["per_class_ap[Pressure_vessel]"]["run"] == pytest.approx(0.5)
    assert len(out["rows"]) == 16 and out["notes"] == ["class names from metrics.json class_names"]


def test_compare_default_table_lists_headline_entries(tmp_path, capsys):
    run = _run_dir(tmp_path, {"mAP": 0.91, "per_class_ap": [0.9] * 15})
    assert main([str(run), "--paper", "dvxray"]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("entry"))
    assert header.split() == ["entry", "metric", "run", "published", "delta", "source"]
    mcbu = next(line for line in text.splitlines() if line.startswith("mcbu "))
    assert mcbu.split()[1:5] == ["mAP", "0.9100", "0.9334", "-0.0234"]
    assert "ahcr_tifs2024" in text and "n/p" in text  # unpublished numbers are shown as gaps
    assert "dagnet_vanilla_resnet_test" not in text  # show_by_default: false
    assert "per_class_ap[Lighter]" in text
    assert "class names from dvxray.yaml class_order (metrics.json has no class_names)" in text


def test_compare_converts_percent_registry_to_fraction_run(tmp_path, capsys):
    folder = _write_registry(tmp_path / "reg", _GOOD)
    run = _run_dir(tmp_path, {"mAP": 0.85, "per_class_ap": [0.7, 0.95]})
    assert main([str(run), "--paper", "toy", "--results-dir", str(folder), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["published"] for r in rows] == pytest.approx([0.9, 0.8, 1.0])
    assert [r["delta"] for r in rows] == pytest.approx([-0.05, -0.1, -0.05])


def test_compare_percent_run_scale(tmp_path, capsys):
    folder = _write_registry(tmp_path / "reg", _GOOD.replace("value: 90.0\n    scale: percent",
                                                             "value: 0.9\n    scale: fraction")
                             .replace("{a: 80.0, b_c: 100.0}", "{a: 0.8, b_c: 1.0}"), run_scale="percent")
    run = _run_dir(tmp_path, {"mAP": 85.0})
    assert main([str(run), "--paper", "toy", "--results-dir", str(folder), "--json"]) == 0
    head = json.loads(capsys.readouterr().out)["rows"][0]
    assert head["published"] == pytest.approx(90.0) and head["delta"] == pytest.approx(-5.0)


def test_compare_ema_and_final_sections(tmp_path, capsys):
    run = _run_dir(tmp_path, {"rank1": 0.5, "rank1_ema": 0.6})
    assert main([str(run), "--paper", "dcal", "--entry", "dcal_market1501_rank1", "--ema", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["run_key"] == "rank1_ema" and row["run"] == 0.6
    assert main([str(run), "--paper", "dcal", "--dataset", "market", "--section", "final", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["section"] == "final" and {r["entry"] for r in out["rows"]} == {"dcal_market1501_rank1",
                                                                                 "dcal_market1501_map"}
    assert next(r for r in out["rows"] if r["metric"] == "mAP")["run"] == 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paper", "dvxrayy"], "unknown paper 'dvxrayy'; valid: charm_xray, cxrlt, dcal, dvxray, xmnet"),
        (["--paper", "dcal", "--entry", "nope"], "unknown entry 'nope' for paper 'dcal'; valid: dcal_market1501_rank1"),
        (["--paper", "dcal", "--entry", "dcal_cub_acc1"], "'best' has no key 'acc1' for entry 'dcal_cub_acc1'"),
        (["--paper", "dcal", "--dataset", "imagenet"], "no dcal entry matches --dataset 'imagenet'"),
        (["--paper", "dvxray", "--entry", "dagnet_ourv3_resnet_test"],
         "'best.per_class_ap' has 3 values but there are 15 class names"),
    ],
)
def test_compare_errors_are_one_line_and_exit_nonzero(tmp_path, capsys, argv, message):
    run = _run_dir(tmp_path, {"mAP": 0.9, "per_class_ap": [0.1, 0.2, 0.3]})
    assert main([str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compare: error: ") and message in err


def test_compare_missing_or_broken_metrics_file(tmp_path, capsys):
    missing = tmp_path / "no_run"
    assert main([str(missing), "--paper", "dvxray"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"compare: error: metrics file not found: {missing / 'metrics.json'}"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"best": {\n  "mAP": }')
    assert main([str(broken), "--paper", "dvxray"]) == 2
    assert f"{broken / 'metrics.json'}:2: invalid JSON" in capsys.readouterr().err


def test_compare_module_entry_point(tmp_path):
    run = _run_dir(tmp_path, {"auc": 0.83, "per_class_auc": [0.8] * 14})
    ok = subprocess.run([sys.executable, "-m", "common.compare", str(run), "--paper", "charm_xray", "--json"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)["rows"]
    best = next(r for r in rows if r["entry"] == "charm_best" and r["class"] is None)
    assert best["delta"] == pytest.approx(0.83 - 0.8752)
    bad = subprocess.run([sys.executable, "-m", "common.compare", str(tmp_path / "x"), "--paper", "charm_xray"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "metrics file not found" in bad.stderr


def test_compare_notes_missing_per_class_data(tmp_path, capsys):
    run = _run_dir(tmp_path, {"auc": 0.8})
    assert main([str(run), "--paper", "charm_xray", "--entry", "charm_best", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rows"]) == 1  # no per-class rows without per_class_auc in the run
    assert out["notes"] == ["charm_best: per-class values not compared ('best' has no per_class_auc)"]
    names = ["Pistol", *DV_CLASSES[1:]]
    run = _run_dir(tmp_path, {"mAP": 0.8, "per_class_ap": [0.5] * 15}, class_names=names)
    assert main([str(run), "--paper", "dvxray", "--entry", "dagnet_ourv3_convnext_test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gun = next(r for r in out["rows"] if r["class"] == "Gun")
    assert gun["run"] is None and gun["delta"] is None
    assert "dagnet_ourv3_convnext_test: class 'Gun' not among the run's class names" in out["notes"]


def test_compare_uses_the_runs_dataset_and_ema_selection(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "monitor": "mAP", "dataset": "market1501",
        "best": {"mAP": 0.5, "rank1": 0.6}, "final": {"mAP": 0.5, "rank1": 0.6}}))
    assert main([str(run), "--paper", "dcal", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["dataset"] for r in rows} == {"Market-1501"}
    assert {r["metric"]: r["run"] for r in rows} == {"rank1": 0.6, "mAP": 0.5}

    (run / "metrics.json").write_text(json.dumps({
        "monitor": "mAP_ema", "best": {"mAP_ema": 0.8}, "final": {"mAP_ema": 0.8}}))
    assert main([str(run), "--paper", "dvxray", "--entry", "mcbu", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["run_key"] == "mAP_ema" and row["run"] == 0.8
    assert row["delta"] == pytest.approx(0.8 - 0.9334)


# ----------------------------------------------------------------------------- several runs, files, gate, protocol


def test_every_registry_entry_has_a_source_and_quotes_its_published_value():
    for paper in PAPERS:
        for e in load_paper(paper).entries:
            assert e.source.strip(), f"{paper}:{e.name} has no source"
            if e.value is not None:
                assert e.published and e.published.strip(), f"{paper}:{e.name} has a value but no 'published' quote"


def _runs(tmp_path: Path, values: list[float], **extra) -> list[str]:
    dirs = []
    for i, v in enumerate(values):
        run = tmp_path / f"seed{i}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"monitor": "mAP", "best": {"mAP": v}, "final": {"mAP": v},
                                                      **extra}))
        dirs.append(str(run))
    return dirs


def test_compare_three_runs_mean_std_n_and_files(tmp_path, capsys):
    runs = _runs(tmp_path, [0.90, 0.92, 0.94])
    md, csv_file = tmp_path / "out" / "cmp.md", tmp_path / "out" / "cmp.csv"
    assert main([*runs, "--paper", "dvxray", "--entry", "mcbu", "--markdown", str(md), "--csv", str(csv_file)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("mcbu "))
    assert "0.9200 ± 0.0200 (n=3)" in row and "0.9334" in row and "-0.0134" in row
    assert "3 runs, mean ± std (n)" in text
    lines = md.read_text().splitlines()
    # issue 19: several runs carry the Student-t 95 % interval of the mean (t(0.975, 2) = 4.3027)
    assert lines[2] == "| entry | metric | run | 95% CI | published | in CI | delta | source |"
    assert lines[4].startswith("| mcbu | mAP | 0.9200 ± 0.0200 (n=3) | [0.8703, 0.9697] | 0.9334 | yes | -0.0134 | ")
    import csv as csv_mod
    (got,) = list(csv_mod.DictReader(csv_file.open()))
    assert float(got["run"]) == pytest.approx(0.92) and float(got["std"]) == pytest.approx(0.02)
    assert got["n"] == "3" and float(got["delta"]) == pytest.approx(0.92 - 0.9334)
    assert float(got["published"]) == pytest.approx(0.9334)
    assert float(got["ci_low"]) == pytest.approx(0.92 - 4.302653 * 0.02 / 3 ** 0.5, abs=1e-6)
    assert got["published_in_ci"] == "True"
    assert main([*runs, "--paper", "dvxray", "--entry", "mcbu", "--json"]) == 0
    (jrow,) = json.loads(capsys.readouterr().out)["rows"]
    assert jrow["values"] == [0.90, 0.92, 0.94] and jrow["n"] == 3


def test_compare_single_run_csv_has_n_1(tmp_path):
    (run,) = _runs(tmp_path, [0.9])
    out = tmp_path / "one.csv"
    assert main([run, "--paper", "dvxray", "--entry", "mcbu", "--csv", str(out)]) == 0
    import csv as csv_mod
    (got,) = list(csv_mod.DictReader(out.open()))
    assert got["n"] == "1" and float(got["std"]) == 0.0 and float(got["run"]) == pytest.approx(0.9)


def test_compare_tolerance_gate_exit_code(tmp_path, capsys):
    runs = _runs(tmp_path, [0.90, 0.92, 0.94])  # mean 0.92, 0.0134 below 0.9334
    assert main([*runs, "--paper", "dvxray", "--entry", "mcbu", "--tolerance", "0.02"]) == 0
    assert main([*runs, "--paper", "dvxray", "--entry", "mcbu", "--tolerance", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "compare: below tolerance: mcbu mAP: run 0.9200 is 0.0134 below published 0.9334 (tolerance 0.01)" in err
    # unpublished entries and runs above the published value never fail the gate
    assert main([*runs, "--paper", "dvxray", "--entry", "ahcr_tifs2024", "--tolerance", "0"]) == 0
    (tmp_path / "high").mkdir()
    (high,) = _runs(tmp_path / "high", [0.99])
    assert main([high, "--paper", "dvxray", "--entry", "mcbu", "--tolerance", "0"]) == 0


def test_compare_protocol_split_mismatch_is_a_warning(tmp_path, capsys):
    protocol = {"split": "official", "test_images": 80, "warnings": ["the run's own note"]}
    (run,) = _runs(tmp_path, [0.8], protocol=protocol)
    data = json.loads(Path(run, "metrics.json").read_text())
    data["best"] = data["final"] = {"auc": 0.8}
    Path(run, "metrics.json").write_text(json.dumps(data))
    assert main([run, "--paper", "charm_xray", "--entry", "charm_best", "--json"]) == 0
    captured = capsys.readouterr()
    assert ("compare: warning: charm_best 0.8752 was measured on the notebook split's 12.5 % subset; "
            "this run used the official split") in captured.err
    assert "compare: warning: the run's own note" in captured.err
    assert len(json.loads(captured.out)["protocol_warnings"]) == 2
    data["protocol"] = {"split": "charm_notebook"}
    Path(run, "metrics.json").write_text(json.dumps(data))
    assert main([run, "--paper", "charm_xray", "--entry", "charm_best"]) == 0
    assert "warning" not in capsys.readouterr().err  # same split: nothing to warn about


def test_registry_protocol_fields_are_validated(tmp_path):
    folder = _write_registry(tmp_path, _GOOD.replace("caveat: c", "caveat: c\n    split: official\n    input_size: 224"))
    e = load_paper("toy", folder).entry("e1")
    assert e.protocol_fields() == {"split": "official", "input_size": 224}
    folder = _write_registry(tmp_path / "b", _GOOD.replace("caveat: c", "caveat: c\n    input_size: big"))
    with pytest.raises(ResultsError, match=r"entries\[0\] \(e1\): input_size must be a positive integer"):
        load_paper("toy", folder)
    folder = _write_registry(tmp_path / "c", _GOOD.replace("caveat: c", "caveat: c\n    split_desc: x"))
    with pytest.raises(ResultsError, match="split_desc given without split"):
        load_paper("toy", folder)


def test_demo_summary_table_lists_status_time_metrics_delta_and_pictures(tmp_path, capsys):
    from common.demo_table import main as table_main

    run = _run_dir(tmp_path, {"mAP": 0.9}, dataset="dvxray")
    (run / "curves_training_log.png").write_bytes(b"png")
    status = tmp_path / "status.tsv"
    status.write_text(f"dvxray\tpassed\t90\tbash dvxray/demo.sh\t{run}\ndcal\tFAILED\t30\tbash dcal/demo.sh\t"
                      f"{tmp_path / 'missing'}\nxmnet\tskipped\t0\tnot built\t\n")
    assert table_main(["--summary", str(status)]) == 0
    text = capsys.readouterr().out
    assert "synthetic demo data and tiny models" in text
    assert "dvxray      passed    1.5 min  bash dvxray/demo.sh" in text
    assert "final:     mAP=0.5000" in text and "published: mcbu mAP 0.9334 (delta -0.4334)" in text
    assert f"pictures:  {run / 'curves_training_log.png'}" in text
    assert "dcal        FAILED    0.5 min" in text and "no metrics.json" in text
    assert "scale:     synthetic DvXray pairs (320)" in text
    assert table_main(["--summary", str(tmp_path / "nope.tsv")]) == 2
