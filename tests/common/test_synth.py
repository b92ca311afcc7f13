"""common.synth: renderer signal, format registry/CLI, determinism, and round trips through the readers."""

from __future__ import annotations

import hashlib
import pickle
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import common.synth as synth
from common.data.errors import DataError, ParseError
from common.data.formats import DISEASE_LABELS, load_labels_pkl, read_chestxray14, read_xmnet
from common.data.formats.chestxray14 import CSV_COLUMNS
from common.synth import __main__ as cli
from common.synth import chestxray14 as synth_cxr14
from common.synth import render
from common.synth import xmnet as synth_xmnet


def _fft_features(img: Image.Image) -> np.ndarray:
    # FFT magnitude is translation invariant, so distances reflect glyph identity/tint, not position jitter.
    a = np.asarray(img, dtype=np.float64) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    mags = [np.abs(np.fft.fft2(a[..., k] - a[..., k].mean())) for k in range(a.shape[2])]
    return np.log1p(np.stack(mags)).ravel()


def _distances(images_by_class: dict[int, list[Image.Image]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([c for c, imgs in images_by_class.items() for _ in imgs])
    feats = np.stack([_fft_features(im) for imgs in images_by_class.values() for im in imgs])
    dist = np.sqrt(((feats[:, None] - feats[None]) ** 2).sum(-1))
    return labels, dist


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- render


def test_digit_glyphs_are_real_digits_in_8bit():
    images, labels = render.digit_glyphs()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert np.bincount(labels).min() >= 170  # every digit written by many writers
    assert render.digit_glyphs()[0] is images  # cached


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_render_class_same_class_closer_than_different_class(mode):
    rng = np.random.default_rng(0)
    # Same digit with different second factor (3, 13, 23, 33) must also be told apart.
    classes = [0, 1, 2, 3, 10, 13, 23, 33]
    by_class = {c: [render.render_class(c, 40, 32, rng, mode) for _ in range(12)] for c in classes}
    labels, dist = _distances(by_class)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    assert dist[same].mean() < dist[labels[:, None] != labels[None]].mean()
    for i, a in enumerate(classes):
        within_a = dist[np.ix_(labels == a, labels == a)].sum() / (12 * 11)
        for b in classes[i + 1 :]:
            within_b = dist[np.ix_(labels == b, labels == b)].sum() / (12 * 11)
            between = dist[np.ix_(labels == a, labels == b)].mean()
            assert between > (within_a + within_b) / 2, (a, b)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_render_class_nearest_centroid_generalises_to_new_writers(mode):
    rng = np.random.default_rng(1)
    classes = list(range(10))
    train = {c: [_fft_features(render.render_class(c, 10, 32, rng, mode)) for _ in range(15)] for c in classes}
    centroids = np.stack([np.mean(train[c], axis=0) for c in classes])
    correct = total = 0
    for c in classes:
        for _ in range(10):
            f = _fft_features(render.render_class(c, 10, 32, rng, mode))
            correct += int(np.argmin(((centroids - f) ** 2).sum(1)) == c)
            total += 1
    assert correct / total > 0.4  # chance is 0.1


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_render_class_tiny_cnn_learns_20_classes_in_300_steps(mode):
    # 20 classes = 10 digits x 2 second factors (tint in RGB, frame decoration in L), new writers at test.
    rng = np.random.default_rng(0)

    def batch(n):
        ys = rng.integers(0, 20, size=n)
        xs = np.stack([np.asarray(render.render_class(int(c), 20, 32, rng, mode), np.float32) / 255 for c in ys])
        xs = xs[:, None] if mode == "L" else xs.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(ys)

    x_train, y_train = batch(1200)
    x_test, y_test = batch(300)
    net = nn.Sequential(
        nn.Conv2d(x_train.shape[1], 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 20),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(x_train), (32,), generator=gen)
        loss = nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert acc > 0.5  # chance is 0.05; measured 0.78 (L) / 0.84 (RGB)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_render_multilabel_single_glyph_signal_and_shapes(mode):
    rng = np.random.default_rng(2)
    by_class = {c: [render.render_multilabel([c], 14, 64, rng, mode) for _ in range(10)] for c in range(14)}
    assert by_class[0][0].mode == mode and by_class[0][0].size == (64, 64)
    labels, dist = _distances(by_class)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    assert dist[same].mean() < dist[labels[:, None] != labels[None]].mean()


def test_render_multilabel_empty_is_background_and_glyphs_add_bright_pixels():
    rng = np.random.default_rng(3)
    bright = []
    for active in ([], [4], [4, 7], [1, 4, 7, 11]):
        arr = np.stack([np.asarray(render.render_multilabel(active, 14, 64, rng, "L")) for _ in range(8)])
        bright.append((arr > 160).mean())
    assert bright[0] < 0.002  # noisy background never reaches glyph brightness
    assert bright[0] < bright[1] < bright[2] < bright[3]


def test_render_multilabel_non_square_size_and_determinism():
    a = render.render_multilabel([0, 5], 10, (48, 32), np.random.default_rng(7), "RGB")
    b = render.render_multilabel([0, 5], 10, (48, 32), np.random.default_rng(7), "RGB")
    assert a.size == (48, 32)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_render_class_with_mask_matches_render_class_and_covers_bright_strokes():
    img = render.render_class(6, 10, 32, np.random.default_rng(4), "L")
    img2, mask = render.render_class_with_mask(6, 10, 32, np.random.default_rng(4), "L")
    assert np.array_equal(np.asarray(img), np.asarray(img2))
    assert mask.shape == (32, 32) and mask.dtype == bool
    arr = np.asarray(img, dtype=np.float64)
    assert 0.02 < mask.mean() < 0.5
    assert arr[mask].mean() > arr[~mask].mean() + 80


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_id": 40, "num_classes": 41, "mode": "L"}, "mode L distinguishes at most 40 classes"),
        ({"class_id": 0, "num_classes": 401, "mode": "RGB"}, "mode RGB distinguishes at most 400 classes"),
        ({"class_id": 10, "num_classes": 10, "mode": "RGB"}, "class_id 10 out of range"),
        ({"class_id": 0, "num_classes": 10, "mode": "CMYK"}, "mode must be one of"),
    ],
)
def test_render_rejects_unencodable_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render.render_class(size=32, rng=np.random.default_rng(0), **kwargs)


