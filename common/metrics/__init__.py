"""Evaluation metrics shared by the five papers.

- :mod:`common.metrics.multilabel`: non-interpolated AP / mAP, ROC-AUC, F1, element accuracy.
- :mod:`common.metrics.classification`: top-k and per-class accuracy (single-label).
- :mod:`common.metrics.rank`: re-ID distance matrix, CMC, mAP and mINP (Market-1501 rule).

All rates are fractions in [0, 1]; inputs may be torch tensors or numpy arrays.
"""

from common.metrics.classification import per_class_accuracy, topk_accuracy
from common.metrics.multilabel import (
    average_precision,
    classes_without_positives,
    f1_scores,
    macro_auc,
    mean_average_precision,
    multilabel_metrics,
    roc_auc_per_class,
)
from common.metrics.rank import compute_distance_matrix, evaluate_rank

__all__ = [
    "average_precision",
    "classes_without_positives",
    "compute_distance_matrix",
    "evaluate_rank",
    "f1_scores",
    "macro_auc",
    "mean_average_precision",
    "multilabel_metrics",
    "per_class_accuracy",
    "roc_auc_per_class",
    "topk_accuracy",
]
