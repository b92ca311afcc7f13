"""Uncertainty weighting, triplet loss and the re-ID metrics against reference formulas / loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcal.models.backbones.timm_wrapper import create_backbone
from dcal.models.dual_attention_model import DualAttentionModel
from dcal.training.trainer import DCALTask
from dcal.utils.losses import TripletLoss, UncertaintyWeightedLoss
from dcal.utils.metrics import fgvc_metrics, reid_metrics


def test_uncertainty_weighting_formula():
    uw = UncertaintyWeightedLoss(("sa", "glca", "pwca"))
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    losses = {"sa": torch.tensor(2.0), "glca": torch.tensor(3.0), "pwca": torch.tensor(1.5)}
    ref = 0.5 * sum(math.exp(-w) * v + w for w, v in zip([0.5, -1.0, 2.0], [2.0, 3.0, 1.5], strict=True))
    assert float(uw(losses).detach()) == pytest.approx(ref, rel=1e-6)
    # PWCA absent: only the present tasks count
    ref2 = 0.5 * (math.exp(-0.5) * 2.0 + 0.5 + math.exp(1.0) * 3.0 - 1.0)
    assert float(uw({"sa": losses["sa"], "glca": losses["glca"]}).detach()) == pytest.approx(ref2, rel=1e-6)
    with pytest.raises(KeyError, match="unknown task"):
        uw({"other": torch.tensor(1.0)})
    fresh = UncertaintyWeightedLoss(("sa", "glca"))
    assert fresh.weights() == {"sa": 0.5, "glca": 0.5}  # 1/2 exp(0) at initialisation


def test_uncertainty_weights_get_gradients_and_change():
    torch.manual_seed(0)
    vit = create_backbone("deit_tiny_patch16_224", img_size=(32, 32), patch_size=8, depth=1)
    task = DCALTask(DualAttentionModel(vit, 3))
    opt = torch.optim.Adam(task.parameters(), lr=0.05)
    before = task.uncertainty.log_vars.detach().clone()
    out = task((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])))
    out["loss"].backward()
    grad = task.uncertainty.log_vars.grad
    assert grad is not None and torch.all(grad != 0)
    # d/dw [1/2 (e^-w L + w)] at w = 0 is 1/2 (1 - L)
    for i, name in enumerate(("sa", "glca", "pwca")):
        assert float(grad[i]) == pytest.approx(0.5 * (1 - float(out[f"{name}_loss"])), rel=1e-4)
    opt.step()
    assert not torch.equal(before, task.uncertainty.log_vars.detach())
    frozen = DCALTask(DualAttentionModel(vit, 3), uncertainty_weighting=False)
    assert not frozen.uncertainty.log_vars.requires_grad


def test_triplet_batch_hard_matches_loop():
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(8, 5, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    got = float(TripletLoss(0.3)(feat, labels))
    losses = []
    for i in range(8):
        d = [float(torch.linalg.norm(feat[i] - feat[j])) for j in range(8)]
        pos = max(d[j] for j in range(8) if labels[j] == labels[i] and j != i)
        neg = min(d[j] for j in range(8) if labels[j] != labels[i])
        losses.append(max(0.0, pos - neg + 0.3))
    assert got == pytest.approx(np.mean(losses), rel=1e-4, abs=1e-5)


def _loop_reference(dist, qp, gp, qc, gc):
    """Market-1501 rule by explicit loops: drop same id AND same camera; skip queries without match."""
    aps, first_hits = [], []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        kept = [j for j in order if not (gp[j] == qp[i] and gc[j] == qc[i])]
        matches = [gp[j] == qp[i] for j in kept]
        if not any(matches):
            continue
        hits, precisions = 0, []
        for rank, m in enumerate(matches, start=1):
            if m:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
        first_hits.append(matches.index(True))
    cmc = lambda r: np.mean([h < r for h in first_hits])  # noqa: E731
    return np.mean(aps), cmc(1), cmc(5), len(first_hits)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_reid_metrics_match_loop_reference_with_same_camera_rule(metric):
    rng = np.random.default_rng(0)
    nq, ng = 12, 40
    qp, gp = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    # a query whose only match shares its camera: it must be skipped, not counted as a miss
    gp[gp == 5] = 4
    qp[0], qc[0] = 5, 1
    gp[0], gc[0] = 5, 1
    qf, gf = rng.normal(size=(nq, 8)), rng.normal(size=(ng, 8))
    outputs = {"feat": torch.tensor(np.concatenate([qf, gf]), dtype=torch.float32),
               "pid": torch.tensor(np.concatenate([qp, gp])), "camid": torch.tensor(np.concatenate([qc, gc])),
               "is_query": torch.tensor([1] * nq + [0] * ng)}
    got = reid_metrics(outputs, metric)
    if metric == "euclidean":
        dist = np.linalg.norm(qf[:, None] - gf[None], axis=2)
    else:
        qn, gn = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
        dist = 1 - qn @ gn.T
    m_ap, r1, r5, valid = _loop_reference(dist, qp, gp, qc, gc)
    assert valid == got["num_valid_queries"] < nq
    assert got["mAP"] == pytest.approx(m_ap, abs=1e-6)
    assert got["rank1"] == pytest.approx(r1, abs=1e-6)  # divided by valid queries, not all queries
    assert got["rank5"] == pytest.approx(r5, abs=1e-6)
    assert got["num_query"] == nq and got["num_gallery"] == ng and got["distance_metric"] == metric


def test_fgvc_metrics_combined_and_per_class():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    logits_sa = torch.log(probs)
    target = torch.tensor([0, 1, 1, 2])
    out = fgvc_metrics({"probs": probs, "logits_sa": logits_sa, "logits_glca": logits_sa, "target": target})
    assert out["acc1"] == pytest.approx(0.75)
    assert out["per_class_acc"] == [1.0, 0.5, 1.0]
    assert out["min_class_acc"] == 0.5 and out["max_class_acc"] == 1.0
    assert out["mean_class_acc"] == pytest.approx(2.5 / 3)
