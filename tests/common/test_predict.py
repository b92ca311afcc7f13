"""common.predict / common.preprocessing / common.explain: Grad-CAM on models whose answer is known, the
stored-preprocessing contract, thresholds, input listing and the first-batch warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.checkpoint import CheckpointError
from common.data.errors import DataError
from common.explain import grad_cam
from common.predict import LoadedModel, list_inputs, parse_thresholds, read_thresholds
from common.preprocessing import (
    REQUIRED_FIELDS,
    Preprocessing,
    decode_image,
    input_range_warning,
    resolve_preprocessing,
    to_input,
)

PREP = Preprocessing(input_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channels="rgb",
                     resize="resize", class_names=("a", "b", "c"))


class _GapLinear(nn.Module):
    """features (the Grad-CAM layer) -> global average pool -> linear: Grad-CAM must equal CAM."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.features = nn.Conv2d(3, c, 3, padding=1)
        self.fc = nn.Linear(c, k)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_of_a_gap_linear_model_is_its_class_activation_map():
    torch.manual_seed(0)
    model = _GapLinear(6, 4).eval()
    x = torch.randn(3, 3, 5, 7)
    k = torch.tensor([0, 2, 3])
    maps = grad_cam(lambda: model(x), model.features, k, inputs=[x])
    assert len(maps) == 1
    a = model.features(x).detach()
    # d y_k / d A_c(h, w) = w_kc / (h w) everywhere, so alpha_c = w_kc / (h w) and the map is ReLU(sum_c w_kc A_c) / hw
    expected = torch.relu(torch.einsum("bc,bchw->bhw", model.fc.weight[k].detach(), a)) / (5 * 7)
    torch.testing.assert_close(maps[0], expected, rtol=1e-5, atol=1e-6)


class _PositionLinear(nn.Module):
    """A linear model over a feature map of one-hot position channels: its Grad-CAM is its weight map."""

    def __init__(self, h: int, w: int, k: int):
        super().__init__()
        self.h, self.w = h, w
        self.positions = nn.Identity()
        self.fc = nn.Linear(h * w, k, bias=False)

    def forward(self, x):
        n = self.h * self.w
        # A_c is one-hot at position c; x enters with weight 0 so the map has an input path
        feats = self.positions(torch.eye(n).view(1, n, self.h, self.w) + 0.0 * x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1))
        return self.fc(feats.sum(dim=(2, 3)))


def test_grad_cam_of_a_linear_model_equals_its_weight_map_up_to_relu():
    torch.manual_seed(1)
    model = _PositionLinear(4, 5, 3).eval()
    x = torch.randn(2, 3, 8, 8)
    maps = grad_cam(lambda: model(x), model.positions, torch.tensor([1, 2]), inputs=[x])
    weight_maps = model.fc.weight.detach().view(3, 4, 5)
    # alpha_c = w_kc (the HW factors cancel), A_c is one-hot at position c: the map is ReLU(w_k) laid out 4 x 5
    torch.testing.assert_close(maps[0][0], torch.relu(weight_maps[1]))
    torch.testing.assert_close(maps[0][1], torch.relu(weight_maps[2]))


def test_grad_cam_returns_one_map_per_call_of_a_shared_layer():
    torch.manual_seed(2)
    model = _GapLinear(4, 2).eval()
    a, b = torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6)
    maps = grad_cam(lambda: model(a) + model(b), model.features, torch.tensor([1]), inputs=[a, b])
    assert len(maps) == 2
    w = model.fc.weight[1].detach()
    for m, x in zip(maps, (a, b)):
        torch.testing.assert_close(m[0], torch.relu(torch.einsum("c,chw->hw", w, model.features(x)[0].detach())) / 36,
                                   rtol=1e-5, atol=1e-6)


def test_missing_preprocessing_fields_are_named():
    with pytest.raises(CheckpointError) as err:
        resolve_preprocessing(None, {"input_size": [32, 32], "mean": None, "class_names": None}, "--checkpoint x.pth")
    text = str(err.value)
    assert "x.pth" in text
    for name in ("mean", "std", "channels", "resize", "class_names"):
        assert name in text
    assert "input_size" not in text.split("give")[1]
    full = {**PREP.to_dict()}
    assert resolve_preprocessing(full, None, "x").input_size == (16, 16)
    assert set(REQUIRED_FIELDS) <= set(full)


def test_stored_preprocessing_wins_over_derived_and_fallback():
    derived = {**PREP.to_dict(), "input_size": [8, 8]}
    stored = {**PREP.to_dict(), "input_size": [24, 24]}
    assert resolve_preprocessing(stored, derived, "x", fallback={"input_size": [4, 4]}).input_size == (24, 24)
    assert resolve_preprocessing(None, derived, "x", fallback={"input_size": [4, 4]}).input_size == (8, 8)
    assert resolve_preprocessing(None, {**derived, "input_size": None}, "x",
                                 fallback={"input_size": [4, 4]}).input_size == (4, 4)


