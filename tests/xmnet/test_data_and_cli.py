"""Restricted unpickler, dataset transforms, flag handling and one-line errors of xmnet/Train.py."""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from common.cli import run_main
from common.data.errors import DataError
from common.data.safe_pickle import UnsafePickleError, safe_load_pickle
from tests.xmnet.helpers import tiny
from xmnet import Train, engine_xmnet
from xmnet.leafvein2 import LeafVeinDataset, split_indices, subset_fraction


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_safe_pickle_accepts_plain_containers(tmp_path):
    value = {1: 3, 2: [1, 2, (3, "a")], "x": {"s"}, "f": frozenset({4})}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        assert safe_load_pickle(path) == value


def test_safe_pickle_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps({1: _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match=rf"^{path}: refuses to unpickle (posix|os)\.system"):
        safe_load_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({1: 1.5}))  # a float is not a plain int/str value
    with pytest.raises(UnsafePickleError, match="refuses to unpickle a float"):
        safe_load_pickle(path)
    with pytest.raises(DataError, match="pickle file not found"):
        safe_load_pickle(tmp_path / "missing.pkl")


def test_malicious_labels_pkl_refused_by_train_py(xm_root, tmp_path, capsys):
    data = _copy_data(xm_root, tmp_path / "data")
    marker = tmp_path / "pwned"
    labels = data / "soybean_2_1/labels.pkl"
    labels.write_bytes(pickle.dumps({1: _Evil(marker)}))
    line = _main_error(["--xmnet", "--cls_included", *tiny(data, tmp_path / "out")], capsys)  # exit code 2
    assert line.startswith(f"error: {labels}: refuses to unpickle") and "\n" not in line
    assert not marker.exists()


def _main_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_main(Train.main, Train.parse_args(argv))
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_missing_mask_is_one_line_error(xm_root, tmp_path, capsys):
    data = _copy_data(xm_root, tmp_path / "data")
    (data / "soybean_2_1/l2_mask/2.png").unlink()
    line = _main_error(["--xmnet", "--cls_included", *tiny(data, tmp_path / "out")], capsys)
    assert "mask not found" in line and str(data / "soybean_2_1/l2_mask/2.png") in line


def test_unreadable_or_missing_image_is_one_line_error(xm_root, tmp_path, capsys):
    data = _copy_data(xm_root, tmp_path / "data")
    (data / "soybean_2_1/test/3.png").write_bytes(b"")
    line = _main_error(["--xmnet", "--cls_included", *tiny(data, tmp_path / "out")], capsys)
    assert "cannot read image" in line and str(data / "soybean_2_1/test/3.png") in line
    shutil.rmtree(data / "soybean_2_1/test")
    line = _main_error(["--xmnet", "--cls_included", *tiny(data, tmp_path / "out")], capsys)
    assert "folder not found" in line and str(data / "soybean_2_1/test") in line
    line = _main_error(["--xmnet", "--cls_included", *tiny(tmp_path / "nowhere", tmp_path / "out")], capsys)
    assert "dataset folder not found" in line


