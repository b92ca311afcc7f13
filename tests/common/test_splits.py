"""common.splits: overlap at every level, the check CLI on a run folder and on split lists (issue 19 §2)."""

import json
from collections import Counter

import pytest

from charm_xray.data import load_table, make_split
from charm_xray.pipeline import allowed_overlaps, split_levels
from common.predictions import decode_list, ids_sha256, read_split_manifest, start_recording
from common.splits import main, split_overlaps
from common.synth import chestxray14, market1501


def test_split_overlaps_counts_each_level_and_applies_rules():
    splits = {"train": {"ids": ["a", "b", "c"], "patient": ["p1", "p1", "p2"]},
              "test": {"ids": ["d", "e", "c"], "patient": ["p3", "p2", "p2"]}}
    report = split_overlaps(splits)
    by_level = {p["level"]: p for p in report["pairs"]}
    assert by_level["image"]["shared"] == 1 and by_level["image"]["examples"] == ["c"]
    assert by_level["patient"]["shared"] == 1 and by_level["patient"]["samples"] == 2  # e and c in test
    assert not report["ok"] and len(report["forbidden"]) == 2
    allowed = split_overlaps(splits, allowed=[{"splits": ["test", "train"], "levels": ["patient"], "reason": "x"}])
    assert [p["status"] for p in allowed["pairs"]] == ["forbidden", "allowed"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Synthetic ChestX-ray14 whose official lists share exactly one patient: one image of a test patient
    with several images is moved to train_val_list.txt."""
    root = tmp_path_factory.mktemp("cx14") / "data"
    chestxray14.write(root, 60, 0)
    test = (root / "test_list.txt").read_text().split()
    per_patient = Counter(name.split("_")[0] for name in test)
    patient = sorted(p for p, n in per_patient.items() if n >= 2)[0]
    moved = next(name for name in test if name.startswith(patient))
    (root / "test_list.txt").write_text("\n".join(n for n in test if n != moved) + "\n")
    with open(root / "train_val_list.txt", "a") as f:
        f.write(moved + "\n")
    return root, str(int(patient)), moved


def _record(table, protocol, folder):
    plan = make_split(table, protocol)
    start_recording(folder, split_levels(plan), protocol=protocol, allowed=allowed_overlaps(protocol))
    return plan


def test_check_finds_the_planted_patient_overlap_in_the_official_split(planted, tmp_path, capsys):
    root, patient, moved = planted
    run = tmp_path / "official"
    _record(load_table(root), "official", run)
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    forbidden = [line for line in out.splitlines() if "FORBIDDEN" in line]
    assert len(forbidden) == 1 and "patient" in forbidden[0] and "/ test" in forbidden[0] and patient in forbidden[0]
    assert main(["check", str(run), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    image = [p for p in report["pairs"] if p["level"] == "image" and "test" in p["splits"]]
    assert all(p["shared"] == 0 for p in image)  # the moved image itself is only in train_val
    # the manifest keeps the id lists and their hash
    manifest = read_split_manifest(run)
    test_ids = decode_list(manifest["splits"]["test"]["ids_gz_b64"])
    assert moved not in test_ids and ids_sha256(test_ids) == manifest["splits"]["test"]["sha256"]


def test_charm_notebook_leak_is_counted_not_refused(tmp_path, capsys):
    root = tmp_path / "data"
    chestxray14.write(root, 120, 0)  # a size whose notebook split leaks one patient
    run = tmp_path / "notebook"
    plan = _record(load_table(root), "charm_notebook", run)
    assert main(["check", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pair = next(p for p in report["pairs"] if p["splits"] == ["phase1_train", "test"] and p["level"] == "patient")
    assert pair["shared"] == plan.report["leaked_test_patients"] > 0
    assert pair["status"] == "allowed" and "quirk 12" in pair["reason"]


def test_check_on_lists_csv_and_reid_folders(tmp_path, capsys):
    a, b = tmp_path / "train.csv", tmp_path / "val.csv"
    a.write_text("ImageID,PatientID,x\ni1,p1,0\ni2,p2,1\n")
    b.write_text("ImageID,PatientID,x\ni3,p3,0\ni4,p2,1\n")
    assert main(["check", str(a), str(b)]) == 1
    assert "patient" in capsys.readouterr().out
    market = tmp_path / "market"
    market1501.write(market, 60, 0)
    assert main(["check", f"train={market / 'bounding_box_train'}", f"query={market / 'query'}",
                 f"gallery={market / 'bounding_box_test'}", "--json"]) == 0
    pairs = {(tuple(p["splits"]), p["level"]): p for p in json.loads(capsys.readouterr().out)["pairs"]}
    assert pairs[(("query", "gallery"), "identity")]["status"] == "allowed"
    assert pairs[(("train", "query"), "identity")]["shared"] == 0
    assert main(["check", str(a)]) == 2 and "at least two" in capsys.readouterr().err
