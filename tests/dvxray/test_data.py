"""DvXray lists and synthetic data: native format round trip, line-numbered errors, identical view augmentation."""

from pathlib import Path

import pytest
import torch

from common.data.errors import DataError, ParseError
from dvxray.datasets import TrainTransformPolicy, build_dataset, read_classes, read_dvxray_list

CLASSES = Path(__file__).resolve().parents[2] / "dvxray/annotations/classes.txt"


def test_shipped_classes_file_has_the_original_order():
    names = read_classes(CLASSES, 15)
    assert names[0] == "Gun" and names[8] == "Razor_blade" and names[14] == "Pressure_vessel"
    with pytest.raises(DataError, match="15 class names, but --num_classes is 14"):
        read_classes(CLASSES, 14)


def test_synthetic_set_round_trips(dvxray_data):
    ann = dvxray_data / "annotations"
    assert read_classes(ann / "classes.txt", 15) == read_classes(CLASSES, 15)
    lines = (ann / "DvXray_train.txt").read_text().splitlines()
    first = lines[0].split(" ")
    assert first[0].startswith("./data/DvXray_") and first[0].endswith("_OL.png") and first[1].endswith("_SD.png")
    assert first[0].replace("_OL.png", "") == first[1].replace("_SD.png", "")
    records = {s: read_dvxray_list(ann / f"DvXray_{s}.txt", 15, dvxray_data) for s in ("train", "val", "test", "all")}
    assert len(records["train"]) + len(records["val"]) + len(records["test"]) == len(records["all"]) == 60
    for r in records["all"]:
        negative = "Negative" in r.paths[0]
        assert negative == (sum(r.labels) == 0)
        assert Path(r.paths[0]).is_file() and Path(r.paths[1]).is_file()
    ds = build_dataset(ann / "DvXray_val.txt", num_classes=15, train=False, input_size=32, data_root=dvxray_data)
    a, b, y = ds[0]
    assert a.shape == b.shape == (3, 32, 32) and y.shape == (15,)


def test_space_separated_labels_accepted(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("a_OL.png a_SD.png " + " ".join(["0"] * 14 + ["1"]) + "\n")
    assert read_dvxray_list(f, 15)[0].labels[14] == 1


@pytest.mark.parametrize("line,message", [
    ("a_OL.png a_SD.png 0,1,0", "expected 15 labels, found 3"),
    ("a_OL.png 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0", "expected 2 image path"),
    ("a_OL.png a_SD.png 0,0,0,0,0,0,0,0,0,0,0,0,0,0,2", "labels must be 0 or 1"),
])
def test_bad_list_lines_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.txt"
    good = "x_OL.png x_SD.png " + ",".join(["0"] * 15)
    f.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ParseError, match=rf"bad.txt:3: .*{message}"):
        read_dvxray_list(f, 15)


def test_missing_image_names_image_and_list_line(tmp_path, dvxray_data):
    f = tmp_path / "l.txt"
    good = (dvxray_data / "annotations/DvXray_val.txt").read_text().splitlines()[0]
    f.write_text(good + "\n./data/nope_OL.png ./data/nope_SD.png " + ",".join(["0"] * 15) + "\n")
    # checked when the dataset is built, before any training
    with pytest.raises(DataError, match=r"image not found: .*nope_OL.png \(listed at .*l.txt:2\)"):
        build_dataset(f, num_classes=15, train=False, input_size=32, data_root=dvxray_data)
    # a file that disappears later still fails with the same message at load time
    copy = tmp_path / "copy"
    (copy / "data").mkdir(parents=True)
    rel = good.split()[:2]
    for r in rel:
        (copy / r).parent.mkdir(parents=True, exist_ok=True)
        (copy / r).write_bytes((dvxray_data / r).read_bytes())
    g = tmp_path / "g.txt"
    g.write_text(good + "\n")
    ds = build_dataset(g, num_classes=15, train=False, input_size=32, data_root=copy)
    (copy / rel[1]).unlink()
    with pytest.raises(DataError, match=r"image not found: .*_SD.png \(listed at .*g.txt:1\)"):
        ds[0]
    with pytest.raises(DataError, match="list file not found"):
        read_dvxray_list(tmp_path / "absent.txt", 15)


def test_both_views_get_identical_augmentation(dvxray_data):
    ann = dvxray_data / "annotations"
    names = read_classes(ann / "classes.txt", 15)
    policy = TrainTransformPolicy("conditional", 32, names)
    records = read_dvxray_list(ann / "DvXray_train.txt", 15, dvxray_data)
    # OL path given twice: identical parameters must give identical tensors
    from common.data.datasets import DualViewPairDataset
    from common.data.lists import ImageRecord

    same = [ImageRecord((r.paths[0], r.paths[0]), r.labels) for r in records[:4]]
    ds = DualViewPairDataset(same, None, choose_transform=policy)
    torch.manual_seed(3)
    for i in range(4):
        a, b, _ = ds[i]
        assert torch.equal(a, b)
    hard = {names.index(n) for n in ("Scissors", "Lighter", "Razor_blade", "Knife")}
    for r in records:
        expect_strong = any(r.labels[c] for c in hard)
        assert (policy(r) is policy.strong) == expect_strong
