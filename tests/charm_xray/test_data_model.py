"""CHARM-Xray splits (charm_xray.md §3.3-3.5), state-dict keys (§4.7) and checkpoint formats."""

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.model_selection import train_test_split
from torch import nn

from charm_xray.data import charm_notebook_split, load_table, official_split, random_splitter
from charm_xray.data import test_checkpoint_split as checkpoint_split
from charm_xray.evaluate import read_checkpoint
from charm_xray.models import ChestXrayModel
from common.checkpoint import CheckpointError
from common.data.errors import DataError, ParseError
from common.synth import chestxray14 as synth

# ---------------------------------------------------------------------------------------------- splits


def _fastai_random_splitter(n, valid_pct, seed):
    """fastai's RandomSplitter as written there: seed the global generator, randperm, cut."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    perm = torch.randperm(n).numpy()
    torch.random.set_rng_state(state)
    cut = int(valid_pct * n)
    return perm[cut:], perm[:cut]


def test_random_splitter_is_fastais():
    for n in (7, 100, 2794):
        ours = random_splitter(n, 0.125, 85)
        ref = _fastai_random_splitter(n, 0.125, 85)
        assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])


def _documented_table() -> pd.DataFrame:
    """A CSV-like table built so the notebooks' protocol must give the documented NIH counts (§3.3):
    14,402 finding patients -> 41,721 / 10,038 images; 30,805 patients (24,644 / 6,161) -> 89,764 /
    22,356 images. Which patient lands where depends only on the patient order, so the per-patient
    image counts are chosen after placing the patients with sklearn's train_test_split."""
    rng = np.random.default_rng(0)
    patients = np.arange(1, 30806)
    finding = np.zeros(len(patients), bool)
    finding[rng.choice(len(patients), 14402, replace=False)] = True
    _, te1 = train_test_split(patients[finding], test_size=0.2, random_state=85)
    _, te2 = train_test_split(patients, test_size=0.2, random_state=85)
    te1, te2 = set(te1.tolist()), set(te2.tolist())
    f = finding.astype(int)          # finding images per patient
    n = (~finding).astype(int)       # no-finding images per patient
    p1_test = np.array([p in te1 for p in patients]) & finding
    p1_tv = finding & ~p1_test
    p2_test = np.array([p in te2 for p in patients])
    f[np.flatnonzero(p1_tv)[0]] += 41721 - f[p1_tv].sum()
    f[np.flatnonzero(p1_test)[0]] += 10038 - f[p1_test].sum()
    n[np.flatnonzero(p2_test)[0]] += 22356 - (f + n)[p2_test].sum()
    n[np.flatnonzero(~p2_test)[0]] += 89764 - (f + n)[~p2_test].sum()
    assert (f >= 0).all() and (n >= 0).all()
    ids = np.concatenate([np.repeat(patients, f), np.repeat(patients, n)])
    has = np.concatenate([np.ones(f.sum(), bool), np.zeros(n.sum(), bool)])
    order = np.argsort(ids, kind="stable")
    return pd.DataFrame({"Patient_ID": ids[order], "has_finding": has[order]})


def test_notebook_split_reproduces_the_documented_counts():
    table = _documented_table()
    assert len(table) == 112120
    plan = charm_notebook_split(table)
    r = plan.report
    assert r["phase1_patients"] == 14402
    assert (r["phase1_train_val_images"], r["phase1_test_images"]) == (41721, 10038)
    assert r["phase2_patients"] == 30805
    assert (r["phase2_train_val_patients"], r["phase2_test_patients"]) == (24644, 6161)
    assert (r["phase2_train_val_images"], r["phase2_test_images"]) == (89764, 22356)
    assert r["test_subset_images"] == 2794 == len(plan.phase2.test)  # int(0.125 * 22356)
    # RandomSplitter(0.125, seed 85) inside train_val
    assert len(plan.phase1.valid) == int(0.125 * 41721) and len(plan.phase2.valid) == int(0.125 * 89764)
    # leakage: phase-2 test-subset patients that phase 1 trained on, counted independently
    trained = set(plan.phase1.train["Patient_ID"])
    leaked = plan.phase2.test["Patient_ID"].isin(trained)
    assert r["leaked_test_images"] == int(leaked.sum()) > 0
    assert r["leaked_test_patients"] == plan.phase2.test.loc[leaked, "Patient_ID"].nunique()
    assert "leakage" in r["warnings"][0]


@pytest.fixture(scope="module")
def synth_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("cx14")
    synth.write(root, 120, 1)
    return root, load_table(root)


