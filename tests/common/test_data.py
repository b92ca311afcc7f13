"""List/CSV parsers, image loading errors and the two record datasets (common/data)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader
from torchvision import transforms as T

from common.data import (
    DataError,
    DualViewPairDataset,
    ImageRecord,
    MultiLabelImageDataset,
    ParseError,
    build_eval_transform,
    csv_line,
    load_image,
    parse_label_vector,
    parse_multilabel_string,
    read_csv,
    read_image_label_list,
    read_lines,
    read_name_list,
)

NIH = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration"]


def _write(path, text: str, newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def _save_digit(path, pixels: np.ndarray, size: int = 32) -> np.ndarray:
    """Upscale an 8x8 digit (0..16) to size x size uint8 and save it as a grayscale PNG."""
    img = np.kron(pixels, np.ones((size // 8, size // 8))) * (255.0 / 16.0)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    Image.fromarray(img, mode="L").save(path)
    return img


# ---------------------------------------------------------------- read_lines / label vectors


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_read_lines_keeps_numbers_and_skips_blanks(tmp_path, newline):
    f = _write(tmp_path / "l.txt", "a b\n\n  \nc\n", newline)
    assert read_lines(f) == [(1, "a b"), (4, "c")]


def test_read_lines_missing_file_and_bad_utf8(tmp_path):
    with pytest.raises(DataError, match=r"list file not found: .*nope\.txt"):
        read_lines(tmp_path / "nope.txt")
    f = tmp_path / "bad.txt"
    f.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ParseError, match=r"bad\.txt:2: not valid UTF-8"):
        read_lines(f)


def test_parse_label_vector_comma_and_space():
    assert parse_label_vector("0,1,0,1", 4, source="x.txt", line=3) == (0, 1, 0, 1)
    assert parse_label_vector("0 1  0 1", 4, source="x.txt", line=3) == (0, 1, 0, 1)
    assert parse_label_vector("1, 0", 2, source="x.txt", line=3) == (1, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,1,0", r"^x\.txt:7: expected 4 labels, found 3 in '0,1,0'$"),
        ("0 1 0 1 1", r"^x\.txt:7: expected 4 labels, found 5"),
        ("0,2,0,1", r"^x\.txt:7: label 1 is '2'; labels must be 0 or 1$"),
        ("0,1,,1", r"^x\.txt:7: label 2 is ''"),
        ("0 1 a 1", r"^x\.txt:7: label 2 is 'a'"),
    ],
)
def test_parse_label_vector_errors(text, message):
    with pytest.raises(ParseError, match=message) as info:
        parse_label_vector(text, 4, source="x.txt", line=7)
    assert (info.value.source, info.value.line) == ("x.txt", 7)


# ---------------------------------------------------------------- image/label lists


def test_read_image_label_list_dual_view(tmp_path):
    f = _write(
        tmp_path / "train.txt",
        "./data/P1_OL.png ./data/P1_SD.png 0,1,0\n\n./data/N1_OL.png ./data/N1_SD.png 0 0 0\n",
        "\r\n",
    )
    recs = read_image_label_list(f, num_paths=2, num_classes=3)
    assert [r.paths for r in recs] == [
        ("./data/P1_OL.png", "./data/P1_SD.png"),
        ("./data/N1_OL.png", "./data/N1_SD.png"),
    ]
    assert [r.labels for r in recs] == [(0, 1, 0), (0, 0, 0)]
    assert [r.line for r in recs] == [1, 3]
    assert recs[0].where == (str(f), 1)
    rooted = read_image_label_list(f, num_paths=2, num_classes=3, root=tmp_path / "r")
    assert rooted[0].paths[0] == str(tmp_path / "r" / "data" / "P1_OL.png")


def test_read_image_label_list_errors(tmp_path):
    f = _write(tmp_path / "l.txt", "a.png b.png 0,1\na.png 0,1\n")
    with pytest.raises(
        ParseError, match=r"l\.txt:2: expected 2 image path\(s\) followed by 2 labels, found 2 field"
    ):
        read_image_label_list(f, num_paths=2, num_classes=2)
    f = _write(tmp_path / "m.txt", "a.png 0,1\nb.png 0,1,1\n")
    with pytest.raises(ParseError, match=r"m\.txt:2: expected 2 labels, found 3"):
        read_image_label_list(f, num_paths=1, num_classes=2)
    with pytest.raises(DataError, match=r"list file has no entries: .*e\.txt"):
        read_image_label_list(_write(tmp_path / "e.txt", "\n\n"), num_paths=1, num_classes=2)


def test_read_name_list(tmp_path):
    assert read_name_list(_write(tmp_path / "c.txt", "Gun\nKnife\n\nWrench\n")) == ["Gun", "Knife", "Wrench"]
    with pytest.raises(ParseError, match=r"d\.txt:3: duplicate name 'Gun' \(first at line 1\)"):
        read_name_list(_write(tmp_path / "d.txt", "Gun\nKnife\nGun\n"))
    with pytest.raises(ParseError, match=r"s\.txt:2: expected one name per line, found 2 fields"):
        read_name_list(_write(tmp_path / "s.txt", "Gun\nRazor blade\n"))


# ---------------------------------------------------------------- multilabel strings


def test_parse_multilabel_string():
    assert parse_multilabel_string("Atelectasis|Effusion", NIH, source="d.csv", line=2) == (1, 0, 1, 0)
    assert parse_multilabel_string("No Finding", NIH, source="d.csv", line=2) == (0, 0, 0, 0)
    # Exact names, not substrings (CHARM's substring matching is a paper quirk, not done here).
    with pytest.raises(
        ParseError, match=r"^d\.csv:5: unknown class 'Effusions' in 'Cardiomegaly\|Effusions'$"
    ):
        parse_multilabel_string("Cardiomegaly|Effusions", NIH, source="d.csv", line=5)
    with pytest.raises(ParseError, match=r"d\.csv:6: 'No Finding' combined with other labels"):
        parse_multilabel_string("No Finding|Effusion", NIH, source="d.csv", line=6)
    with pytest.raises(ParseError, match=r"d\.csv:7: empty label string"):
        parse_multilabel_string("", NIH, source="d.csv", line=7)
    # A dataset whose class list includes "No Finding" treats it as a class.
    assert parse_multilabel_string("No Finding", ["No Finding", "Edema"], source="d.csv", line=2) == (1, 0)


# ---------------------------------------------------------------- CSV


def test_read_csv_good_and_line_numbers(tmp_path):
    f = _write(tmp_path / "t.csv", "ImageID,PatientID,Normal,Effusion\na.png,p1,1,0\n\nb.png,p2,0,1\n")
    df = read_csv(f, ["ImageID", "PatientID"], dtype={"Normal": int, "Effusion": int})
    assert list(df["ImageID"]) == ["a.png", "b.png"]
    assert df["Normal"].dtype == np.int64 and list(df["Effusion"]) == [0, 1]
    # The blank line 3 is dropped but b.png keeps its real line number.
    assert [csv_line(i) for i in df.index] == [2, 4]


def test_read_csv_missing_columns_named(tmp_path):
    f = _write(tmp_path / "t.csv", "ImageID,Normal\na.png,1\n")
    with pytest.raises(
        ParseError,
        match=r"t\.csv:1: missing column\(s\) 'PatientID', 'Effusion'; found \['ImageID', 'Normal'\]",
    ):
        read_csv(f, ["ImageID", "PatientID"], dtype={"Effusion": int})


@pytest.mark.parametrize(
    ("body", "dtype", "message"),
    [
        ("a.png,1\nb.png,x\n", {"v": int}, r"t\.csv:3: column 'v': cannot convert 'x' to int64"),
        ("a.png,1\nb.png,1.5\n", {"v": int}, r"t\.csv:3: column 'v': cannot convert '1.5' to int64"),
        ("a.png,1\n\nb.png,\n", {"v": int}, r"t\.csv:4: column 'v': cannot convert empty value to int64"),
        ("a.png,1\nb.png,1e\n", {"v": float}, r"t\.csv:3: column 'v': cannot convert '1e' to float64"),
        (",1\n", {"id": str}, r"t\.csv:2: column 'id': empty value"),
    ],
)
def test_read_csv_bad_values_name_line(tmp_path, body, dtype, message):
    f = _write(tmp_path / "t.csv", "id,v\n" + body)
    with pytest.raises(ParseError, match=message):
        read_csv(f, ["id", "v"], dtype=dtype)


def test_read_csv_float_blank_is_nan_and_file_errors(tmp_path):
    df = read_csv(_write(tmp_path / "t.csv", "id,v\na,0.5\nb,\n"), ["id"], dtype={"v": float})
    assert df["v"].iloc[0] == 0.5 and np.isnan(df["v"].iloc[1])
    with pytest.raises(DataError, match=r"CSV file not found: .*none\.csv"):
        read_csv(tmp_path / "none.csv", ["id"])
    with pytest.raises(ParseError, match=r"r\.csv:3: 3 fields, more than the 2 columns of the header"):
        read_csv(_write(tmp_path / "r.csv", "id,v\na,1\nb,2,3\n"), ["id"])


# ---------------------------------------------------------------- image loading


def test_load_image_16bit_png_to_8bit_rgb(tmp_path):
    arr = np.array([[0, 1000], [3000, 4000]], dtype=np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    assert img.mode == "RGB"
    expected = np.rint((arr - 0.0) / 4000.0 * 255.0).astype(np.uint8)
    got = np.asarray(img)
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)


def test_dataset_missing_and_corrupt_image_errors_name_list_line(tmp_path):
    digits = load_digits()
    _save_digit(tmp_path / "ok.png", digits.images[0])
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    lst = _write(tmp_path / "val.txt", "ok.png 1,0\nmissing.png 0,1\n\njunk.png 1,1\ntrunc.png 0,0\n")
    ds = MultiLabelImageDataset(read_image_label_list(lst, num_paths=1, num_classes=2, root=tmp_path))
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and target.tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match=r"^image not found: .*missing\.png \(listed at .*val\.txt:2\)$"):
        ds[1]
    with pytest.raises(DataError, match=r"^cannot read image .*junk\.png \(listed at .*val\.txt:4\)"):
        ds[2]
    with pytest.raises(DataError, match=r"^cannot read image .*trunc\.png \(listed at .*val\.txt:5\)"):
        ds[3]


def test_dataset_rejects_wrong_path_count(tmp_path):
    recs = [ImageRecord(("a.png",), (0, 1), "l.txt", 3)]
    with pytest.raises(ValueError, match=r"DualViewPairDataset: l\.txt:3 has 1 image path\(s\), expected 2"):
        DualViewPairDataset(recs, None)
    recs = [ImageRecord(("a.png",), (0, 1)), ImageRecord(("b.png",), (0, 1, 1), "l.txt", 9)]
    with pytest.raises(ValueError, match=r"l\.txt:9 has 3 labels, the first record has 2"):
        MultiLabelImageDataset(recs)


# ---------------------------------------------------------------- datasets on real digits


@pytest.fixture(scope="module")
def digit_list(tmp_path_factory):
    """200 digits 0-3 as 32 px PNGs + a one-path list file with one-hot 4-class labels."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 4)[:200]
    lines, pixels = [], []
    for k, i in enumerate(keep):
        pixels.append(_save_digit(root / f"img{k:03d}.png", digits.images[i]))
        onehot = ",".join("1" if c == digits.target[i] else "0" for c in range(4))
        lines.append(f"img{k:03d}.png {onehot}")
    lst = _write(root / "train.txt", "\n".join(lines) + "\n")
    return root, lst, np.stack(pixels), digits.target[keep]


