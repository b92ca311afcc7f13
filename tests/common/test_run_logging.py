"""common.run.RunDir logging: a run folder adds its own log file handler and keeps the caller's (issue 17 §6)."""

import logging

import torch
from torch import nn
from torch.utils.data import TensorDataset

from charm_xray.engine_charm import CharmTask, StageSettings, build_fastai_adam, fit_one_cycle
from common.dist import DistContext
from common.engine import build_loader
from common.run import RunDir, setup_logging

log = logging.getLogger("tests.run_logging")


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []


def test_nested_run_dir_keeps_the_callers_log_and_removes_only_its_own(tmp_path):
    setup_logging(tmp_path / "caller.txt")
    outer = RunDir(tmp_path / "exp", None)
    log.info("before the stage")
    with RunDir(tmp_path / "exp" / "stage", None):
        log.info("inside the stage")
    log.info("after the stage")
    outer.close()
    log.info("after the experiment")
    caller = "\n".join(_lines(tmp_path / "caller.txt"))
    exp = "\n".join(_lines(tmp_path / "exp" / "log.txt"))
    stage = "\n".join(_lines(tmp_path / "exp" / "stage" / "log.txt"))
    for line in ("before the stage", "inside the stage", "after the stage", "after the experiment"):
        assert line in caller
    assert "inside the stage" in exp and "after the stage" in exp and "after the experiment" not in exp
    assert "inside the stage" in stage and "before the stage" not in stage and "after the stage" not in stage
    # a run folder outside the open one (the next stage, the next run) closes it: no line in two siblings
    a = RunDir(tmp_path / "a", None)
    RunDir(tmp_path / "b", None)
    log.info("in b")
    assert "in b" not in "\n".join(_lines(tmp_path / "a" / "log.txt")) and a._handler is None
    setup_logging()


def test_charm_stage_leaves_the_experiment_log_in_place(tmp_path):
    """A line logged after a charm_xray stage (fit_one_cycle opens the stage's RunDir) still reaches the
    experiment's log, without setting up logging again."""
    ctx = DistContext()
    exp = RunDir(tmp_path / "runs" / "experiment", None, ctx)
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    y = (x[:, :3] > 0).float()
    loader = build_loader(TensorDataset(x, y), 16, train=True, ctx=ctx)
    valid = build_loader(TensorDataset(x, y), 16, train=False, ctx=ctx)
    model = nn.Module()
    model.backbone, model.classifier = nn.Linear(6, 8), nn.Linear(8, 3)
    model.forward = lambda inputs: model.classifier(torch.relu(model.backbone(inputs)))
    fit_one_cycle(exp.path / "phase1", CharmTask(model, nn.BCEWithLogitsLoss()), build_fastai_adam(model, 1e-2),
                  loader, valid, epochs=1, lr=1e-2, ctx=ctx,
                  settings=StageSettings(patience=None, class_names=["a", "b", "c"], progress=False))
    log.info("a line after the stage")
    text = (exp.path / "log.txt").read_text()
    assert "a line after the stage" in text
    assert "stage phase1: fit_one_cycle" in text  # the stage's own lines reach the experiment's log too
    assert "a line after the stage" not in (exp.path / "phase1" / "log.txt").read_text()
    exp.close()
    setup_logging()
