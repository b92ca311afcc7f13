"""DCAL's plug-in for ``common.predict`` / ``common.explain`` / ``common.export``: a ``train_fgvc.py`` /
``train_reid.py`` checkpoint (or a state dict with the run's ``args.json`` beside it), the model rebuilt
from the recorded config in eval mode, i.e. the inference path: SA + GLCA, no PWCA (PWCA runs only in
training). FGVC: the class probabilities are the SA and GLCA softmaxes averaged (the paper adds them;
halved here so a row sums to 1), the top-5 classes are listed. Re-ID: the embedding (BNNeck features of
SA and GLCA, concatenated) ranks a gallery. Preprocessing as the evaluation transforms: FGVC resize to
``data.resize_size`` then the centre ``data.image_size`` window, re-ID resize to ``data.image_size``;
the backbone's normalisation. ``--explain``: the attention rollout and the GLCA top-R patches
(``dcal.plots.draw_rollout``), or ranked re-ID results."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.checkpoint import CheckpointError, load_state_dict_strict
from common.predict import LoadedModel, PredictAdapter, read_checkpoint_any, register_adapter
from common.preprocessing import resolve_preprocessing


def preprocessing_from_config(cfg: Any, mean: Sequence[float], std: Sequence[float],
                              class_names: Sequence[str] | None) -> dict[str, Any]:
    """The evaluation transform of ``cfg`` (``build_fgvc_transform`` / ``build_reid_transform``)."""
    from dcal.datasets.fgvc_datasets import default_resize

    size = [int(cfg.data.image_size[0]), int(cfg.data.image_size[1])]
    d: dict[str, Any] = {"paper": "dcal", "input_size": size, "mean": list(mean), "std": list(std), "channels": "rgb",
                         "high_bit_depth": "min_max", "task_type": cfg.task_type}
    if cfg.task_type == "fgvc":
        resize = cfg.data.resize_size if cfg.data.resize_size is not None else default_resize(size)
        d.update(resize="resize_center_crop", resize_to=[int(resize[0]), int(resize[1])],
                 class_names=list(class_names) if class_names else None)
    else:
        # re-ID ranks by embedding; the training identities stand in as "classes"
        d.update(resize="resize", class_names=[f"id_{i}" for i in range(cfg.model.num_classes)])
    return d


def _class_names(cfg: Any) -> list[str] | None:
    """Older FGVC checkpoints: the class names of the recorded data set when it is still on disk."""
    from dcal.datasets.fgvc_datasets import read_fgvc

    if Path(cfg.data.data_root).is_dir():
        try:
            return list(read_fgvc(cfg.data.dataset_name, cfg.data.data_root)[2])
        except ValueError:
            return None
    return None


class _ExportDCAL(nn.Module):
    """The inference path as one tensor: FGVC class probabilities [B, K], re-ID embedding [B, D]."""

    def __init__(self, model: nn.Module, branches: int):
        super().__init__()
        self.model = model
        self.scale = 1.0 / branches if model.task_type == "fgvc" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["embedding"] * self.scale


class DcalAdapter(PredictAdapter):
    paper = "dcal"
    task = "multiclass"

    def recognises(self, ckpt: Mapping[str, Any]) -> bool:
        args = ckpt.get("args")
        return isinstance(args, Mapping) and isinstance(args.get("config"), Mapping) and "top_k_ratio" in \
            args["config"].get("model", {})

    def load(self, path: Path, *, device: torch.device, fallback: Mapping[str, Any] | None = None) -> LoadedModel:
        from dcal.plots import _config_from_record
        from dcal.training.trainer import build_model, norm_stats

        ckpt = read_checkpoint_any(path)
        recorded = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else None
        if recorded is None and (path.parent / "args.json").is_file():
            recorded = json.loads((path.parent / "args.json").read_text(encoding="utf-8"))
        if not isinstance(recorded, Mapping) or not isinstance(recorded.get("config"), Mapping):
            raise CheckpointError(f"--checkpoint {path}: no DCAL training config recorded (in the file or an "
                                  "args.json beside it): cannot rebuild the model or its preprocessing")
        cfg = _config_from_record(dict(recorded["config"]), f"--checkpoint {path}")
        model = build_model(cfg, load_pretrained=False)
        state = ckpt.get("model") if isinstance(ckpt.get("model"), Mapping) else ckpt
        load_state_dict_strict(model, {k: v for k, v in state.items() if isinstance(v, torch.Tensor)},
                               f"--checkpoint {path}")
        stored = ckpt.get("preprocessing") if isinstance(ckpt.get("preprocessing"), Mapping) else None
        mean, std = norm_stats(model)
        derived = preprocessing_from_config(cfg, mean, std, None if stored else _class_names(cfg))
        prep = resolve_preprocessing(stored, derived, f"--checkpoint {path}", fallback=fallback)
        branches = 2 if model.glca is not None else 1
        return LoadedModel(model.to(device).eval(), prep, path, path.parent,
                           {"thresholds": ckpt["thresholds"]} if "thresholds" in ckpt else {},
                           {"args": dict(recorded), "task_type": cfg.task_type, "branches": branches,
                            "top_k_ratio": cfg.model.top_k_ratio})

    def forward(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        if (model.task_type == "reid") != (self.task == "reid"):
            raise ValueError("--checkpoint is a DCAL re-ID model: rank a gallery with --query and --gallery"
                             if model.task_type == "reid" else
                             "--checkpoint is a DCAL FGVC model: classify images with --images")
        out = model(inputs[0])
        return {"embedding": out["embedding"]} if model.task_type == "reid" else {"probs_sum": out["embedding"]}

    def scores(self, out: Mapping[str, torch.Tensor], loaded: LoadedModel) -> torch.Tensor:
        return out["probs_sum"].float() / loaded.info["branches"]

    def explain(self, loaded: LoadedModel, inputs: Sequence[torch.Tensor], names: Sequence[str],
                out_paths: Sequence[Path], *, top_k: int = 3) -> list[Path]:
        from common.explain import denormalize
        from dcal.plots import draw_rollout

        prep = loaded.preprocessing
        written = []
        for b, out in enumerate(out_paths):
            x = inputs[0][b:b + 1]
            written.append(draw_rollout(loaded.model, x, out, names=[names[b]], class_names=list(prep.class_names),
                                        display=[denormalize(x[0], prep.mean, prep.std)],
                                        top_k_ratio=loaded.info["top_k_ratio"], title=f"DCAL {Path(names[b]).name}"))
        return written

    def export_module(self, model: nn.Module) -> nn.Module:
        return _ExportDCAL(model, 2 if model.glca is not None else 1)

    def export_output_names(self, model: nn.Module) -> list[str]:
        return ["probabilities"] if model.task_type == "fgvc" else ["embedding"]


class DcalReidAdapter(DcalAdapter):
    """The same model, ranking a gallery (``predict.py --query --gallery``)."""

    paper = "dcal_reid"
    task = "reid"

    def identity(self, path: Path) -> tuple[int, int] | None:
        from dcal.datasets.reid_datasets import _NAME

        m = _NAME.match(path.name)
        return None if m is None else (int(m.group(1)), int(m.group(2)))


ADAPTER = register_adapter(DcalAdapter())
REID_ADAPTER = register_adapter(DcalReidAdapter())