def test_unknown_flags_refused_with_explanation(capsys):
    with pytest.raises(SystemExit) as exc:
        Train.parse_args(["--xmnet", "--cls_included", "--seg_iId", "--transfer"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --seg_iId --transfer" in err and "silently ignored" in err


def test_both_versions_flags_and_defaults():
    a = Train.parse_args(["--xmnet", "--seg_ild", "--freeze_all", "--dataparallel", "--data_dir", "./data",
                          "--backbone_class", "densenet161", "--model_path", "best_model.pth", "--unet",
                          "--transfer_to", "0.250"])
    assert a.seg_included and not a.cls_included and a.transfer_to == 0.25
    assert engine_xmnet.resolved_batch_size(a) == 8 and engine_xmnet.resolved_lr(a) == 0.05  # --unet keeps 0.05
    a = Train.parse_args(["--mmanet", "--seg_ild", "--model_path", "m.pth"])
    assert engine_xmnet.resolved_lr(a) == 0.02 and a.att_from == 3
    a = Train.parse_args(["--manet", "--cls_ild", "--amp"])
    assert a.mmanet and a.cls_included and a.amp == "fp16"
    a = Train.parse_args(["--xmnet", "--cls_included"])
    assert (engine_xmnet.resolved_batch_size(a), engine_xmnet.resolved_lr(a), a.max_epoch, a.seg_size, a.num_classes, a.seed,
            a.n_trials, a.dataset) == (32, 0.05, 150, 448, 200, 1, 150, "soybean_2_1")


def test_defaults_are_the_originals_protocol():
    """The original: raw-mask BCE target (§4.2, §6.3), HEAD's segmentation branch, XGBoost fitted on every
    training feature re-extracted per trial with test-set early stopping (§7.2); the others are flags."""
    a = Train.parse_args(["--xmnet", "--seg_ild", "--cls_included"])
    assert (a.seg_target, a.seg_arch, a.xgb_eval_on, a.xgb_reextract_train) == ("raw", "head", "test", True)
    a = Train.parse_args(["--xmnet", "--cls_included", "--seg_ild", "--seg_target", "binary", "--seg_arch", "compact",
                          "--xgb_eval_on", "val", "--no-xgb_reextract_train"])
    assert (a.seg_target, a.seg_arch, a.xgb_eval_on, a.xgb_reextract_train) == ("binary", "compact", "val", False)


@pytest.mark.parametrize("argv, text", [
    (["--xmnet", "--cls_included", "--transfer_to", "0"], "--transfer_to must be a fraction in (0, 1]"),
    (["--xmnet", "--cls_included", "--transfer_to", "1.5"], "--transfer_to must be a fraction in (0, 1]"),
    (["--xmnet", "--cls_included", "--transfer_to", "nan"], "--transfer_to must be a fraction in (0, 1]"),
    (["--xmnet"], "nothing to train"),
    (["--xmnet", "--mmanet", "--cls_included"], "exclusive"),
    (["--cls_included", "--maskguided"], "needs an attention map"),
    (["--xmnet", "--cls_included", "--freeze_all"], "leaves nothing to train"),
    (["--xmnet", "--seg_ild", "--att_from", "7"], "--att_from must be 1..6"),
])
def test_bad_flag_values_refused(argv, text, capsys):
    with pytest.raises(SystemExit):
        Train.parse_args(argv)
    assert text in capsys.readouterr().err


def test_dataset_identical_flip_and_crop_for_image_and_mask(xm_root):
    ds = LeafVeinDataset(xm_root / "soybean_2_1", "train", train=True, crop=80, seed=3)
    img0, mask0 = ds.images[0], ds.masks[0]
    assert mask0.max() == 1.0  # raw values 0/1 of the synthetic PNGs
    seen_flip = False
    for epoch in range(6):
        ds.set_epoch(epoch)
        img, label, mask = ds[0]
        assert img.shape == (3, 80, 80) and mask.shape == (1, 80, 80) and label == ds.labels[0]
        # locate the 64 px original inside the padded 80 px crop through the mask/image pairing
        nz = (img.abs().sum(0) > 0)
        for flip in (False, True):
            i0 = img0.flip(-1) if flip else img0
            m0 = mask0.flip(-1) if flip else mask0
            for top in range(17):
                for left in range(17):
                    if torch.equal(img[:, top:top + 64, left:left + 64], i0) and nz.sum() == 64 * 64:
                        assert torch.equal(mask[:, top:top + 64, left:left + 64], m0)
                        seen_flip |= flip
    test = LeafVeinDataset(xm_root / "soybean_2_1", "test", train=False, crop=80)
    img, _, mask = test[0]
    assert torch.equal(img[:, 8:72, 8:72], test.images[0]) and torch.equal(mask[:, 8:72, 8:72], test.masks[0])
    assert seen_flip


def test_split_helpers():
    labels = [0] * 10 + [1] * 10
    keep, carved = split_indices(labels, 0.2, seed=0)
    assert len(carved) == 4 and sorted(keep + carved) == list(range(20))
    assert sum(labels[i] for i in carved) == 2
    sub = subset_fraction(20, 0.25, seed=0)
    assert len(sub) == 5 and sub == subset_fraction(20, 0.25, seed=0)