def test_save_png_8_and_16_bit_round_trip(tmp_path):
    img = render.render_multilabel([3], 10, 32, np.random.default_rng(5), "L")
    render.save_png(img, tmp_path / "a" / "x8.png")
    render.save_png(img, tmp_path / "x16.png", bits=16)
    with Image.open(tmp_path / "a" / "x8.png") as im8, Image.open(tmp_path / "x16.png") as im16:
        assert im8.mode == "L" and im16.mode == "I;16"
        arr8, arr16 = np.asarray(im8), np.asarray(im16)
    assert np.array_equal(arr8, np.asarray(img))
    assert np.array_equal(arr16.astype(np.int64), np.asarray(img).astype(np.int64) * 257)
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        render.save_png(img, tmp_path / "x.png", bits=12)
    with pytest.raises(ValueError, match="16-bit output needs an L or I;16 image"):
        render.save_png(img.convert("RGB"), tmp_path / "x.png", bits=16)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "x16.png", "x8.png"]  # no temp files left


# ---------------------------------------------------------------- registry and CLI


def test_formats_registry_lists_all_eight_names():
    assert list(synth.FORMATS) == [
        "dvxray", "chestxray14", "mimic", "padchest", "xmnet", "cub200", "veri776", "market1501",
    ]
    assert all(module == f"common.synth.{name}" for name, module in synth.FORMATS.items())


