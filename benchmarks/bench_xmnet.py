"""Section 6: xmnet feature extraction img/s and one XGBoost + Optuna trial on the real feature width.

Guarded: xmnet is being written concurrently; an import or API failure is reported as "not available".
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from benchmarks.context import Ctx
from benchmarks.core import Row, forward_flops

SECTION = "xmnet"


def run(ctx: Ctx) -> None:
    try:
        from xmnet.backboneModels import XMNetModel
        from xmnet.xgb_stage import FeatureSet, run_study
    except Exception as exc:  # noqa: BLE001 - any failure of the module under construction
        ctx.add(Row(SECTION, "xmnet", note=f"not available: {type(exc).__name__}: {exc}"))
        return
    try:
        _run(ctx, XMNetModel, FeatureSet, run_study)
    except Exception as exc:  # noqa: BLE001
        ctx.add(Row(SECTION, "xmnet", note=f"not available: {type(exc).__name__}: {exc}"))


def _run(ctx: Ctx, XMNetModel, FeatureSet, run_study) -> None:  # noqa: N803 - classes passed in
    dev = ctx.device
    backbone, b, size, n_train, n_test, classes = (("resnet18", 2, 64, 60, 20, 4) if ctx.quick
                                                   else ("densenet161", 4, 224, 600, 200, 10))
    torch.manual_seed(0)
    model = XMNetModel(backbone, classes, attention="xmnet").to(dev).eval()
    x = torch.randn(b, 3, size, size, device=dev)
    with torch.no_grad():
        fl = forward_flops(lambda: model(x))
        ctx.measure(SECTION, f"feature extraction {backbone} {size} px", lambda: model(x)["features"], items=b,
                    flops=fl)
        width = int(model(x)["features"].shape[1])
    rng = np.random.default_rng(0)

    def feats(n: int):
        y = rng.integers(0, classes, n)
        xs = rng.normal(size=(n, width)).astype(np.float32) + y[:, None] * 0.05
        return FeatureSet(xs, y.astype(np.int64))

    train, val, test = feats(n_train), feats(n_test), feats(n_test)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_study(train, test, num_class=classes, output_dir=tmp, eval_on="val", val=val, n_trials=1,
                  n_estimators=100, nthread=torch.get_num_threads())
        dt = time.perf_counter() - t0
    ctx.add(Row(SECTION, f"XGBoost+Optuna study, 1 trial (D={width}, N={n_train}, {classes} classes)", dt, dt, dt, 1,
                note="run_study(n_trials=1): one trial + refit + save; synthetic features of the real width"))
