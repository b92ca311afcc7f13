"""``python -m common.data.check FORMAT ROOT`` on common.synth folders: clean -> 0; a planted missing
file, a corrupt image or a planted split overlap -> 1 with the file / overlap named; bad usage -> 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.data.check import declared_formats, main, run_check
from common.synth import FORMATS, generate

SIZES = {"dvxray": 20, "chestxray14": 24, "mimic": 30, "padchest": 16, "xmnet": 15, "cub200": 20, "veri776": 48,
         "market1501": 48}


def _check(fmt: str, root: Path, *extra: str, capsys) -> tuple[int, str]:
    rc = main([fmt, str(root), "--no-progress", *extra])
    return rc, capsys.readouterr().out


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    made: dict[str, Path] = {}

    def make(fmt: str, tmp: Path) -> Path:
        if fmt not in made:
            made[fmt] = tmp_path_factory.mktemp(f"synth_{fmt}") / fmt
            generate(fmt, made[fmt], n=SIZES[fmt], seed=0)
        shutil.copytree(made[fmt], tmp / fmt)
        return tmp / fmt

    return make


# ----------------------------------------------------------------------------------------------
# what to plant in each format: a file the trainer reads (to delete / corrupt), and a split overlap


def _first_jpg(folder: Path) -> Path:
    return sorted(folder.rglob("*.jpg"))[0]


def victim(fmt: str, root: Path) -> Path:
    """A file the trainer reads (not one a reader drops)."""
    if fmt == "dvxray":
        line = (root / "annotations/DvXray_train.txt").read_text().splitlines()[0]
        return root / line.split()[1]  # the SD view
    if fmt == "chestxray14":
        return sorted(root.glob("images_*/images/*.png"))[3]
    if fmt == "mimic":
        return _first_jpg(root / "files")
    if fmt == "padchest":
        removed = set(pd.read_csv(root / "Removal.csv")["ImageID"]) | set(pd.read_csv(root / "corrupted_images.csv")["ImageID"])
        ids = [i for i in pd.read_csv(root / "CXRLT_2026_training.csv")["ImageID"] if i not in removed]
        return root / "images" / ids[-1]
    if fmt == "xmnet":
        return root / "l2_mask" / "2.png"
    if fmt == "cub200":
        return _first_jpg(root / "images")
    if fmt == "veri776":
        return _first_jpg(root / "image_test")
    if fmt == "market1501":
        return sorted(p for p in (root / "bounding_box_test").glob("*.jpg") if not p.name.startswith("-1"))[0]
    raise AssertionError(fmt)


def plant_overlap(fmt: str, root: Path) -> str:
    """Plant a forbidden overlap; returns the level expected in the report."""
    if fmt == "dvxray":
        train = root / "annotations/DvXray_train.txt"
        with (root / "annotations/DvXray_test.txt").open("a") as fh:
            fh.write(train.read_text().splitlines()[0] + "\n")
        return "image"
    if fmt == "chestxray14":  # one image of a patient with several moves to the other list
        frame = pd.read_csv(root / "Data_Entry_2017.csv")
        name = frame[frame.duplicated("Patient ID", keep=False)]["Image Index"].iloc[0]
        lists = {n: (root / n).read_text().split() for n in ("train_val_list.txt", "test_list.txt")}
        src, dst = ("train_val_list.txt", "test_list.txt") if name in lists["train_val_list.txt"] else \
            ("test_list.txt", "train_val_list.txt")
        (root / src).write_text("\n".join(n for n in lists[src] if n != name) + "\n")
        (root / dst).write_text("\n".join([*lists[dst], name]) + "\n")
        return "patient"
    if fmt == "mimic":  # one image of a train subject with several images moves to test
        path = root / "mimic-cxr-2.0.0-split.csv"
        frame = pd.read_csv(path, dtype=str)
        train = frame[frame["split"] == "train"]
        row = train[train.duplicated("subject_id", keep=False)].index[0]
        frame.loc[row, "split"] = "test"
        frame.to_csv(path, index=False)
        return "patient"
    if fmt == "padchest":  # the same image listed twice under two patients (the split is grouped by patient)
        path = root / "CXRLT_2026_training.csv"
        frame = pd.read_csv(path, dtype=str)
        copies = frame.iloc[[5] * 40].copy()
        copies["PatientID"] = [f"99{k:08d}" for k in range(40)]
        pd.concat([frame, copies]).to_csv(path, index=False)
        return "image"
    if fmt == "xmnet":  # the same leaf id in train and test
        shutil.copy(root / "train" / "1.png", root / "test" / "1.png")
        return "image"
    if fmt == "cub200":  # a test id pointing at a training image
        lines = (root / "images.txt").read_text().splitlines()
        split = dict(ln.split() for ln in (root / "train_test_split.txt").read_text().splitlines())
        train_rel = next(ln.split()[1] for ln in lines if split[ln.split()[0]] == "1")
        test_id = next(ln.split()[0] for ln in lines if split[ln.split()[0]] == "0")
        (root / "images.txt").write_text("\n".join(f"{test_id} {train_rel}" if ln.split()[0] == test_id else ln
                                                   for ln in lines) + "\n")
        return "image"
    if fmt == "veri776":  # a training vehicle among the queries
        name = (root / "name_train.txt").read_text().split()[0]
        shutil.copy(root / "image_train" / name, root / "image_query" / name)
        with (root / "name_query.txt").open("a") as fh:
            fh.write(name + "\n")
        return "identity"
    if fmt == "market1501":  # a training person in the gallery
        src = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
        shutil.copy(src, root / "bounding_box_test" / src.name)
        return "identity"
    raise AssertionError(fmt)


def test_every_synth_format_is_declared_and_common_names_no_paper():
    assert sorted(declared_formats()) == sorted(FORMATS)
    source = Path(sys.modules["common.data.check"].__file__).read_text()
    for paper in ("dvxray", "charm_xray", "cxrlt", "dcal", "xmnet"):
        assert f"import {paper}" not in source and f"from {paper}" not in source
    code = ("import sys, common.data.check; "
            "print([p for p in ('dvxray','charm_xray','cxrlt','dcal','xmnet') if p in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_clean_folder_passes(fmt, synth_root, tmp_path, capsys):
    root = synth_root(fmt, tmp_path)
    rc, out = _check(fmt, root, capsys=capsys)
    assert rc == 0, out
    assert "OK: no problem found" in out and "0 missing, 0 empty, 0 unreadable" in out
    assert "samples," in out and "result: no forbidden overlap" in out


# Market-1501's reader lists its folders: no file is named that could be missing
@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "market1501"])
def test_missing_file_is_named(fmt, synth_root, tmp_path, capsys):
    root = synth_root(fmt, tmp_path)
    gone = victim(fmt, root)
    gone.unlink()
    rc, out = _check(fmt, root, capsys=capsys)
    assert rc == 1, out
    # an NIH image may be in any images_###/images/ folder: the report names the pattern
    shown = root / "*" / "images" / gone.name if fmt == "chestxray14" else gone
    assert f"missing: {shown}" in out and "problem: 1 missing file(s)" in out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_corrupt_and_truncated_images_are_named(fmt, synth_root, tmp_path, capsys):
    root = synth_root(fmt, tmp_path)
    bad = victim(fmt, root)
    bad.write_bytes(b"this is not an image\n" * 10)
    rc, out = _check(fmt, root, capsys=capsys)
    assert rc == 1 and f"unreadable: {bad}" in out and "problem: 1 unreadable file(s)" in out, out
    # a download cut short: the header reads, the end marker is missing
    root = synth_root(fmt, tmp_path / "cut")
    bad = victim(fmt, root)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    rc, out = _check(fmt, root, capsys=capsys)
    assert rc == 1 and f"unreadable: {bad}" in out and "truncated" in out, out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_planted_overlap_is_forbidden(fmt, synth_root, tmp_path, capsys):
    root = synth_root(fmt, tmp_path)
    level = plant_overlap(fmt, root)
    report = run_check(fmt, root, progress=False)
    assert not report["ok"]
    forbidden = [p for p in report["overlap"]["pairs"] if p["status"] == "forbidden"]
    assert level in {p["level"] for p in forbidden}, report["overlap"]
    assert any(p.startswith("forbidden overlap:") for p in report["problems"])
    assert report["files"]["missing"] == report["files"]["unreadable"] == 0
    rc, out = _check(fmt, root, capsys=capsys)
    assert rc == 1 and "FORBIDDEN" in out


def test_reid_query_gallery_overlaps_are_allowed_with_their_reason(synth_root, tmp_path):
    report = run_check("veri776", synth_root("veri776", tmp_path), progress=False)
    allowed = {p["level"]: p for p in report["overlap"]["pairs"] if p["status"] == "allowed"}
    assert set(allowed) == {"image", "identity", "identity_camera"}  # VeRi lists queries in name_test.txt too
    assert all(p["splits"] == ["query", "gallery"] and p["reason"] for p in allowed.values())


def test_counts_per_split_and_class_are_those_of_the_lists(synth_root, tmp_path):
    root = synth_root("dvxray", tmp_path)
    report = run_check("dvxray", root, progress=False)
    for split in ("train", "val", "test"):
        lines = (root / f"annotations/DvXray_{split}.txt").read_text().splitlines()
        vectors = [[int(v) for v in ln.split()[2].split(",")] for ln in lines]
        assert report["splits"][split] == {"samples": len(lines), "files": 2 * len(lines)}
        assert report["class_counts"][split] == [sum(col) for col in zip(*vectors)]
    frame = pd.read_csv(synth_root("chestxray14", tmp_path / "c") / "Data_Entry_2017.csv")
    report = run_check("chestxray14", tmp_path / "c" / "chestxray14", progress=False)
    assert sum(s["samples"] for s in report["splits"].values()) == len(frame)
    assert sum(s["patients"] for s in report["splits"].values()) == frame["Patient ID"].nunique()


def test_decode_finds_what_the_header_read_does_not(synth_root, tmp_path, capsys):
    root = synth_root("xmnet", tmp_path)
    image = root / "train" / "4.png"
    data = bytearray(image.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 40] = b"\x00" * 40  # inside the pixel data: header and IEND intact
    image.write_bytes(bytes(data))
    assert _check("xmnet", root, capsys=capsys)[0] == 0
    rc, out = _check("xmnet", root, "--decode", capsys=capsys)
    assert rc == 1 and f"unreadable: {image}" in out and "decoded" in out


def test_max_files_opens_a_sample_but_stats_every_file(synth_root, tmp_path):
    root = synth_root("cub200", tmp_path)
    gone = victim("cub200", root)
    gone.unlink()
    report = run_check("cub200", root, max_files=5, progress=False)
    assert report["files"]["files"] == 20 and report["files"]["opened"] == 5
    assert report["files"]["missing"] == 1 and not report["ok"]


def test_a_malformed_list_stops_with_the_trainers_message(synth_root, tmp_path, capsys):
    from common.data.errors import DataError
    from dvxray.datasets import read_dvxray_list

    root = synth_root("dvxray", tmp_path)
    lst = root / "annotations/DvXray_val.txt"
    lines = lst.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0]  # 14 labels
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_dvxray_list(lst, 15, root)
    rc, out = _check("dvxray", root, capsys=capsys)
    assert rc == 1 and f"the reader stops (as the trainer would): {err.value}" in out
    assert f"{lst}:2:" in out


def test_lists_the_first_n_problems_and_counts_the_rest(synth_root, tmp_path, capsys):
    root = synth_root("chestxray14", tmp_path)
    images = sorted(root.glob("images_*/images/*.png"))[:5]
    for p in images:
        p.unlink()
    rc, out = _check("chestxray14", root, "--show", "2", capsys=capsys)
    assert rc == 1 and out.count("  missing: ") == 2 and "... and 3 more missing file(s)" in out
    assert "problem: 5 missing file(s)" in out
    rc, out = _check("chestxray14", root, "--json", capsys=capsys)
    report = json.loads(out)
    assert sorted(Path(p["path"]).name for p in report["files"]["problems"]) == sorted(p.name for p in images)


def test_bad_usage_exits_2(synth_root, tmp_path, capsys):
    root = synth_root("padchest", tmp_path)
    assert main(["nosuch", str(root)]) == 2 and "unknown format 'nosuch'" in capsys.readouterr().err
    assert main(["padchest", str(tmp_path / "absent")]) == 2 and "ROOT is not a folder" in capsys.readouterr().err
    assert main(["padchest", str(root), "--opt", "val_splt=0.2"]) == 2
    assert "unknown option(s) val_splt" in capsys.readouterr().err
    assert main(["padchest", str(root), "--opt", "seed=x"]) == 2 and "seed='x'" in capsys.readouterr().err
    assert main(["padchest", str(root), "--opt", "seed"]) == 2 and "KEY=VALUE" in capsys.readouterr().err
    # a reader option that changes what is read: another seed, another patient split
    a = run_check("padchest", root, {"seed": "1"}, progress=False)["splits"]
    b = run_check("padchest", root, progress=False)["splits"]
    assert a != b and sum(s["samples"] for s in a.values()) == sum(s["samples"] for s in b.values())


@pytest.mark.parametrize("paper, formats", [("dvxray", {"dvxray"}), ("charm_xray", {"chestxray14"}),
                                            ("cxrlt", {"mimic", "padchest"}), ("xmnet", {"xmnet"}),
                                            ("dcal", {"cub200", "veri776", "market1501"})])
def test_each_paper_readme_says_how_to_run_on_the_real_data(paper, formats):
    import re

    text = (Path(__file__).resolve().parents[2] / paper / "README.md").read_text()
    assert "## Run on the real data" in text
    section = text.split("## Run on the real data", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"common\.data\.check (\w+)", section))
    named |= {f for f in formats if re.search(rf"`{f} /", section)}  # "likewise `veri776 /data/VeRi`"
    assert named == formats and named <= set(declared_formats())
    assert "```" in section  # the folder tree
