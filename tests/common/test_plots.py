"""`python -m common.plots`: training curves, per-class bars against the registry, paper overlays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.plots import _groups, declared_overlays, find_logs, main, overlay_function, plot_run, read_log

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_columns_are_grouped_into_loss_metric_and_lr(tmp_path):
    log = tmp_path / "log.csv"
    _write_csv(log, "epoch,train_loss,train_ce,train_lr,val_loss,val_auc,epoch_time,completion_time",
               ["0,1.0,0.9,0.01,1.1,0.5,3.0,2026-01-01", "1,0.5,0.4,0.001,0.6,0.7,3.1,2026-01-01"])
    cols = read_log(log)
    assert "completion_time" not in cols and cols["val_auc"] == [0.5, 0.7]
    assert _groups(cols) == {"loss": ["train_loss", "train_ce", "val_loss"], "validation metric": ["val_auc"],
                             "learning rate": ["train_lr"]}


def test_dvxray_style_run_curves_and_per_class_bars(tmp_path, capsys):
    run = tmp_path / "dvxray" / "CoordAttU_MCBConvex"
    _write_csv(run / "training_log.csv", "epoch,train_loss,val_metric,best_metric,epoch_time,lr",
               [f"{e},{1 / (e + 1):.3f},{0.3 + 0.05 * e:.3f},{0.3 + 0.05 * e:.3f},2.0,{1e-3 / (e + 1):g}"
                for e in range(4)])
    (run / "metrics.json").write_text(json.dumps({"monitor": "mAP", "best": {"mAP": 0.5, "per_class_ap": [0.5] * 15}}))
    assert main([str(run), "--no_overlays"]) == 0  # paper guessed from the path
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / "curves_training_log.png"), str(run / "per_class_ap.png")]
    assert all(_png(Path(p)) for p in printed)


def test_stage_logs_each_get_a_figure_and_missing_run_is_an_error(tmp_path, capsys):
    run = tmp_path / "runs" / "experiment"
    for stage in ("phase1", "phase2"):
        _write_csv(run / stage / "log.csv", "epoch,train_loss,train_lr,val_auc", ["0,0.7,1e-4,0.5", "1,0.6,5e-5,0.6"])
    assert find_logs(run) == [run / "phase1" / "log.csv", run / "phase2" / "log.csv"]
    written = plot_run(run, paper="charm_xray", overlays=False)  # no metrics.json: curves only
    assert written == [run / "curves_phase1_log.png", run / "curves_phase2_log.png"]
    assert all(_png(p) for p in written)
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"plots: error: run folder not found: {tmp_path / 'nope'}"


def test_per_class_without_published_numbers_still_plots(tmp_path):
    run = tmp_path / "xmnet_run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"best": {"acc1": 0.5, "per_class_acc": [0.1, 0.9]},
                                                  "class_names": ["a", "b"]}))
    assert plot_run(run, paper="xmnet", overlays=False) == [run / "per_class_acc.png"]
    assert _png(run / "per_class_acc.png")


def test_common_plots_imports_no_paper_and_overlays_resolve_lazily():
    code = "import sys, common.plots; print([p for p in ('dvxray','charm_xray','cxrlt','dcal','xmnet') if p in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert declared_overlays() == {p: f"{p}.plots:overlays" for p in ("dvxray", "charm_xray", "cxrlt", "dcal", "xmnet")}
    assert callable(overlay_function("charm_xray"))
    assert overlay_function("toy") is None


def test_common_plots_names_no_paper_and_takes_registered_overlays(tmp_path, monkeypatch):
    """common never imports a paper: the papers declare (pyproject entry points) or register their overlays."""
    import common.plots

    source = Path(common.plots.__file__).read_text()
    for paper in ("dvxray", "charm_xray", "cxrlt", "dcal", "xmnet"):
        assert f"{paper}.plots" not in source and f'"{paper}"' not in source, paper
    drawn = []
    monkeypatch.setattr(common.plots, "_REGISTERED", {})
    common.plots.register_overlays("toy", lambda run, *, n_images: drawn.append(n_images) or [])
    run = tmp_path / "run"
    run.mkdir()
    assert plot_run(run, paper="toy", n_images=3) == [] and drawn == [3]


def test_charm_xray_attention_overlay_from_a_tiny_model(tmp_path):
    from charm_xray.models import build_model
    from charm_xray.plots import draw_attention

    torch.manual_seed(0)
    model = build_model("resnet18", 14, bank_size=8).eval()
    out = draw_attention(model, torch.randn(2, 3, 32, 32), tmp_path / "attention_overlays.png", names=["a", "b"])
    assert _png(out)


@pytest.mark.parametrize("paper", ["charm_xray"])
def test_overlays_skip_cleanly_without_checkpoint(tmp_path, paper, capsys):
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    assert overlay_function(paper)(run, n_images=2) == []
    assert "overlays skipped" in capsys.readouterr().err


def test_dvxray_coordatt_overlay_from_a_tiny_model(tmp_path):
    from dvxray.engine_finetune import parse_attention_config
    from dvxray.models.convnextv2 import create_model
    from dvxray.models.convnextv2_dual import ConvNeXtV2Dual
    from dvxray.plots import coordatt_maps, draw_coordatt

    torch.manual_seed(0)
    model = ConvNeXtV2Dual(create_model("convnextv2_atto", num_classes=0), 15, fuse_mode="add", head_type="fpn_pan",
                           fpn_out_channels=32, attention_config=parse_attention_config('{"N3":"coordatt_u"}'))
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    logits, maps = coordatt_maps(model, a, b)
    assert logits.shape == (2, 15) and maps.shape[0] == 2 and maps.dim() == 3 and (maps > 0).all()
    out = draw_coordatt(model, a, b, tmp_path / "coordatt_n3.png", class_names=[f"c{i}" for i in range(15)])
    assert _png(out)
    plain = ConvNeXtV2Dual(create_model("convnextv2_atto", num_classes=0), 15, head_type="fpn_pan",
                           fpn_out_channels=32)
    with pytest.raises(ValueError, match="no CoordAtt-U at attn3"):
        coordatt_maps(plain, a, b)


@pytest.mark.parametrize("head", ["csra_dbcas", "csra"])
def test_cxrlt_csra_overlay_from_a_tiny_model(tmp_path, head):
    from cxrlt.model import ConvNeXtV2CXR
    from cxrlt.plots import csra_maps, draw_csra

    torch.manual_seed(0)
    kw = {"num_heads": 2} if head == "csra" else {}
    model = ConvNeXtV2CXR(5, backbone="convnextv2_atto", drop_path_rate=0.0, head=head, **kw)
    images = torch.randn(2, 3, 64, 64)
    logits, att = csra_maps(model, images)
    assert logits.shape == (2, 5) and att.shape[:2] == (2, 5)
    assert torch.allclose(att.flatten(2).sum(-1), torch.ones(2, 5), atol=1e-5)  # a distribution per class
    assert _png(draw_csra(model, images, tmp_path / "csra.png", class_names=list("abcde")))


@pytest.mark.parametrize(("task", "size"), [("fgvc", (32, 32)), ("reid", (64, 32))])
def test_dcal_rollout_and_glca_selection_overlay(tmp_path, task, size):
    from dcal.models.backbones.timm_wrapper import create_backbone
    from dcal.models.dual_attention_model import DualAttentionModel
    from dcal.plots import draw_rollout, rollout_and_selection

    torch.manual_seed(0)
    model = DualAttentionModel(create_backbone("deit_tiny_patch16_224", img_size=size, patch_size=8, depth=2), 6,
                               task_type=task, top_k_ratio=0.25)
    images = torch.randn(2, 3, *size)
    rollout, mask, scores = rollout_and_selection(model, images)
    gh, gw = size[0] // 8, size[1] // 8
    assert rollout.shape == mask.shape == (2, gh, gw)
    assert mask.flatten(1).sum(1).tolist() == [model.top_k] * 2  # exactly the K GLCA local queries
    # the selected patches are the K highest rollout scores
    top = rollout.flatten(1).topk(model.top_k, dim=1).indices
    assert torch.equal(mask.flatten(1).gather(1, top), torch.ones(2, model.top_k))
    assert (scores is None) == (task == "reid")
    assert _png(draw_rollout(model, images, tmp_path / f"dcal_{task}.png"))


def test_xmnet_attention_and_vein_mask_overlay(tmp_path):
    from xmnet.backboneModels import XMNetModel
    from xmnet.plots import attention_and_mask, draw_xmnet

    torch.manual_seed(0)
    model = XMNetModel("resnet18", 5, attention="xmnet", segmentation=True, unet=True, att_from=4)
    images = torch.randn(2, 3, 64, 64)
    logits, att, mask = attention_and_mask(model, images)
    assert logits.shape == (2, 5) and att.dim() == 3 and mask.dim() == 3
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert _png(draw_xmnet(model, images, tmp_path / "xmnet.png"))
    cls_only = XMNetModel("resnet18", 5, attention="none")
    assert attention_and_mask(cls_only, images)[1:] == (None, None)


def test_dvxray_overlays_from_a_run_folder(tmp_path, monkeypatch, capsys):
    from common.synth.__main__ import main as synth_main
    from dvxray.engine_finetune import build_model_from_args
    from dvxray.main_finetune import get_args_parser

    data = tmp_path / "data"
    synth_main(["dvxray", str(data), "--n", "16", "--seed", "0"])
    monkeypatch.chdir(data)  # list paths are recorded relative to where training ran
    args = vars(get_args_parser().parse_args([]))
    args.update(model="convnextv2_atto", num_classes=15, fuse_mode="add", head_type="fpn_pan", fpn_out_channels=32,
                attention_config='{"N3":"coordatt_u"}', input_size=32, val_list="annotations/DvXray_val.txt",
                classes_file="annotations/classes.txt")
    model, _ = build_model_from_args(args)
    run = tmp_path / "dvxray" / "run"
    run.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "args": args}, run / "checkpoint_best.pth")
    capsys.readouterr()  # the synthesiser's own report
    assert main([str(run), "--n_images", "2"]) == 0  # paper from the path; no CSV or metrics: overlays only
    assert capsys.readouterr().out.split() == [str(run / "coordatt_n3_overlays.png")]
    assert _png(run / "coordatt_n3_overlays.png")
    monkeypatch.chdir(tmp_path)
    assert plot_run(run) == []
    assert "val_list annotations/DvXray_val.txt not found" in capsys.readouterr().err


def test_plot_run_at_end_never_fails_a_training(tmp_path, capsys):
    from common.plots import plot_run_at_end

    assert plot_run_at_end(tmp_path / "gone", "dvxray") == []
    assert "plots: warning: pictures of" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"best": {"per_class_ap_ema": [0.5] * 15}}))
    assert plot_run_at_end(run, "dvxray", overlays=False) == [run / "per_class_ap_ema.png"]
    assert f"plots: wrote {run / 'per_class_ap_ema.png'}" in capsys.readouterr().out


def test_cxrlt_overlays_from_a_run_folder(tmp_path, capsys):
    from common.synth.__main__ import main as synth_main
    from cxrlt.model import ConvNeXtV2CXR

    data = tmp_path / "padchest"
    synth_main(["padchest", str(data), "--n", "12", "--seed", "0"])
    run = tmp_path / "cxrlt" / "stage2"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    model = ConvNeXtV2CXR(30, backbone="convnextv2_atto", drop_path_rate=0.0)
    torch.save({"model": model.state_dict()}, run / "checkpoint_last.pth")
    (run / "args.json").write_text(json.dumps({"data_dir": str(data), "model": "convnextv2_atto", "image_size": 32}))
    capsys.readouterr()
    assert main([str(run), "--n_images", "2"]) == 0
    assert capsys.readouterr().out.split() == [str(run / "csra_overlays.png")]
    assert _png(run / "csra_overlays.png")