def test_cli_unknown_format_lists_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["nih", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown format 'nih'; choose from: " + ", ".join(synth.FORMATS) in err


def test_cli_listed_format_without_module_names_the_module(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(synth.FORMATS, "ghost", "common.synth.ghost")
    with pytest.raises(SystemExit) as exc:
        cli.main(["ghost", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: format ghost is not implemented yet (module common.synth.ghost missing)"


def test_load_format_rejects_module_without_write(monkeypatch):
    monkeypatch.setitem(synth.FORMATS, "empty", "common.synth.empty_fake")
    monkeypatch.setitem(__import__("sys").modules, "common.synth.empty_fake", types.ModuleType("empty_fake"))
    with pytest.raises(synth.FormatError, match="format empty: module common.synth.empty_fake defines no write"):
        synth.load_format("empty")


def test_cli_rejects_non_positive_n(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["xmnet", str(tmp_path), "--n", "0"])
    assert "--n must be positive, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, n", [("chestxray14", 12), ("xmnet", 15)])
def test_cli_is_deterministic_per_seed(tmp_path, capsys, fmt, n):
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert cli.main([fmt, str(tmp_path / run), "--n", str(n), "--seed", str(seed)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{fmt}: ") and out[0].endswith(f"seed=3 -> {tmp_path / 'a'}")
    a, b, c = (_tree_hashes(tmp_path / run) for run in "abc")
    assert len(a) >= n and a == b
    assert a != c  # another seed changes content (and, for chestxray14, follow-up counts)


def test_summarize_flattens_numeric_entries_only():
    result = {"format": "x", "root": "/r", "num_classes": 3, "counts": {"train": 2, "test": 1}, "ok": True}
    assert synth.summarize(result) == "num_classes=3 counts.train=2 counts.test=1"


# ---------------------------------------------------------------- chestxray14


def _recording(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_chestxray14_round_trip_labels_split_and_layout(tmp_path, monkeypatch):
    calls = _recording(monkeypatch, synth_cxr14, "render_multilabel")
    result = synth.generate("chestxray14", tmp_path, n=36, seed=11)
    records = read_chestxray14(tmp_path)

    assert len(records) == len(calls) == 36 == result["images"]
    # Rows are written in render order, so row i carries the classes drawn into image i.
    for rec, (args, kwargs, img) in zip(records, calls):
        active = args[0]
        assert rec.labels == tuple(int(k in active) for k in range(len(DISEASE_LABELS)))
        assert kwargs["mode"] == "L"
        with Image.open(rec.path) as im:
            assert im.mode == "L" and im.size == (64, 64)
            assert np.array_equal(np.asarray(im), np.asarray(img))
    assert any(sum(r.labels) == 0 for r in records) and any(sum(r.labels) >= 2 for r in records)

    splits = {s: {r.patient_id for r in records if r.split == s} for s in ("train_val", "test")}
    assert splits["train_val"] and splits["test"] and not splits["train_val"] & splits["test"]
    assert sum(r.split == "test" for r in records) == result["counts"]["test"]
    for r in records:
        assert Path(r.path).name == f"{r.patient_id:08d}_{r.follow_up:03d}.png"
        assert Path(r.path).parent.name == "images" and Path(r.path).parent.parent.name.startswith("images_0")
    assert len({Path(r.path).parent.parent.name for r in records}) == result["folders"] == 3

    text = (tmp_path / "Data_Entry_2017.csv").read_text()
    assert text.splitlines()[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    frame = pd.read_csv(tmp_path / "Data_Entry_2017.csv")
    assert tuple(frame.columns) == CSV_COLUMNS and frame["Unnamed: 11"].isna().all()
    # CHARM-Xray's substring rule gives the same vectors as the reader's exact matching.
    for rec, findings in zip(records, frame["Finding Labels"]):
        assert rec.labels == tuple(int(name in findings) for name in DISEASE_LABELS)
    assert rec.image_record().labels == tuple(float(v) for v in rec.labels)


def test_chestxray14_label_order_is_charm_disease_labels():
    # charm_xray.md §3.1, written out here so a reordering in the reader cannot pass the round trip.
    assert DISEASE_LABELS == (
        "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
        "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    )


def _edit_csv_row(root: Path, row: int, old: str, new: str) -> None:
    path = root / "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    assert old in lines[row]
    lines[row] = lines[row].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")


def test_chestxray14_reader_errors_name_file_and_line(tmp_path):
    root = tmp_path / "nih"
    synth_cxr14.write(root, n=12, seed=0)
    csv = root / "Data_Entry_2017.csv"
    first_findings = csv.read_text().splitlines()[3].split(",")[1]
    _edit_csv_row(root, 3, f",{first_findings},", ",Pneumothorax|Cardiomegally,")
    with pytest.raises(ParseError, match=rf"^{csv}:4: unknown class 'Cardiomegally'"):
        read_chestxray14(root)

    synth_cxr14.write(root, n=12, seed=0)
    name = csv.read_text().splitlines()[2].split(",")[0]
    (next(root.glob(f"*/images/{name}"))).unlink()
    with pytest.raises(DataError, match=rf"^{csv}:3: image {name} not found under"):
        read_chestxray14(root)

    synth_cxr14.write(root, n=12, seed=0)
    line = csv.read_text().splitlines()[1].split(",")
    _edit_csv_row(root, 1, f",{line[2]},{line[3]},", f",{line[2]},99,")
    with pytest.raises(ParseError, match=rf"^{csv}:2: Patient ID 99 does not match image name"):
        read_chestxray14(root)

    synth_cxr14.write(root, n=12, seed=0)
    _edit_csv_row(root, 1, f",{line[2]},{line[3]},", f",{line[2]},x1,")
    with pytest.raises(ParseError, match=rf"^{csv}:2: column 'Patient ID': cannot convert 'x1'"):
        read_chestxray14(root)

    synth_cxr14.write(root, n=12, seed=0)
    test_list = root / "test_list.txt"
    test_list.write_text(test_list.read_text() + "00000001_000.png\n")
    with pytest.raises(DataError, match="image 00000001_000.png is also listed in train_val_list.txt"):
        read_chestxray14(root)


# ---------------------------------------------------------------- xmnet


@pytest.mark.parametrize("btf", [False, True])
def test_xmnet_round_trip_labels_masks_and_split(tmp_path, monkeypatch, btf):
    calls = _recording(monkeypatch, synth_xmnet, "render_class_with_mask")
    result = synth_xmnet.write(tmp_path, n=18, seed=5, num_classes=3, btf=btf)
    train, test = read_xmnet(tmp_path, "train"), read_xmnet(tmp_path, "test")
    assert (len(train), len(test)) == (result["counts"]["train"], result["counts"]["test"]) == (12, 6)
    assert {r.label for r in train} == {r.label for r in test} == {0, 1, 2}

    generated = {f"{i}.png": (args[0], out[1]) for i, (args, _, out) in enumerate(calls, start=1)}
    for rec in train + test:
        class_id, mask = generated[Path(rec.path).name]
        assert rec.label == class_id
        assert Path(rec.mask_path).name == Path(rec.path).name
        with Image.open(rec.mask_path) as m:
            assert m.mode == "L"
            assert np.array_equal(np.asarray(m), mask.astype(np.uint8))  # raw values 0/1

    labels = load_labels_pkl(tmp_path / "labels.pkl")
    assert all(type(k) is (str if btf else int) for k in labels)
    assert sorted(labels.values()) == sorted([1, 2, 3] * 6)  # 1-based on disk


def test_xmnet_unpickler_refuses_classes_and_bad_labels(tmp_path):
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps(OrderedDict({1: 1})))
    with pytest.raises(DataError, match=rf"^{path}: refuses to unpickle collections.OrderedDict"):
        load_labels_pkl(path)
    path.write_bytes(pickle.dumps({1: 1, "2.png": 2}))
    with pytest.raises(DataError, match="keys must be all int ids or all str file names"):
        load_labels_pkl(path)
    path.write_bytes(pickle.dumps({1: 0}))
    with pytest.raises(DataError, match="label of 1 is 0; labels are 1-based integers"):
        load_labels_pkl(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=rf"^{path}: cannot unpickle"):
        load_labels_pkl(path)
    path.write_bytes(pickle.dumps({1: 2, 2: 1}, protocol=0))  # protocol 0 still loads plain types
    assert load_labels_pkl(path) == {1: 2, 2: 1}


def test_xmnet_reader_missing_mask_label_or_bad_split(tmp_path):
    synth_xmnet.write(tmp_path, n=6, seed=0, num_classes=2)
    with pytest.raises(ValueError, match="split must be one of"):
        read_xmnet(tmp_path, "val")
    (tmp_path / "l2_mask" / "1.png").unlink()
    with pytest.raises(DataError, match=r"mask not found: .*l2_mask/1\.png \(for image .*train/1\.png\)"):
        read_xmnet(tmp_path, "train")
    (tmp_path / "train" / "leaf.png").write_bytes(b"")
    (tmp_path / "l2_mask" / "1.png").write_bytes(b"")
    with pytest.raises(ParseError, match="image name must start with an integer id"):
        read_xmnet(tmp_path, "train")
    (tmp_path / "train" / "leaf.png").unlink()
    (tmp_path / "train" / "99.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"labels.pkl: no label for 99"):
        read_xmnet(tmp_path, "train")
