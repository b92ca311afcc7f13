"""Generated bad input for every list / CSV / YAML / folder-name parser: each case ends in success or in
one one-line error of the project's own types (never another exception type, never a traceback from
deep inside). At least 300 generated cases per parser; pure parsing, no model."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data.errors import DataError
from common.data.lists import (
    parse_label_vector,
    parse_multilabel_string,
    read_csv,
    read_image_label_list,
    read_name_list,
)
from common.safe_yaml import YamlError, load_yaml_file
from dcal.utils.config import ConfigError

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
ONE_LINE_ERRORS = (DataError, ConfigError, YamlError)

# pieces that reach the parsers' interesting branches more often than uniform text
_TOKENS = ["0", "1", "2", "-1", "1.0", "0.5", "", " ", "  ", "\t", ",", ",,", "|", "\n", "\r\n", "\r", '"', "'",
           "a.png", "b.jpg", "img_001.png", "No Finding", "Atelectasis", "Effusion", "nan", "1e3", "é", "²", "٣",
           "\ufeff", "\x00", "\\", "#", ":", "- ", "{", "}", "[", "]", "&a", "*a", "<<", "!!python/object:os.system"]
_texts = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join),
    st.text(max_size=200),
)
_raw = st.one_of(_texts.map(lambda t: t.encode("utf-8")), st.binary(max_size=200))


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="fuzz_"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _outcome(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a project error must be one non-empty line. Any other exception fails the test."""
    try:
        return fn()
    except ONE_LINE_ERRORS as exc:
        text = str(exc)
        assert text and "\n" not in text and "\r" not in text, repr(text)
        return exc


def _write(scratch: Path, name: str, data: bytes) -> Path:
    path = scratch / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- common.data.lists


@FUZZ
@given(text=_texts, n=st.integers(1, 6))
def test_fuzz_parse_label_vector(text, n):
    out = _outcome(lambda: parse_label_vector(text, n, source="f.txt", line=3))
    if isinstance(out, tuple):
        assert len(out) == n and set(out) <= {0, 1}
    else:
        assert str(out).startswith("f.txt:3: ")


@FUZZ
@given(text=_texts)
def test_fuzz_parse_multilabel_string(text):
    names = ("Atelectasis", "Effusion", "Mass")
    out = _outcome(lambda: parse_multilabel_string(text, names, source="Data_Entry.csv", line=9))
    if isinstance(out, tuple):
        assert len(out) == 3 and set(out) <= {0, 1}


@FUZZ
@given(data=_raw, num_paths=st.integers(1, 2), num_classes=st.integers(1, 4))
def test_fuzz_read_image_label_list(scratch, data, num_paths, num_classes):
    path = _write(scratch, "list.txt", data)
    out = _outcome(lambda: read_image_label_list(path, num_paths=num_paths, num_classes=num_classes))
    if isinstance(out, list):
        assert out and all(len(r.paths) == num_paths and len(r.labels) == num_classes for r in out)
    else:
        assert str(path) in str(out)


@FUZZ
@given(data=_raw)
def test_fuzz_read_name_list(scratch, data):
    path = _write(scratch, "classes.txt", data)
    out = _outcome(lambda: read_name_list(path))
    if isinstance(out, list):
        assert out and len(set(out)) == len(out)


@FUZZ
@given(data=_raw)
def test_fuzz_read_csv(scratch, data):
    path = _write(scratch, "labels.csv", b"subject_id,study_id,Atelectasis,Effusion\n" + data)
    out = _outcome(lambda: read_csv(path, ["subject_id", "study_id"],
                                    dtype={"subject_id": int, "study_id": int, "Atelectasis": float}))
    if not isinstance(out, Exception):
        assert list(out.columns) == ["subject_id", "study_id", "Atelectasis", "Effusion"]


@FUZZ
@given(data=_raw)
def test_fuzz_read_mimic(scratch, data):
    from cxrlt.data import read_mimic

    labels = _write(scratch, "chexpert.csv", b"subject_id,study_id,Atelectasis,Effusion\n" + data)
    split = _write(scratch, "split.csv", b"dicom_id,study_id,subject_id,split\nd1,10,1,train\nd2,20,2,train\n")
    _outcome(lambda: read_mimic(labels, split, scratch, splits=["train"], class_names=["Atelectasis", "Effusion"]))


# ---------------------------------------------------------------- YAML configs


@FUZZ
@given(data=_raw)
def test_fuzz_yaml_loader(scratch, data):
    _outcome(lambda: load_yaml_file(_write(scratch, "any.yaml", data)))


