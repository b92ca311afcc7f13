"""dcal/scripts/predict.py and the DCAL export (issue 18): FGVC top-5 from a train_fgvc.py run, re-ID
ranking of a Market-1501 gallery with identities from the file names, corrupt image, refusal, resume,
explain (rollout + GLCA patches; ranked results), the inference path exported without PWCA."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.data.images import load_image
from common.preprocessing import decode_image, to_input
from dcal.adapter import ADAPTER
from dcal.datasets.fgvc_datasets import build_fgvc_transform
from dcal.scripts import predict, train_fgvc
from dcal.training.trainer import build_model, norm_stats
from dcal.utils.config import load_config, to_dict
from tests.dcal.conftest import FGVC_CONFIG, REID_CONFIG, tiny_opts
from tests.predict_helpers import (
    check_explain,
    check_export_parity,
    check_predict_cli,
    check_refused_without_preprocessing,
    corrupt_copy,
    parse,
)


@pytest.fixture(scope="module")
def fgvc_run(cub_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcal_fgvc_predict")
    train_fgvc.main(parse(train_fgvc, ["--config", FGVC_CONFIG, "--no_plots", "--opts", *tiny_opts(cub_root, 4, out)]))
    return out / "checkpoint_best.pth"


@pytest.fixture(scope="module")
def reid_ckpt(market_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcal_reid_predict")
    cfg = load_config(REID_CONFIG.parent / "market1501.yaml", tiny_opts(market_root, 8, out))
    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained=False)
    ckpt = out / "checkpoint_best.pth"
    from dcal.adapter import preprocessing_from_config

    mean, std = norm_stats(model)
    save_checkpoint(ckpt, {"model": model.state_dict(), "args": {"config": to_dict(cfg)},
                           "preprocessing": preprocessing_from_config(cfg, mean, std, None)})
    return ckpt


def _images(cub_root):
    return sorted((cub_root / "images").rglob("*.jpg"))


def test_trainer_records_the_preprocessing_and_the_eval_transform_is_used(fgvc_run, cub_root):
    prep = load_checkpoint(fgvc_run)["preprocessing"]
    assert prep["resize"] == "resize_center_crop" and prep["input_size"] == [32, 32] and len(prep["class_names"]) == 4
    loaded = ADAPTER.load(fgvc_run, device=torch.device("cpu"))
    p = loaded.preprocessing
    path = _images(cub_root)[0]
    resize = load_checkpoint(fgvc_run)["args"]["config"]["data"]["resize_size"]  # as the evaluation used it
    ref = build_fgvc_transform([32, 32], train=False, resize_size=resize, mean=p.mean, std=p.std)(load_image(path, "RGB"))
    torch.testing.assert_close(to_input(decode_image(path, p)[0], p), ref, rtol=0, atol=1e-6)


def test_fgvc_top5_corrupt_and_resume(fgvc_run, cub_root, tmp_path, capsys):
    images = _images(cub_root)
    folder = corrupt_copy(cub_root / "images", tmp_path / "birds", images[:4])
    names = load_checkpoint(fgvc_run)["preprocessing"]["class_names"]
    new = [(images[5], folder / images[5].relative_to(cub_root / "images"))]
    table = check_predict_cli(predict, fgvc_run, folder, tmp_path / "p.csv", new_files=new, key_columns=("image",),
                              class_names=names, capsys=capsys)
    row = table[table["skipped"] == ""].iloc[0]
    probs = row[names].astype(float)
    assert abs(probs.sum() - 1) < 1e-5 and row["top1"] == probs.idxmax() == row["predicted"]
    assert [c for c in table.columns if c.startswith("top") and not c.endswith("prob")] == ["top1", "top2", "top3",
                                                                                            "top4"]  # 4 classes


def test_refused_without_config(fgvc_run, cub_root, tmp_path, capsys):
    bare = tmp_path / "weights.pth"
    save_checkpoint(bare, load_checkpoint(fgvc_run)["model"])
    check_refused_without_preprocessing(predict, bare, cub_root / "images", tmp_path / "x.csv", capsys,
                                        missing=("config",))


def test_reid_ranks_the_gallery_with_identities(reid_ckpt, market_root, tmp_path, capsys):
    out = tmp_path / "ranks.csv"
    table = predict.main(parse(predict, ["--checkpoint", reid_ckpt, "--query", market_root / "query", "--gallery",
                                         market_root / "bounding_box_test", "--output", out, "--device", "cpu",
                                         "--topk", "5", "--explain", "2"]))
    n_query = len(list((market_root / "query").glob("*.jpg")))
    assert len(table) == n_query and (table["skipped"] == "").all()
    row = table.iloc[0]
    d = [float(row[f"match{r}_distance"]) for r in range(1, 6)]
    assert d == sorted(d)
    qid = int(row["query"].split("_")[0])
    for r in range(1, 6):
        assert row[f"match{r}_same_id"] == str(int(int(row[f"match{r}"].split("_")[0]) == qid))
    assert len(list((tmp_path / "ranks_explain").glob("*_ranked.png"))) == 2
    on_disk = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(on_disk) == n_query
    with pytest.raises(ValueError, match="re-ID model"):
        predict.main(parse(predict, ["--checkpoint", reid_ckpt, "--images", market_root / "query", "--output",
                                     tmp_path / "bad.csv", "--device", "cpu"]))


def test_explain_and_export_without_pwca(fgvc_run, reid_ckpt, cub_root, tmp_path):
    check_explain(predict, fgvc_run, cub_root / "images", tmp_path / "e.csv", n=1)
    check_export_parity(fgvc_run, tmp_path / "fgvc", images=cub_root / "images")
    check_export_parity(reid_ckpt, tmp_path / "reid")