def test_official_split_has_no_patient_in_two_parts(synth_table):
    _, table = synth_table
    plan = official_split(table, valid_pct=0.25)
    parts = [set(plan.phase2.train["Patient_ID"]), set(plan.phase2.valid["Patient_ID"]),
             set(plan.phase2.test["Patient_ID"])]
    assert all(parts) and not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert plan.phase1.train["has_finding"].all() and len(plan.phase2.test) == (table["official"] == "test").sum()
    assert "not comparable" in plan.report["warnings"][0]


def test_test_checkpoint_split_is_sample_then_randomsplitter(synth_table):
    _, table = synth_table
    frame = checkpoint_split(table, num_samples=100)
    sampled = table.sample(n=100, random_state=42)
    _, valid = _fastai_random_splitter(100, 0.2, 42)
    assert list(frame["Image_Index"]) == list(sampled.iloc[valid]["Image_Index"])
    assert len(checkpoint_split(table, num_samples=-1)) == int(0.2 * len(table))


def test_labels_are_exact_names_and_no_finding_is_zero(synth_table):
    root, table = synth_table
    csv = (root / "Data_Entry_2017.csv").read_text().splitlines()
    for line, row in zip(csv[1:], table.itertuples()):
        findings = line.split(",")[1]
        names = [] if findings == "No Finding" else findings.split("|")
        assert [c for c, v in zip(synth.DISEASE_LABELS, row.labels) if v] == sorted(
            names, key=synth.DISEASE_LABELS.index)


def test_malformed_csv_row_and_missing_image_are_one_line_errors(tmp_path):
    root = tmp_path / "d"
    synth.write(root, 20, 0)
    csv = root / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    bad = lines[3].split(",")
    bad[1] = "Cardiomegally"
    csv.write_text("\n".join(lines[:3] + [",".join(bad)] + lines[4:]) + "\n")
    with pytest.raises(ParseError) as err:
        load_table(root)
    assert f"{csv}:4" in str(err.value) and "\n" not in str(err.value)
    csv.write_text("\n".join(lines) + "\n")
    name = lines[5].split(",")[0]
    next(root.glob(f"*/images/{name}")).unlink()
    with pytest.raises(DataError) as err:
        load_table(root)
    assert name in str(err.value) and ":6" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- state dict


def _charm_part_keys():
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {f"spatial_attention.{m}.{p}" for m in ("conv1", "conv3", "conv5", "spatial_att.0") for p in ("weight", "bias")}
    keys |= {"memory_bank.memory", "memory_bank.index"} | {f"classifier.0.{p}" for p in bn}
    keys |= {f"classifier.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")}
    return keys


_TORCHVISION = {"efficientnet_b0": torchvision.models.efficientnet_v2_s, "efficientnet_b1": torchvision.models.efficientnet_b1,
                "resnet50": torchvision.models.resnet50, "densenet121": torchvision.models.densenet121,
                "resnet18": torchvision.models.resnet18}
_CHANNELS = {"efficientnet_b0": 1280, "efficientnet_b1": 1280, "resnet50": 2048, "densenet121": 1024, "resnet18": 512}