_YAML_KEYS = ["task_type", "seed", "device", "model", "data", "training", "num_epochs", "learning_rate", "batch_size",
              "image_size", "img_size", "top_k_ratio", "bogus"]
_YAML_VALUES = ["fgvc", "reid", "1", "-3", "1e-4", "[224, 224]", "[1]", "true", "null", "~", "{}", "[]", "'x'", "0.5",
                ".inf", "!!binary aGk=", "&a 1", "*a", "!!python/name:os.system"]
_yaml_doc = st.lists(
    st.tuples(st.sampled_from(["", "  ", "    "]), st.sampled_from(_YAML_KEYS), st.sampled_from(_YAML_VALUES + [""])),
    max_size=12,
).map(lambda rows: "".join(f"{ind}{k}: {v}\n" for ind, k, v in rows))


@FUZZ
@given(text=st.one_of(_yaml_doc, _texts))
def test_fuzz_dcal_config(scratch, text):
    from dcal.utils.config import load_config

    path = _write(scratch, "cfg.yaml", text.encode("utf-8"))
    out = _outcome(lambda: load_config(path, ["device=cpu"]))
    if isinstance(out, Exception):
        assert str(path) in str(out)


@FUZZ
@given(opt=_texts)
def test_fuzz_dcal_opts(opt):
    from dcal.utils.config import ExperimentConfig, apply_override

    _outcome(lambda: apply_override(ExperimentConfig(), opt))


# ---------------------------------------------------------------- folder-name parsers (VeRi, Market-1501, CUB)

_name_chars = st.sampled_from(list("0123456789_-cCsx.a") + ["jpg", ".jpg", "c1", "0001", "-1", "²", "é", " "])
_file_names = st.lists(_name_chars, min_size=1, max_size=16).map("".join).filter(
    lambda n: n not in (".", "..") and len(n.encode()) < 200)


@FUZZ
@given(names=st.lists(_file_names, max_size=8, unique=True))
def test_fuzz_market1501_folder_names(scratch, names):
    from dcal.datasets.reid_datasets import _read_market_dir

    folder = scratch / "bounding_box_train"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for n in names:
        (folder / n).write_bytes(b"")
    out = _outcome(lambda: _read_market_dir(folder, True))
    if isinstance(out, list):
        assert out and sorted({r.label for r in out}) == list(range(len({r.label for r in out})))


@FUZZ
@given(data=_raw, names=_raw)
def test_fuzz_veri776_label_xml_and_name_list(scratch, data, names):
    from dcal.datasets.reid_datasets import read_veri776

    root = scratch / "VeRi"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    xml = (b'<?xml version="1.0" encoding="gb2312"?>\n<TrainingImages><Items>'
           b'<Item imageName="0001_c001_1.jpg" vehicleID="0001" cameraID="c001" />' + data + b"</Items></TrainingImages>")
    for name in ("train_label.xml", "test_label.xml"):
        (root / name).write_bytes(xml)
    (root / "name_train.txt").write_bytes(b"0001_c001_1.jpg\n" + names)
    (root / "name_query.txt").write_bytes(names)
    (root / "name_test.txt").write_bytes(b"0001_c001_1.jpg\n")
    _outcome(lambda: read_veri776(scratch))


_cub_line = st.tuples(st.sampled_from(["1", "2", "3", "02", "x", "", "-1", "²", "1.5"]),
                      st.sampled_from(["", " ", "  "]),
                      st.sampled_from(["0", "1", "2", "001.Black_footed", "a/b.jpg", "", "é", "1 2"])).map("".join)
_cub_file = st.lists(_cub_line, max_size=5).map(lambda lines: "\n".join(lines).encode())


@FUZZ
@given(images=_cub_file, labels=_cub_file, split=_cub_file, classes=_cub_file)
def test_fuzz_cub200_tables(scratch, images, labels, split, classes):
    from dcal.datasets.fgvc_datasets import read_cub200

    root = scratch / "CUB_200_2011"
    root.mkdir(exist_ok=True)
    for name, data in (("images.txt", images), ("image_class_labels.txt", labels),
                       ("train_test_split.txt", split), ("classes.txt", classes)):
        (root / name).write_bytes(data)
    out = _outcome(lambda: read_cub200(scratch))
    if isinstance(out, tuple):
        train, test, class_names = out
        assert train and test and all(0 <= r.label < len(class_names) for r in train + test)
