"""cxrlt models: sizes against the seed, registration, CSRA variants against their formulas, surgery."""

import pytest
import timm
import torch

import cxrlt  # noqa: F401  (registers the timm model)
from common.checkpoint import export_safetensors, save_checkpoint
from cxrlt.model import (
    MHA,
    ConvNeXtV2CXR,
    CSRAHead,
    OfficialCSRA,
    StandardCXR,
    load_pretrained_and_surgery,
    load_resume_weights,
    state_dict_param_count,
)

TINY = "convnextv2_atto"


def test_registered_model_counts_match_seed():
    model = timm.create_model("cxrlt2026_task1_csra_dbcas")
    assert sum(p.numel() for p in model.parameters()) == 87_756_318
    assert state_dict_param_count(model) == 87_758_367
    keys = [k for k in model.state_dict() if not k.startswith("backbone.")]
    assert keys == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                    "head.classifier.weight", "head.classifier.bias", "head.conv_att.weight"]
    assert "backbone.head.norm.weight" in model.state_dict()


def test_pretrained_needs_local_file(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRLT2026_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="CXRLT2026_WEIGHTS"):
        timm.create_model("cxrlt2026_task1_csra_dbcas", pretrained=True, backbone=TINY)
    with pytest.raises(FileNotFoundError, match="convnextv2_base_mimic-cxr_padchest_csra_dbcas.safetensors"):
        timm.create_model("cxrlt2026_task1_csra_dbcas", pretrained=True, backbone=TINY, weights=tmp_path)
    src = ConvNeXtV2CXR(30, backbone=TINY)
    path = tmp_path / "convnextv2_base_mimic-cxr_padchest_csra_dbcas.safetensors"
    export_safetensors(src.state_dict(), path)
    monkeypatch.setenv("CXRLT2026_WEIGHTS", str(tmp_path))  # a folder holding the released file name
    model = timm.create_model("cxrlt2026_task1_csra_dbcas", pretrained=True, backbone=TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), src.eval()(x))


def test_seed_csra_formula():
    head = CSRAHead(8, 5, lam=0.1)
    torch.nn.init.normal_(head.classifier.bias)
    x = torch.randn(2, 8, 3, 4)
    out = head(x)
    W, b = head.classifier.weight, head.classifier.bias
    expected = torch.zeros(2, 5)
    for n in range(2):
        feats = x[n].reshape(8, -1)                      # D x HW
        gap = W @ feats.mean(1) + b
        for c in range(5):
            a = torch.softmax(head.conv_att.weight[c, :, 0, 0] @ feats, dim=0)
            f_c = (feats * a).sum(1)
            expected[n, c] = gap[c] + 0.1 * (f_c @ W[c] + b[c])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0, 99])
def test_official_csra_formula(T):
    head = OfficialCSRA(8, 5, T=T, lam=0.3)
    x = torch.randn(2, 8, 3, 3)
    w = head.head.weight[:, :, 0, 0]
    score = torch.einsum("cd,bdn->bcn", w / w.norm(dim=1, keepdim=True), x.reshape(2, 8, -1))
    att = score.max(2).values if T == 99 else (score * torch.softmax(T * score, dim=2)).sum(2)
    torch.testing.assert_close(head(x), score.mean(2) + 0.3 * att, rtol=1e-5, atol=1e-5)


def test_mha_temperatures_and_bad_heads():
    assert [h.T for h in MHA(4, 0.1, 8, 3).multi_head] == [1, 2, 4, 99]
    with pytest.raises(ValueError, match="--num_heads 3"):
        MHA(3, 0.1, 8, 3)


