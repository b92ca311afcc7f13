"""cxrlt data: decoding, PadChest / MIMIC readers and their errors, repeat factors, TTA, gating."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.data.errors import DataError, ParseError
from common.data.samplers import RepeatFactorSampler
from common.synth import mimic as synth_mimic
from common.synth import padchest as synth_padchest
from cxrlt.data import (
    TrainTransform,
    clahe,
    percentile_rescale,
    read_cxr,
    read_gray_like_cv2,
    read_mimic,
    read_padchest,
)
from cxrlt.inference import normal_gating
from cxrlt.model import CLASS_NAMES, MIMIC_CLASSES
from cxrlt.tta import merge, tta_views


@pytest.fixture(scope="module")
def padchest(tmp_path_factory):
    root = tmp_path_factory.mktemp("padchest")
    info = synth_padchest.write(root, n=60, seed=3)
    return root, info


def test_percentile_rescale_formula():
    arr = (np.arange(100 * 100, dtype=np.uint16).reshape(100, 100) * 3 + 500)
    out = percentile_rescale(arr)
    sample = arr.reshape(-1)[:: max(1, arr.size // 2000)].astype(np.float32)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    expected = ((np.clip(arr, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    const = np.full((10, 10), 7, dtype=np.uint16)
    assert (percentile_rescale(const) == 255).all()  # p_high == p_low: divided by the maximum


def test_padchest_reader_honours_lists_and_groups(padchest):
    root, info = padchest
    split = read_padchest(info["labels_csv"], info["image_dir"], corrupted_csv=info["corrupted_csv"],
                          removal_csv=info["removal_csv"])
    assert split.class_names == list(CLASS_NAMES)
    assert split.removed == 3 and len(split.train_paths) + len(split.val_paths) == 58
    names = {p.name for p in split.train_paths + split.val_paths}
    assert not any("corrupt" in n for n in names)
    import pandas as pd
    frame = pd.read_csv(info["labels_csv"]).set_index("ImageID")
    train_pat = {frame.loc[p.name, "PatientID"] for p in split.train_paths}
    val_pat = {frame.loc[p.name, "PatientID"] for p in split.val_paths}
    assert train_pat.isdisjoint(val_pat)
    img = read_cxr(split.train_paths[0])
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.max() == 255


def test_padchest_bad_csv_errors(tmp_path, padchest):
    root, info = padchest
    lines = open(info["labels_csv"]).read().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",2"] + lines[4:]) + "\n")
    with pytest.raises(ParseError, match=r"bad.csv:4: column 'calcified densities': label must be 0 or 1"):
        read_padchest(bad, info["image_dir"])
    nometa = tmp_path / "nometa.csv"
    nometa.write_text("ImageID,Normal\na.png,1\n")
    with pytest.raises(ParseError, match="missing column.*PatientID"):
        read_padchest(nometa, info["image_dir"])


def test_bad_image_errors_name_the_file(tmp_path, padchest):
    root, info = padchest
    corrupt = next((root / "images").glob("*corrupt*"))
    with pytest.raises(DataError, match="corrupt-000.png"):
        read_cxr(corrupt)
    with pytest.raises(DataError, match="not found: .*missing.png"):
        read_cxr(tmp_path / "missing.png")
    assert (read_cxr(tmp_path / "missing.png", bad_image="zeros", size=16) == 0).all()


def test_mimic_reader_layout_and_uncertain_policies(tmp_path):
    info = synth_mimic.write(tmp_path, n=30, seed=1)
    kw = dict(splits=["train", "validate", "test"], class_names=MIMIC_CLASSES)
    raw = np.genfromtxt(info["labels_csv"], delimiter=",", skip_header=1)[:, 2:]
    n_uncertain = int((raw == -1).sum())
    assert n_uncertain > 0
    zeros = read_mimic(info["labels_csv"], info["split_csv"], tmp_path, uncertain_policy="zeros", **kw)
    ones = read_mimic(info["labels_csv"], info["split_csv"], tmp_path, uncertain_policy="ones", **kw)
    ignore = read_mimic(info["labels_csv"], info["split_csv"], tmp_path, uncertain_policy="ignore", **kw)
    assert len(zeros.paths) == info["num_images"] and all(p.is_file() for p in zeros.paths)
    assert zeros.paths[0].relative_to(tmp_path).parts[0] == "files"
    assert set(np.unique(zeros.labels)) <= {0.0, 1.0} and (ignore.labels == -1).any()
    assert ((ones.labels - zeros.labels) == (ignore.labels == -1)).all()


def test_mimic_bad_value_error(tmp_path):
    info = synth_mimic.write(tmp_path, n=12, seed=2)
    text = open(info["labels_csv"]).read().splitlines()
    parts = text[1].split(",")
    parts[2] = "2.0"
    text[1] = ",".join(parts)
    open(info["labels_csv"], "w").write("\n".join(text) + "\n")
    with pytest.raises(ParseError, match=r"chexpert.csv:2: column 'Atelectasis': label must be 1, 0, -1 or blank"):
        read_mimic(info["labels_csv"], info["split_csv"], tmp_path, splits=["train"], class_names=MIMIC_CLASSES)


def test_repeat_factors_match_formula():
    labels = np.zeros((100, 3))
    labels[:90, 0] = 1
    labels[90:99, 1] = 1
    labels[99, 2] = 1
    labels[0, 2] = 1
    sampler = RepeatFactorSampler(labels, threshold=0.1, max_repeat=10, seed=42)
    f = np.array([90, 9, 2]) / 101
    r_c = np.maximum(1, np.sqrt(0.1 / f))
    expected = np.where(labels > 0.5, r_c, 1).max(1).clip(1, 10)
    np.testing.assert_allclose(sampler.repeat_factors, expected)
    sampler.set_epoch(3)
    order = list(sampler)
    assert len(order) == int(np.rint(expected).sum())
    perm = np.random.RandomState(45).permutation(100)
    assert order[: int(np.rint(expected[perm[0]]))] == [perm[0]] * int(np.rint(expected[perm[0]]))


def test_train_transform_shapes_and_clahe():
    torch.manual_seed(0)
    arr = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    t = TrainTransform(32, p_affine=1, p_clahe=1, p_brightness=1, p_noise=1, p_dropout=1)
    assert t(arr).shape == (3, 32, 32)
    # a low-contrast image (values 100..140) gets stretched; the mapping stays monotone within a tile
    flat = np.random.default_rng(1).integers(100, 141, (256, 256)).astype(np.uint8)
    eq = clahe(flat, clip_limit=2.0, grid=8)
    assert eq.shape == flat.shape and eq.dtype == np.uint8 and np.ptp(eq) > 2 * np.ptp(flat)
    tile, out = flat[12:20, 12:20].ravel(), eq[12:20, 12:20].ravel()
    order = np.argsort(tile, kind="stable")
    assert (np.diff(out[order].astype(int)) >= 0).all()


def test_normal_gating_code_and_readme_formulas():
    p = np.array([[0.8, 0.5, 0.2], [0.1, 0.9, 0.4]])
    gated = normal_gating(p, 0.5)
    np.testing.assert_allclose(gated[:, 0], p[:, 0])
    np.testing.assert_allclose(gated[:, 1:], p[:, 1:] * (1 - p[:, :1]) ** 0.5)
    linear = normal_gating(p, 0.5, mode="normal_gating_linear")
    np.testing.assert_allclose(linear[:, 1:], p[:, 1:] * (1 - 0.5 * p[:, :1]))


def test_tta_sets_and_merge():
    x = torch.rand(2, 3, 20, 20)
    assert [len(tta_views(n)) for n in ("none", "flip", "light", "medium", "heavy", "flip_scale")] == [1, 2, 4, 6, 8, 6]
    for style in ("original", "corrected"):
        for view in tta_views("heavy", style) + tta_views("flip_scale", style):
            assert view(x).shape == x.shape
    torch.testing.assert_close(tta_views("flip")[1](x), x.flip(-1))
    logits = torch.tensor([[[0.0]], [[2.0]]])
    p = torch.sigmoid(logits)
    assert merge(logits, "mean").item() == pytest.approx(p.mean().item())
    assert merge(logits, "max").item() == pytest.approx(p.max().item())
    assert merge(logits, "gmean").item() == pytest.approx(float(torch.sqrt((p[0] + 1e-8) * (p[1] + 1e-8))))
    assert merge(logits, "logit_mean").item() == pytest.approx(float(torch.sigmoid(torch.tensor(1.0))))
    with pytest.raises(ValueError, match="--tta_style"):
        tta_views("flip", "new")


# ---- the original tta.py views (cxrlt.md §8.3), written from the reference's description ----

def test_original_scaled_views_use_int_sizes_and_reflect_padding():
    x = torch.randn(1, 3, 512, 512)  # a normalised tensor
    identity, hflip, up, down, up_flip, down_flip = tta_views("flip_scale")
    # 1.05 x 512 = 537.6 -> int 537 (round would give 538), centre crop from (537 - 512) // 2 = 12
    big = F.interpolate(x, size=(537, 537), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x), big[..., 12:524, 12:524])
    torch.testing.assert_close(up_flip(x), big[..., 12:524, 12:524].flip(-1))
    # 0.95 x 512 = 486.4 -> 486, reflect-padded back by 13 + 13
    small = F.interpolate(x, size=(486, 486), mode="bilinear", align_corners=False)
    torch.testing.assert_close(down(x), F.pad(small, (13, 13, 13, 13), mode="reflect"))
    torch.testing.assert_close(down_flip(x), F.pad(small, (13, 13, 13, 13), mode="reflect").flip(-1))
    # an odd difference puts the extra pixel right/bottom: 0.9 x 25 = 22.5 -> 22, pad 1 + 2
    y = torch.randn(1, 3, 25, 25)
    out = tta_views("medium")[5](y)
    torch.testing.assert_close(out, F.pad(F.interpolate(y, size=(22, 22), mode="bilinear", align_corners=False),
                                          (1, 2, 1, 2), mode="reflect"))


def test_original_rotations_reflect_and_brightness_acts_on_the_normalised_tensor():
    x = torch.randn(2, 3, 32, 32)
    for rot in tta_views("light")[2:]:
        const = torch.full((1, 3, 32, 32), -1.7)  # reflection keeps a constant image constant; zero fill would not
        torch.testing.assert_close(rot(const), const)
    a = math.radians(5.0)
    theta = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]]).expand(2, 2, 3)
    grid = F.affine_grid(theta, [2, 3, 32, 32], align_corners=False)
    torch.testing.assert_close(tta_views("light")[2](x), F.grid_sample(x, grid, mode="bilinear",
                                                                       padding_mode="reflection", align_corners=False))
    up, down = tta_views("heavy")[6:]
    torch.testing.assert_close(up(x), torch.clamp(x * 1.1, 0, 1))  # every negative normalised value -> 0
    torch.testing.assert_close(down(x), x * 0.9)  # no clamp
    # corrected style: black-filled rotation, round() sizes
    assert tta_views("light", "corrected")[2](torch.ones(1, 3, 32, 32))[0, :, 0, 0].max() < 1.0
    x512 = torch.randn(1, 1, 512, 512)
    ref = F.interpolate(x512, size=(538, 538), mode="bilinear", align_corners=False)[..., 13:525, 13:525]
    torch.testing.assert_close(tta_views("flip_scale", "corrected")[2](x512), ref)


def test_inference_applies_original_views_to_the_normalised_batch():
    from cxrlt.data import IMAGENET_MEAN, IMAGENET_STD
    from cxrlt.inference import predict_probs

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t):
            seen.append(t.clone())
            return t.mean((2, 3))

    imgs = torch.rand(2, 3, 16, 16)
    norm = (imgs - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    predict_probs(Probe(), [imgs], torch.device("cpu"), tta="heavy", merge_mode="mean")
    torch.testing.assert_close(seen[0], norm)
    torch.testing.assert_close(seen[6], torch.clamp(norm * 1.1, 0, 1))
    seen.clear()
    predict_probs(Probe(), [imgs], torch.device("cpu"), tta="heavy", merge_mode="mean", tta_style="corrected")
    torch.testing.assert_close(seen[6], ((imgs * 1.1).clamp(0, 1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                               / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))


def test_synth_padchest_is_16bit(padchest):
    root, info = padchest
    first = next(p for p in (root / "images").iterdir() if "corrupt" not in p.name)
    with Image.open(first) as img:
        assert img.mode.startswith("I")
        assert np.asarray(img).max() > 255


def test_predict_decoding_rescales_16bit_like_the_original(padchest, tmp_path):
    root, info = padchest
    first = next(p for p in sorted((root / "images").iterdir()) if "corrupt" not in p.name)
    with Image.open(first) as img:
        raw = np.asarray(img).astype(np.int64)
    assert raw.max() > 255
    grey = read_gray_like_cv2(first)  # default: the original's percentile rescale
    np.testing.assert_array_equal(grey, percentile_rescale(raw.astype(np.uint16)))
    np.testing.assert_array_equal(grey, read_cxr(first)[:, :, 0])
    card = read_gray_like_cv2(first, rescale_16bit=False)  # the model card's cv2 conversion: high byte
    np.testing.assert_array_equal(card, (raw >> 8).astype(np.uint8))
    eight = Image.fromarray((np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8))
    eight.save(tmp_path / "eight.png")  # 8-bit grey: unchanged, as cv2 IMREAD_GRAYSCALE
    np.testing.assert_array_equal(read_gray_like_cv2(tmp_path / "eight.png"), np.asarray(eight))