def _original_keys(model_name: str) -> set[str]:
    """§4.1 / §4.7 from torchvision's own key names (not from our model): the backbone is an
    ``nn.Sequential`` of the listed children (keys by position), the final block is ResNet's
    ``layer4`` itself or ``Sequential(features[-1])`` (EfficientNet, DenseNet), and the torchvision
    model stays as ``base_model`` without its head."""
    tv = _TORCHVISION[model_name]().state_dict()

    def under(prefix):  # the keys of torchvision submodule ``prefix``, relative to it
        return {k[len(prefix) + 1:] for k in tv if k.startswith(prefix + ".")}

    if model_name.startswith("resnet"):
        children = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
        body = {f"backbone.{i}.{k}" for i, c in enumerate(children) for k in under(c)}
        final = {"final_block." + k for k in under("layer4")}  # layer4 itself: final_block.<bottleneck>.*
        base = {"base_model." + k for k in tv if not k.startswith("fc.")}
    else:  # features children by position: EfficientNet "0".."7"; DenseNet conv0, norm0, ..., denseblock4, norm5
        children = list(dict.fromkeys(k.split(".")[1] for k in tv if k.startswith("features.")))
        if model_name == "densenet121":  # children without parameters (relu0, pool0) still take a position
            children = ["conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                        "transition2", "denseblock3", "transition3", "denseblock4", "norm5"]
        body = {f"backbone.{i}.{k}" for i, c in enumerate(children[:-1]) for k in under(f"features.{c}")}
        final = {"final_block.0." + k for k in under(f"features.{children[-1]}")}
        base = {"base_model." + k for k in tv if not k.startswith("classifier.")}
    return body | base | final | {"momentum_final_block." + k for k in final} | _charm_part_keys()


def _original_layout(model_name: str) -> nn.Module:
    """The module tree the original ``ChestXrayModel.__init__`` builds (§4.1-4.7), with no forward: the
    torchvision model as ``base_model``, ``backbone`` / ``final_block`` from its children,
    ``momentum_final_block.final_block`` a copy, ``spatial_attention.{conv1,conv3,conv5,spatial_att}``,
    ``memory_bank.{memory,index}`` buffers and ``classifier`` = BN, Linear, ReLU, Dropout, Linear."""
    import copy

    root = nn.Module()
    tv = root.base_model = _TORCHVISION[model_name]()
    if model_name.startswith("resnet"):
        root.backbone = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3)
        root.final_block = tv.layer4
        tv.fc = nn.Identity()
    else:
        features = list(tv.features.children())
        root.backbone = nn.Sequential(*features[:-1])
        root.final_block = nn.Sequential(features[-1])
        tv.classifier = nn.Identity()
    c, r = _CHANNELS[model_name], max(_CHANNELS[model_name] // 8, 8)
    root.momentum_final_block = nn.Module()
    root.momentum_final_block.final_block = copy.deepcopy(root.final_block)
    att = root.spatial_attention = nn.Module()
    att.conv1, att.conv3, att.conv5 = nn.Conv2d(c, r, 1), nn.Conv2d(c, r, 3, padding=1), nn.Conv2d(c, r, 5, padding=2)
    att.spatial_att = nn.Sequential(nn.Conv2d(3 * r, 1, 1), nn.Sigmoid())
    root.memory_bank = nn.Module()
    root.memory_bank.register_buffer("memory", torch.randn(512, c))
    root.memory_bank.register_buffer("index", torch.tensor(5))
    root.classifier = nn.Sequential(nn.BatchNorm1d(c), nn.Linear(c, 512), nn.ReLU(), nn.Dropout(0.3), nn.Linear(512, 14))
    return root


@pytest.mark.parametrize("model_name", ["efficientnet_b0", "efficientnet_b1", "resnet50", "densenet121", "resnet18"])
def test_state_dict_keys_are_the_originals_and_load_strict_both_ways(model_name):
    model = ChestXrayModel(model_name)
    channels = _CHANNELS[model_name]
    assert model.feature_dim == channels
    expected = _original_keys(model_name)
    assert set(model.state_dict()) == expected
    assert model.state_dict()["spatial_attention.conv1.weight"].shape[0] == max(channels // 8, 8)
    # an original model's state dict loads strict into ours (same values), and ours into an original model
    torch.manual_seed(1)
    original = _original_layout(model_name)
    assert set(original.state_dict()) == expected
    model.load_state_dict(original.state_dict(), strict=True)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in original.state_dict().items())
    back = _original_layout(model_name)
    back.load_state_dict(ChestXrayModel(model_name).state_dict(), strict=True)


def test_original_checkpoint_layouts_load_strict(tmp_path):
    # an original-layout state dict (other values) loads strict, bare, with the notebook prefix and as fastai {model, opt}
    other = _original_layout("resnet50").state_dict()
    other["memory_bank.index"] = torch.tensor(7)
    for name, obj in {"plain.pth": other, "notebook.pth": {f"model.{k}": v for k, v in other.items()},
                      "fastai.pth": {"model": {f"model.{k}": v for k, v in other.items()},
                                     "opt": {"state": [], "hypers": [{"lr": 1e-4}]}}}.items():
        torch.save(obj, tmp_path / name)
        state, _ = read_checkpoint(tmp_path / name)
        fresh = ChestXrayModel("resnet50")
        fresh.load_state_dict(state, strict=True)
        assert int(fresh.memory_bank.index) == 7
        assert torch.equal(fresh.classifier[4].weight, other["classifier.4.weight"])
        assert torch.equal(fresh.final_block[2].conv3.weight, other["final_block.2.conv3.weight"])


def test_unsafe_or_foreign_checkpoints_are_refused_in_one_line(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        read_checkpoint(tmp_path / "evil.pth")
    torch.save({"epoch": 3}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="no model state dict"):
        read_checkpoint(tmp_path / "nomodel.pth")


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    model = ChestXrayModel("resnet18", pretrained_weights=tmp_path / "r18.pth")
    assert torch.equal(model.final_block[0].conv1.weight, tv.layer4[0].conv1.weight)
    assert torch.equal(model.momentum_final_block.final_block[0].conv1.weight, tv.layer4[0].conv1.weight)
    torch.save(torchvision.models.densenet121().state_dict(), tmp_path / "dn.pth")
    with pytest.raises(CheckpointError, match="not torchvision ResNet-18 weights"):
        ChestXrayModel("resnet18", pretrained_weights=tmp_path / "dn.pth")