@pytest.mark.parametrize("kind", ["csra_dbcas", "csra", "standard"])
def test_forward_backward_every_parameter(kind):
    model = StandardCXR(14, backbone=TINY) if kind == "standard" else ConvNeXtV2CXR(30, backbone=TINY, head=kind)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 14 if kind == "standard" else 30)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_surgery_keeps_backbone_drops_head_norm(tmp_path):
    stage1 = StandardCXR(14, backbone=TINY)
    for p in stage1.parameters():
        torch.nn.init.normal_(p)
    save_checkpoint(tmp_path / "s1.pth", {"model_state_dict": stage1.state_dict()})
    fresh = ConvNeXtV2CXR(30, backbone=TINY)
    model = ConvNeXtV2CXR(30, backbone=TINY)
    skipped = load_pretrained_and_surgery(model, tmp_path / "s1.pth")
    s1, new = stage1.state_dict(), model.state_dict()
    torch.testing.assert_close(new["backbone.stem.0.weight"], s1["backbone.stem.0.weight"])
    # quirk 10: the substring "head" drops the backbone's final LayerNorm too
    assert "backbone.head.norm.weight" in skipped and "classifier.6.weight" in skipped
    torch.testing.assert_close(new["backbone.head.norm.weight"], fresh.state_dict()["backbone.head.norm.weight"])
    assert torch.count_nonzero(new["head.classifier.bias"]) == 0
    bound = (6.0 / (320 + 30)) ** 0.5  # xavier-uniform limit of a 30 x 320 weight
    assert new["head.classifier.weight"].abs().max() <= bound
    model2 = ConvNeXtV2CXR(30, backbone=TINY)
    load_pretrained_and_surgery(model2, tmp_path / "s1.pth", keep_backbone_head_norm=True)
    torch.testing.assert_close(model2.state_dict()["backbone.head.norm.weight"], s1["backbone.head.norm.weight"])


def test_surgery_rejects_unrelated_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "x.pth", {"model_state_dict": {"foo.weight": torch.zeros(3)}})
    with pytest.raises(ValueError, match="x.pth: no backbone weight"):
        load_pretrained_and_surgery(ConvNeXtV2CXR(30, backbone=TINY), tmp_path / "x.pth")


def test_resume_weights_from_mlp_maps_bn(tmp_path):
    old = StandardCXR(30, backbone=TINY)
    torch.nn.init.normal_(old.classifier[0].weight)
    save_checkpoint(tmp_path / "old.pth", {"model_state_dict": old.state_dict()})
    model = ConvNeXtV2CXR(30, backbone=TINY)
    assert load_resume_weights(model, tmp_path / "old.pth") is False
    torch.testing.assert_close(model.bn.weight, old.classifier[0].weight)
    save_checkpoint(tmp_path / "new.pth", {"model_state_dict": model.state_dict()})
    assert load_resume_weights(ConvNeXtV2CXR(30, backbone=TINY), tmp_path / "new.pth") is True


class _SeedCSRA(torch.nn.Module):
    """The model card's head, written as the card describes it (bmm of the attention with the features)."""

    def __init__(self, d, k, lam=0.1):
        super().__init__()
        self.k, self.lam = k, lam
        self.classifier = torch.nn.Linear(d, k)
        self.conv_att = torch.nn.Conv2d(d, k, 1, bias=False)

    def forward(self, x):
        b, c, h, w = x.shape
        gap = self.classifier(x.mean((2, 3)))
        att = torch.softmax(self.conv_att(x).view(b, self.k, h * w), dim=2)
        feat = torch.bmm(att, x.view(b, c, h * w).transpose(1, 2))
        return gap + self.lam * ((feat * self.classifier.weight.unsqueeze(0)).sum(2) + self.classifier.bias)


class _SeedModel(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, drop_path_rate=0.2,
                                          global_pool="")
        self.bn = torch.nn.BatchNorm2d(self.backbone.num_features)
        self.head = _SeedCSRA(self.backbone.num_features, 30)

    def forward(self, x):
        return self.head(self.bn(self.backbone(x)))


def test_seed_model_state_dict_loads_strictly_and_agrees():
    torch.manual_seed(0)
    seed = _SeedModel(TINY).eval()
    with torch.no_grad():
        seed.bn.running_mean.normal_()
        seed.bn.running_var.uniform_(0.5, 2.0)
        torch.nn.init.normal_(seed.head.classifier.bias)
    ours = ConvNeXtV2CXR(30, backbone=TINY).eval()
    ours.load_state_dict(seed.state_dict(), strict=True)
    seed.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=1e-5, atol=1e-5)


def test_weight_mismatch_is_one_line_value_error(tmp_path):
    path = tmp_path / "w.safetensors"
    export_safetensors(ConvNeXtV2CXR(30, backbone=TINY).state_dict(), path)
    with pytest.raises(ValueError, match=r"w.safetensors: weights do not fit the model \(\d+ tensors differ in shape") as err:
        timm.create_model("cxrlt2026_task1_csra_dbcas", pretrained=True, backbone="convnextv2_femto", weights=path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="--model nope: cannot build the backbone"):
        ConvNeXtV2CXR(30, backbone="nope")