def test_multilabel_dataset_pixels_labels_and_pickle(digit_list):
    root, lst, pixels, classes = digit_list
    ds = MultiLabelImageDataset(
        read_image_label_list(lst, num_paths=1, num_classes=4), image_mode="L", root=root, return_index=True
    )
    image, target, index = ds[7]
    assert index == 7 and image.shape == (1, 32, 32)
    assert torch.equal(image[0], torch.from_numpy(pixels[7]).float() / 255.0)
    assert target.dtype == torch.float32 and int(target.argmax()) == classes[7] and target.sum() == 1
    assert ds.targets.shape == (200, 4)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[7][0], image)


def test_multilabel_dataset_learns_digits(digit_list):
    """A linear BCE classifier fed through the dataset + DataLoader separates digits 0-3."""
    root, lst, _, classes = digit_list
    tf = build_eval_transform(16, mean=(0.5,), std=(0.5,))
    ds = MultiLabelImageDataset(
        read_image_label_list(lst, num_paths=1, num_classes=4), tf, image_mode="L", root=root
    )
    images, targets = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert images.shape == (200, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(256, 4)
    torch.nn.init.normal_(model.weight, std=0.01, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = images.flatten(1)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model(x).argmax(1).numpy() == classes).mean()
    assert loss.item() < 0.5 * first and acc > 0.95


def _pair_records(root, ids, name):
    recs = []
    for k, i in enumerate(ids):
        path = root / f"{name}{k}.png"
        Image.fromarray(np.asarray(Image.open(root / f"img{i:03d}.png").convert("RGB"))).save(path)
        # Both views are the same file, so identical augmentation must give identical tensors.
        recs.append(ImageRecord((str(path), str(path)), (1, 0), "pairs.txt", k + 1))
    return recs


AUG = T.Compose(
    [
        T.RandomResizedCrop(24, scale=(0.3, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.4, 0.4, 0.4, 0.1),
        T.RandomChoice([T.RandomRotation(20), T.RandomRotation(5)]),  # Python `random`
        T.ToTensor(),
    ]
)


def test_dual_view_identical_augmentation(digit_list):
    root = digit_list[0]
    recs = _pair_records(root, [3, 3, 3, 3, 3, 3], "pair")
    ds = DualViewPairDataset(recs, AUG)
    outputs = []
    for i in range(len(ds)):
        a, b, target = ds[i]
        assert a.shape == (3, 24, 24) and target.tolist() == [1.0, 0.0]
        assert torch.equal(a, b)
        outputs.append(a)
    # Same image in different samples: the seeds differ, so the augmentations differ.
    assert all(not torch.equal(outputs[0], o) for o in outputs[1:])
    # Negative control: without the per-sample reseeding two draws of AUG differ.
    img = Image.open(recs[0].paths[0]).convert("RGB")
    assert not torch.equal(AUG(img), AUG(img))


def test_dual_view_rng_isolation_and_pickle(digit_list):
    root = digit_list[0]
    ds = DualViewPairDataset(_pair_records(root, [5, 6], "iso"), AUG, return_index=True)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    py_before, np_before = random.getstate(), np.random.get_state()[1].copy()
    expected_torch = torch.Generator().manual_seed(123)
    torch.randint(0, 2**31 - 1, (1,), generator=expected_torch)  # the single seed draw
    *_, index = ds[1]
    assert index == 1
    assert random.getstate() == py_before
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert torch.equal(torch.get_rng_state(), expected_torch.get_state())
    # Reproducible from the same global torch seed, and unchanged by pickling.
    torch.manual_seed(7)
    first = ds[0][0]
    torch.manual_seed(7)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[0][0], first)


def test_dual_view_choose_transform(digit_list):
    root = digit_list[0]
    recs = _pair_records(root, [8], "choose")
    ds = DualViewPairDataset(recs, None, choose_transform=_ChooseBySize())
    a, b, _ = ds[0]
    assert a.shape == (3, 12, 12) and torch.equal(a, b)
    with pytest.raises(ValueError, match="pass transform or choose_transform, not both"):
        DualViewPairDataset(recs, AUG, choose_transform=_ChooseBySize())


class _ChooseBySize:
    """Picklable label-conditional chooser (positive class 0 -> small crop)."""

    def __call__(self, record):
        size = 12 if record.labels[0] == 1 else 20
        return T.Compose([T.RandomResizedCrop(size), T.ToTensor()])


def test_dual_view_identical_in_dataloader_workers(digit_list):
    root = digit_list[0]
    ds = DualViewPairDataset(_pair_records(root, [1, 2, 3, 4], "work"), AUG)
    loader = DataLoader(ds, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == 2
    for a, b, _ in batches:
        assert torch.equal(a, b)
