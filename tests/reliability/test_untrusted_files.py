"""Files given where a checkpoint, a YAML config or a CSV is expected: one-line errors naming the cause."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from common.checkpoint import CheckpointError, load_checkpoint, load_weights_file, remove_stale_temp_files
from common.cli import run_main
from common.data.errors import ParseError
from common.data.lists import check_consistent_duplicates, read_csv
from common.safe_yaml import YamlError, load_yaml_file, safe_load

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "the file is empty (0 bytes"),
    (PNG, "it is a PNG image, not a PyTorch checkpoint"),
    (JPEG, "it is a JPEG image, not a PyTorch checkpoint"),
    (b'{"model": 1}', "it is JSON text, not a PyTorch checkpoint"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "Git LFS pointer"),
    (len(b'{"a":{}}').to_bytes(8, "little") + b'{"a":{}}', "it is a safetensors file"),
])
def test_non_checkpoint_files_are_named_by_what_they_are(tmp_path, content, expected):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|empty"):
        load_weights_file(path)


def test_truncated_checkpoint_is_reported_as_truncated(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"the file is truncated or corrupted \(\d+ bytes"):
            load_checkpoint(path)


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load .*arbitrary unpickling"):
        load_checkpoint(path)
    assert not marker.exists()


def test_run_main_refusal_is_one_line_with_exit_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRACEBACK", raising=False)
    (tmp_path / "x.pth").write_bytes(PNG)
    with pytest.raises(SystemExit) as exc:
        run_main(lambda a: load_checkpoint(a.path), argparse.Namespace(path=tmp_path / "x.pth"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot read checkpoint ") and "PNG image" in err


def test_remove_stale_temp_files_only_touches_the_atomic_write_pattern(tmp_path):
    stale = tmp_path / ".checkpoint_best.pth.x1y2_3z4.tmp"
    stale.write_bytes(b"partial")
    others = [tmp_path / "a.tmp", tmp_path / ".a.tmp", tmp_path / "checkpoint_last.pth", tmp_path / ".x.abc.tmp"]
    for p in others:
        p.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert all(p.exists() for p in others)


# ---------------------------------------------------------------- YAML


def test_yaml_duplicate_key_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 1e-3\n  num_epochs: 3\n  learning_rate: 1e-4\n")
    with pytest.raises(YamlError, match=r"c\.yaml:4: invalid YAML: duplicate key 'learning_rate' \(first given at line 2\)"):
        load_yaml_file(path)
    # merge keys may be overridden; nested equal keys in different mappings are fine
    assert safe_load("b: &b {x: 1}\nd:\n  <<: *b\n  x: 2\ne: {x: 3}\n") == {"b": {"x": 1}, "d": {"x": 2}, "e": {"x": 3}}


def test_dcal_config_with_a_duplicate_key_is_refused(tmp_path):
    from dcal.utils.config import ConfigError, load_config

    path = tmp_path / "cub.yaml"
    path.write_text("task_type: fgvc\nseed: 1\ntraining:\n  num_epochs: 2\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"cub\.yaml:5: invalid YAML: duplicate key 'seed' \(first given at line 2\)"):
        load_config(path)


def test_results_registry_with_a_duplicate_key_is_refused(tmp_path):
    from common.results.loader import ResultsError, load_paper

    (tmp_path / "dvxray.yaml").write_text("paper: dvxray\npaper: dvxray\n")
    with pytest.raises(ResultsError, match=r"dvxray\.yaml:2: invalid YAML \(duplicate key 'paper'"):
        load_paper("dvxray", results_dir=tmp_path)


# ---------------------------------------------------------------- CSV


def test_csv_row_with_fewer_fields_than_the_header_names_file_and_line(tmp_path):
    path = tmp_path / "chexpert.csv"
    path.write_text("subject_id,study_id,Atelectasis,Cardiomegaly\n1,10,1.0,0.0\n2,20,1.0\n3,30,,1.0\n")
    with pytest.raises(ParseError, match=r"chexpert\.csv:3: 3 fields, fewer than the 4 columns of the header"):
        read_csv(path, ["subject_id"])


def test_study_listed_twice_with_conflicting_labels_is_an_error(tmp_path):
    path = tmp_path / "chexpert.csv"
    path.write_text("subject_id,study_id,Atelectasis\n1,10,1.0\n2,20,0.0\n1,10,1.0\n1,20,1.0\n")
    frame = read_csv(path, ["study_id"])
    check_consistent_duplicates(frame.iloc[:3], path, ["study_id"], ["Atelectasis"])  # identical repeat: fine
    with pytest.raises(ParseError, match=r"chexpert\.csv:5: study_id 20 is listed again with a different "
                                         r"'Atelectasis' \(1\.0; 0\.0 at line 3\)"):
        check_consistent_duplicates(frame, path, ["study_id"], ["Atelectasis"])


def test_read_mimic_rejects_conflicting_study_rows(tmp_path):
    from common.synth import mimic as synth_mimic
    from cxrlt.data import read_mimic
    from cxrlt.model import MIMIC_CLASSES

    synth_mimic.write(tmp_path, n=12, seed=0)
    labels = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    lines = labels.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    col = header.index(MIMIC_CLASSES[0])
    row[col] = "0.0" if row[col] == "1.0" else "1.0"
    labels.write_text("\n".join([*lines, ",".join(row)]) + "\n")
    with pytest.raises(ParseError, match=rf"chexpert\.csv:{len(lines) + 1}: study_id .* listed again"):
        read_mimic(labels, tmp_path / "mimic-cxr-2.0.0-split.csv", tmp_path, splits=["train"],
                   class_names=MIMIC_CLASSES)
