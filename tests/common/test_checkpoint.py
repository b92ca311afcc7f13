import os
import pickle
from pathlib import Path

import pytest
import torch

from common.checkpoint import (
    CheckpointError,
    atomic_save,
    capture_rng_state,
    export_safetensors,
    load_checkpoint,
    load_weights_file,
    restore_rng_state,
)


class _Payload:
    """Unpickling this would create a file: the loader must never do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "evil": _Payload(marker)}, bad)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refusing to load .*bad\.pth.*arbitrary unpickling"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="refusing"):
        load_weights_file(bad)
    assert not marker.exists()


def test_atomic_save_survives_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_save({"w": torch.ones(3)}, path)

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]  # no temp file left behind


def test_load_weights_file_unwraps_and_reads_safetensors(tmp_path):
    sd = {"a.weight": torch.randn(2, 3), "a.bias": torch.randn(2)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "full.pth")
    got = load_weights_file(tmp_path / "full.pth")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    export_safetensors(sd, tmp_path / "w.safetensors")
    got = load_weights_file(tmp_path / "w.safetensors")
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError, match=r"weights file not found: .*missing\.safetensors"):
        load_weights_file(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"cannot read safetensors file .*junk"):
        load_weights_file(tmp_path / "junk.safetensors")


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    atomic_save({"rng": state}, tmp_path / "r.pth")
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_truncated_checkpoint_gives_one_line_error(tmp_path):
    path = tmp_path / "trunc.pth"
    atomic_save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_checkpoint(path)


def test_pickle_module_error_type_is_what_torch_raises(tmp_path):
    # guard: our refusal relies on torch raising UnpicklingError for disallowed globals
    path = tmp_path / "x.pth"
    torch.save({"p": _Payload(tmp_path / "m")}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    # mkstemp files are private (0600); outputs must be readable like files written with open()
    atomic_save({"w": torch.ones(1)}, tmp_path / "a.pth")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_load_state_dict_strict_one_line_errors():
    from torch import nn

    from common.checkpoint import load_state_dict_strict

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    load_state_dict_strict(model, good, "x.pth")
    bad_shape = dict(good, **{"1.weight": torch.zeros(5, 4)})
    with pytest.raises(CheckpointError, match=r"^--checkpoint x\.pth: .*1 tensors differ in shape.*1\.weight \(5, 4\) vs \(2, 4\)"):
        load_state_dict_strict(model, bad_shape, "--checkpoint x.pth")
    partial = {k: v for k, v in good.items() if k.startswith("0.")}
    with pytest.raises(CheckpointError, match=r"2 missing, e\.g\. \['1\.bias', '1\.weight'\]; 0 unexpected"):
        load_state_dict_strict(model, partial, "x.pth")
    load_state_dict_strict(model, partial, "x.pth", allow_missing=True)
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_state_dict_strict(model, dict(good, extra=torch.zeros(1)), "x.pth", allow_missing=True)


def test_load_state_dict_strict_allows_only_the_named_missing_prefixes():
    from common.checkpoint import CheckpointError, load_state_dict_strict

    model = torch.nn.ModuleDict({"body": torch.nn.Linear(2, 2), "seg_head": torch.nn.Linear(2, 1)})
    head_before = model["seg_head"].weight.clone()
    body_only = {f"body.{k}": torch.full_like(v, 7.0) for k, v in model["body"].state_dict().items()}
    load_state_dict_strict(model, body_only, "--model_path cls.pth", allow_missing=("seg_head.",))
    assert torch.equal(model["body"].weight, torch.full((2, 2), 7.0))
    assert torch.equal(model["seg_head"].weight, head_before)  # absent keys keep their values
    no_bias = {k: v for k, v in body_only.items() if k != "body.bias"}
    with pytest.raises(CheckpointError, match=r"^--model_path cls.pth: weights do not fit the model \(1 missing, "
                                              r"e.g. \['body.bias'\]"):
        load_state_dict_strict(model, no_bias, "--model_path cls.pth", allow_missing=("seg_head.",))
