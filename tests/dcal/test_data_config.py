"""Data readers on the native layouts (synthetic) and config validation."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from common.data.errors import DataError, ParseError
from common.data.samplers import RandomIdentitySampler
from dcal.datasets.fgvc_datasets import read_cub200
from dcal.datasets.reid_datasets import read_reid, read_veri_xml
from dcal.utils.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "dcal" / "configs").glob("*/*.yaml"))


def test_veri_xml_gb2312_and_camera_ids(veri_root):
    raw = (veri_root / "train_label.xml").read_bytes()
    assert raw.startswith(b'<?xml version="1.0" encoding="gb2312"?>')
    with pytest.raises(ValueError):  # what the replication hit: expat refuses multi-byte encodings
        ET.parse(veri_root / "train_label.xml")
    labels = read_veri_xml(veri_root / "train_label.xml")
    name = next(iter(labels))
    assert name.endswith("_0.jpg") and name[4:6] == "_c"
    pid, cam = labels[name]
    assert pid == int(name[:4]) and cam == int(name[6:9]) and 1 <= cam <= 20


def test_veri_xml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_bytes('<?xml version="1.0" encoding="gb2312"?>\n<!-- 车辆 -->\n<Items>\n'
                  '<Item imageName="0001_c001_00000001_0.jpg" vehicleID="0001" cameraID="cam1" />\n</Items>\n'
                  .encode("gb2312"))
    with pytest.raises(ParseError, match=r"bad.xml:4: unreadable vehicleID '0001' or cameraID 'cam1'"):
        read_veri_xml(p)


def test_veri_reader_relabels_and_checks_names(veri_root, tmp_path):
    train, query, gallery = read_reid("veri776", veri_root)
    assert sorted({r.label for r in train}) == list(range(len({r.pid for r in train})))
    assert {r.pid for r in train}.isdisjoint({r.pid for r in gallery})
    assert {r.name for r in query} <= {r.name for r in gallery}  # VeRi queries are also in image_test
    assert all(Path(r.path).is_file() for r in train + query + gallery)
    # an XML entry disagreeing with the file name is an error naming the list line
    import shutil
    bad = tmp_path / "VeRi"
    shutil.copytree(veri_root, bad)
    first = (bad / "name_train.txt").read_text().splitlines()[0]
    other = first.replace("_c", "_c9", 1)[:-4] + ".jpg"
    text = (bad / "train_label.xml").read_bytes().decode("gb2312").replace(first, other, 1)
    (bad / "train_label.xml").write_bytes(text.encode("gb2312"))
    with pytest.raises(ParseError, match=r"name_train.txt:1: .* has no Item"):
        read_reid("veri776", tmp_path)  # data_root may be the parent of VeRi/
    # same name, but the XML's vehicleID disagrees with the file name's
    vid = first[:4]
    text = (veri_root / "train_label.xml").read_bytes().decode("gb2312")
    text = text.replace(f'imageName="{first}" vehicleID="{vid}"', f'imageName="{first}" vehicleID="0999"', 1)
    (bad / "train_label.xml").write_bytes(text.encode("gb2312"))
    with pytest.raises(ParseError, match=rf"name_train.txt:1: {first}: file name says id {int(vid)} .* says id 999"):
        read_reid("veri776", tmp_path)


def test_market_junk_and_distractors(market_root):
    train, query, gallery = read_reid("market1501", market_root)
    names = [p.name for p in (market_root / "bounding_box_test").iterdir()]
    assert any(n.startswith("-1_") for n in names) and any(n.startswith("0000_") for n in names)
    assert all(r.pid != -1 for r in train + query + gallery)  # junk ignored
    assert any(r.pid == 0 for r in gallery)  # distractors kept in the gallery
    assert {r.camid for r in gallery} <= set(range(1, 7))
    assert sorted({r.label for r in train}) == list(range(len({r.pid for r in train})))


def test_cub_reader_round_trip_and_errors(cub_root, tmp_path):
    train, test, names = read_cub200(cub_root)
    assert len(names) == 4 and names[0] == "001.Black_footed_Albatross"
    assert len(train) == len(test) == 20 and {r.label for r in train} == set(range(4))
    assert (cub_root / "bounding_boxes.txt").is_file()
    import shutil
    bad = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_root, bad)
    lines = (bad / "train_test_split.txt").read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 7"
    (bad / "train_test_split.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ParseError, match=r"train_test_split.txt:3: expected 1 \(train\) or 0 \(test\)"):
        read_cub200(tmp_path)
    with pytest.raises(DataError, match="no images.txt"):
        read_cub200(tmp_path / "nowhere")


def test_pk_sampler_batches(veri_root):
    train, _, _ = read_reid("veri776", veri_root)
    sampler = RandomIdentitySampler([r.label for r in train], 8, 4, seed=0)
    batches = list(sampler)
    assert batches
    for b in batches:
        counts = torch.bincount(torch.tensor([train[i].label for i in b]))
        assert sorted(c for c in counts.tolist() if c) == [4, 4]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg.training.min_lr, float) and cfg.training.min_lr == 1e-6
    assert cfg.model.num_sa_blocks == 12 and cfg.model.num_glca_blocks == 1 and cfg.model.num_pwca_blocks == 12
    if cfg.task_type == "fgvc":
        assert cfg.data.image_size == [448, 448] and cfg.model.top_k_ratio == 0.1 and cfg.training.optimizer == "adam"
    else:
        assert cfg.model.top_k_ratio == 0.3 and cfg.training.optimizer == "sgd" and cfg.training.num_epochs == 120
        assert cfg.data.image_size == ([256, 256] if path.stem == "veri776" else [256, 128])


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_config_unknown_and_mistyped_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'training.learnig_rate'"):
        load_config(_write(tmp_path, "training:\n  learnig_rate: 0.1\n"))
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'modle'"):
        load_config(_write(tmp_path, "modle:\n  num_classes: 3\n"))
    with pytest.raises(ConfigError, match=r"c.yaml: training.num_epochs: expected an integer, got 'ten'"):
        load_config(_write(tmp_path, "training:\n  num_epochs: ten\n"))
    with pytest.raises(ConfigError, match=r"training.optimizer must be one of adamw, adam, sgd, got 'lamb'"):
        load_config(_write(tmp_path, "training:\n  optimizer: lamb\n"))
    with pytest.raises(ConfigError, match=r"model.img_size 224 does not match data.image_size \[256, 256\]"):
        load_config(_write(tmp_path, "model:\n  img_size: 224\ndata:\n  image_size: [256, 256]\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_scientific_numbers_and_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, "training:\n  min_lr: 1e-6\n  learning_rate: 5E-4\n"),
                      ["training.weight_decay=1e-2", "device=cpu", "data.image_size=[64,64]", "model.img_size=64"])
    assert cfg.training.min_lr == 1e-6 and cfg.training.learning_rate == 5e-4 and cfg.training.weight_decay == 0.01
    assert cfg.device == "cpu" and cfg.data.image_size == [64, 64]
    with pytest.raises(ConfigError, match=r"--opts: unknown key 'training.lr'"):
        load_config(_write(tmp_path, ""), ["training.lr=1"])
    with pytest.raises(ConfigError, match=r"--opts: 'oops' is not KEY=VALUE"):
        load_config(_write(tmp_path, ""), ["oops"])
