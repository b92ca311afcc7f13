"""Original behaviours checked on a short run: the ``conditional_2`` hard set follows validation AP
(dvxray.md §2.10) and the summary CSV names the metric as the original does (§12.2, §13)."""

import csv
import json

import pytest
import torch

from dvxray import main_finetune
from dvxray.datasets import HARD_CLASSES
from tests.dvxray.helpers import tiny_args


@pytest.fixture(scope="module")
def conditional_2_run(dvxray_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cond2") / "run"
    parser = main_finetune.argparse.ArgumentParser(parents=[main_finetune.get_args_parser()])
    args = parser.parse_args(tiny_args(dvxray_data, out, "--epochs", "1", "--aug_mode", "conditional_2"))
    main_finetune.main(args)  # teacher mode on (the default): validation of the EMA copy
    return out


def test_conditional_2_hard_set_becomes_the_three_lowest_ap_classes_after_a_validation(conditional_2_run):
    metrics = json.loads((conditional_2_run / "metrics.json").read_text())
    ap = torch.tensor(metrics["final"]["per_class_ap_ema"])
    expected = sorted(torch.argsort(ap, stable=True)[:3].tolist())
    ckpt = torch.load(conditional_2_run / "checkpoint_last.pth", weights_only=True)
    hard = [v["hard"] for v in ckpt["extra"].values() if isinstance(v, dict) and "hard" in v]
    assert hard == [expected]
    names = metrics["class_names"]
    assert set(expected) != {names.index(n) for n in HARD_CLASSES}  # no longer the initial 4-class set


def test_summary_csv_names_the_metric_map_with_teacher_mode(conditional_2_run):
    rows = list(csv.DictReader(open(conditional_2_run / "experiments_summary_test_2.csv")))
    assert rows[-1]["best_metric_name"] == "mAP"  # the original's name, although the EMA copy was validated
    metrics = json.loads((conditional_2_run / "metrics.json").read_text())
    assert float(rows[-1]["best_metric_value"]) == pytest.approx(metrics["best"]["mAP_ema"], abs=1e-6)