def test_thresholds_by_name_or_in_class_order(tmp_path):
    names = ["a", "b", "c"]
    np.testing.assert_allclose(parse_thresholds({"thresholds": {"c": 0.7, "a": 0.1, "b": 0.4}}, names, "t"),
                               [0.1, 0.4, 0.7])
    np.testing.assert_allclose(parse_thresholds([0.2, 0.3, 0.9], names, "t"), [0.2, 0.3, 0.9])
    np.testing.assert_allclose(parse_thresholds({"thresholds": {"a": {"threshold": 0.5, "f1": 0.8}, "b": 0.5,
                                                                "c": 0.5}}, names, "t"), [0.5] * 3)
    with pytest.raises(ValueError, match="missing \\['c'\\]"):
        parse_thresholds({"thresholds": {"a": 0.1, "b": 0.2}}, names, "t")
    with pytest.raises(ValueError, match="2 thresholds for 3 classes"):
        parse_thresholds([0.1, 0.2], names, "t")
    with pytest.raises(ValueError, match="outside"):
        parse_thresholds([0.1, 0.2, 1.5], names, "t")
    loaded = LoadedModel(nn.Identity(), PREP, tmp_path / "ckpt.pth", tmp_path)
    with pytest.raises(ValueError, match="no per-class thresholds are stored"):
        read_thresholds(loaded)
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {"a": 0.3, "b": 0.2, "c": 0.1}}))
    np.testing.assert_allclose(read_thresholds(loaded), [0.3, 0.2, 0.1])
    stored = LoadedModel(nn.Identity(), PREP, tmp_path / "w.safetensors", tmp_path,
                         {"thresholds": json.dumps([0.6, 0.6, 0.6])})
    np.testing.assert_allclose(read_thresholds(stored), [0.6] * 3)


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def test_list_inputs_from_a_folder_a_list_and_a_csv(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b.png", "sub/a.png", "c.jpg"):
        _png(tmp_path / "imgs" / name, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    items, problems = list_inputs(tmp_path / "imgs")
    assert [i.key for i in items] == [("b.png",), ("c.jpg",), ("sub/a.png",)] and not problems
    (tmp_path / "list.txt").write_text("# comment\nimgs/b.png 0,1\n\nimgs/c.jpg\n")
    items, _ = list_inputs(tmp_path / "list.txt")
    assert [i.paths[0] for i in items] == [tmp_path / "imgs/b.png", tmp_path / "imgs/c.jpg"]
    (tmp_path / "list.csv").write_text("path,label\nimgs/c.jpg,1\n")
    items, _ = list_inputs(tmp_path / "list.csv")
    assert items[0].paths[0] == tmp_path / "imgs/c.jpg"
    (tmp_path / "bad.txt").write_text("a.png b.png\n")
    with pytest.raises(DataError, match="bad.txt:1: expected 3 path"):
        list_inputs(tmp_path / "bad.txt", views=("x", "y", "z"))
    with pytest.raises(DataError, match="not found"):
        list_inputs(tmp_path / "missing")


def test_list_inputs_pairs_views_and_reports_unpaired(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("P1_OL.png", "P1_SD.png", "P2_OL.png", "readme.png"):
        _png(tmp_path / name, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))

    def pair(p: Path):
        stem, _, view = p.stem.rpartition("_")
        return (stem, ("OL", "SD").index(view)) if view in ("OL", "SD") else None

    items, problems = list_inputs(tmp_path, views=("OL", "SD"), pair_view=pair)
    assert [i.key for i in items] == [("P1_OL.png", "P1_SD.png")]
    reasons = dict(problems)
    assert "no matching SD view" in reasons["P2_OL.png"] and "not a view" in reasons["readme.png"]


def test_first_batch_warning_names_the_problem(tmp_path):
    const = decode_image(_png(tmp_path / "c.png", np.full((8, 8), 7, np.uint8), "L"), PREP)[1]
    normal = decode_image(_png(tmp_path / "n.png", np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)),
                          PREP)[1]
    assert input_range_warning([normal], ["n.png"], PREP) is None
    text = input_range_warning([normal, const], ["n.png", "c.png"], PREP)
    assert text.startswith("warning:") and "c.png is all-constant" in text and "n.png" not in text
    Image.fromarray(np.random.default_rng(1).normal(0, 1, (8, 8)).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    facts = decode_image(tmp_path / "f.tif", PREP)[1]
    assert "already normalised" in input_range_warning([facts], ["f.tif"], PREP)
    dark = decode_image(_png(tmp_path / "d.png", (np.arange(64).reshape(8, 8) % 4).astype(np.uint8), "L"), PREP)[1]
    assert "fewer than 8 grey levels" in input_range_warning([dark], ["d.png"], PREP)
    grey = Preprocessing(**{**PREP.__dict__, "channels": "gray"})
    assert "trained on grey" in input_range_warning([decode_image(tmp_path / "n.png", grey)[1]], ["n.png"], grey)


def test_corrupt_image_is_a_data_error_naming_it(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="bad.png"):
        decode_image(bad, PREP)


def test_pad_center_crop_pads_normalised_zeros_and_crops_the_centre():
    prep = Preprocessing(**{**PREP.__dict__, "resize": "pad_center_crop", "input_size": (6, 6)})
    arr = np.full((4, 10, 3), 255, np.uint8)
    x = to_input(arr, prep)
    assert x.shape == (3, 6, 6)
    assert torch.all(x[:, 1:5] == 2.0) and torch.all(x[:, 0] == 0) and torch.all(x[:, 5] == 0)
