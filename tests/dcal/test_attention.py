"""Rollout, top-R selection, GLCA, PWCA and the SA branch against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcal.models.attention.pwca import pwca_block_forward, sample_distractors
from dcal.models.attention.self_attention import block_kv
from dcal.models.backbones.timm_wrapper import SUPPORTED_BACKBONES, create_backbone
from dcal.models.dual_attention_model import DualAttentionModel
from dcal.utils.attention_rollout import attention_rollout, num_local_queries, select_top_patches


def _tiny_backbone(name: str = "deit_tiny_patch16_224", depth: int = 2, **kw):
    return create_backbone(name, img_size=(32, 32), patch_size=8, depth=depth, **kw)


def _random_attn(b, h, n, gen):
    return torch.rand(b, h, n, n, generator=gen).softmax(dim=-1)


def test_rollout_matches_definition():
    gen = torch.Generator().manual_seed(1)
    maps = [_random_attn(2, 3, 5, gen) for _ in range(4)]
    got = attention_rollout(maps).numpy()
    for b in range(2):
        ref = np.eye(5)
        for a in maps:
            bar = 0.5 * a[b].double().mean(0).numpy() + 0.5 * np.eye(5)  # Eq. 2: 0.5 S + 0.5 E
            ref = bar @ ref  # S_hat_i = S_bar_i x S_hat_{i-1}
        np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[b].sum(-1), np.ones(5), atol=1e-5)


def test_num_local_queries_paper_values():
    assert num_local_queries(784, 0.1) == 78  # CUB 448 px, R = 10 %
    assert num_local_queries(196, 0.3) == 58  # 224 px, R = 30 %
    assert num_local_queries(100, 0.29) == 29  # no float flooring artefact
    assert num_local_queries(4, 0.1) == 1
    with pytest.raises(ValueError, match="top_k_ratio"):
        num_local_queries(10, 0.0)


def test_select_top_patches_uses_cls_row():
    r = torch.zeros(1, 6, 6)
    r[0, 0, 1:] = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.05])
    r[0, 1:, 1:] = 9.0  # other rows must not matter
    assert select_top_patches(r, 2).tolist() == [[2, 4]]


def _timm_attention_maps(vit, x):
    """Attention probabilities of every block captured from timm's own (unfused) code path."""
    maps, hooks = [], []
    for blk in vit.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(i[0].detach())))
    tokens = vit.forward_features(x)
    for h in hooks:
        h.remove()
    return tokens, maps


def test_sa_branch_is_the_backbone_and_rollout_selects_top_r():
    torch.manual_seed(0)
    model = DualAttentionModel(_tiny_backbone(depth=3), 5, top_k_ratio=0.25).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        tokens, maps = _timm_attention_maps(model.backbone, x)
    # SA = the backbone's own blocks: the CLS feature equals timm's forward_features
    torch.testing.assert_close(out["sa_feat"], tokens[:, 0], rtol=1e-4, atol=1e-5)
    ref = attention_rollout(maps)[:, 0, 1:]
    torch.testing.assert_close(out["rollout"], ref, rtol=1e-4, atol=1e-6)
    assert model.top_k == 4  # 16 patches x 0.25
    expected = ref.topk(4, dim=1).indices + 1
    assert torch.equal(out["glca_idx"].sort(1).values, expected.sort(1).values)


def test_glca_block_is_cross_attention_of_selected_queries():
    torch.manual_seed(0)
    model = DualAttentionModel(_tiny_backbone(), 5, top_k_ratio=0.25).eval()
    blk = model.glca.block
    x = torch.randn(2, 17, 192)
    idx = torch.tensor([[3, 7, 1, 16], [2, 5, 9, 11]])
    got = model.glca(x, idx)
    for b in range(2):
        pos = torch.cat([torch.zeros(1, dtype=torch.long), idx[b]])
        q_in, kv_in = blk.norm1(x[b, pos]), blk.norm1(x[b])
        w, bias = blk.attn.qkv.weight, blk.attn.qkv.bias
        d = 192
        q = (q_in @ w[:d].T + bias[:d]).view(5, 3, 64).transpose(0, 1)
        k = (kv_in @ w[d:2 * d].T + bias[d:2 * d]).view(17, 3, 64).transpose(0, 1)
        v = (kv_in @ w[2 * d:].T + bias[2 * d:]).view(17, 3, 64).transpose(0, 1)
        att = (q @ k.transpose(1, 2) / 8.0).softmax(-1)  # K+1 local queries over all 17 global keys
        y = x[b, pos] + blk.attn.proj((att @ v).transpose(0, 1).reshape(5, d))
        y = y + blk.mlp(blk.norm2(y))
        torch.testing.assert_close(got[b], model.glca.norm(y), rtol=1e-4, atol=1e-5)


def test_glca_has_own_weights_initialised_from_last_sa_block():
    model = DualAttentionModel(_tiny_backbone(), 5)
    sa, gl = model.backbone.blocks[-1], model.glca.block
    assert torch.equal(sa.attn.qkv.weight, gl.attn.qkv.weight)
    assert sa.attn.qkv.weight.data_ptr() != gl.attn.qkv.weight.data_ptr()


def test_pwca_concatenates_target_and_distractor_keys():
    torch.manual_seed(0)
    blk = _tiny_backbone().blocks[0].eval()
    x1, x2 = torch.randn(1, 17, 192), torch.randn(1, 17, 192)
    got = pwca_block_forward(blk, x1, block_kv(blk, x2))
    w, bias = blk.attn.qkv.weight, blk.attn.qkv.bias
    h1, h2 = blk.norm1(x1[0]), blk.norm1(x2[0])
    q = (h1 @ w[:192].T + bias[:192]).view(17, 3, 64).transpose(0, 1)
    kv = torch.cat([h1, h2]) @ w[192:].T + bias[192:]  # 34 keys/values: [x1; x2]
    k, v = kv[:, :192].view(34, 3, 64).transpose(0, 1), kv[:, 192:].view(34, 3, 64).transpose(0, 1)
    att = (q @ k.transpose(1, 2) / 8.0).softmax(-1)
    y = x1[0] + blk.attn.proj((att @ v).transpose(0, 1).reshape(17, 192))
    y = y + blk.mlp(blk.norm2(y))
    torch.testing.assert_close(got[0], y, rtol=1e-4, atol=1e-5)


def test_model_pwca_branch_uses_each_layer_sa_tokens_of_the_distractor(monkeypatch):
    # Paper: at layer l the target's PWCA tokens attend over [its own; the distractor's layer-l SA]
    # keys/values. Reference: run timm's own blocks for the SA hidden states, then project the
    # distractor's hidden states at every layer (the model re-uses the SA branch's k/v instead).
    import dcal.models.dual_attention_model as dam

    torch.manual_seed(0)
    model = DualAttentionModel(_tiny_backbone(depth=3), 5).train()
    for m in model.modules():  # no dropout / drop path, so train mode is deterministic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    distractor = torch.tensor([2, 0, 1])
    monkeypatch.setattr(dam, "sample_distractors", lambda b, device: distractor)
    images = torch.randn(3, 3, 32, 32)
    got = model(images)["pwca_logits"]
    vit = model.backbone
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
    hidden = []
    for blk in vit.blocks:
        hidden.append(h)
        h = blk(h)
    y = hidden[0]
    for blk, h_l in zip(vit.blocks, hidden, strict=True):
        y = pwca_block_forward(blk, y, block_kv(blk, h_l[distractor]))
    ref = model.sa_head(vit.norm(y)[:, 0])
    torch.testing.assert_close(got, ref if isinstance(ref, torch.Tensor) else ref[1], rtol=1e-4, atol=1e-5)


def test_distractor_is_never_the_image_itself():
    gen = torch.Generator().manual_seed(0)
    for b in (2, 3, 8):
        for _ in range(50):
            d = sample_distractors(b, torch.device("cpu"), gen)
            assert sorted(d.tolist()) == list(range(b)) and all(d[i] != i for i in range(b))
    with pytest.raises(ValueError, match="at least 2"):
        sample_distractors(1, torch.device("cpu"))


@pytest.mark.parametrize("task_type", ["fgvc", "reid"])
def test_pwca_training_only_and_eval_batch_independent(task_type):
    torch.manual_seed(0)
    model = DualAttentionModel(_tiny_backbone(), 5, task_type=task_type, top_k_ratio=0.3)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert "pwca_logits" in model(x)
    model.eval()
    with torch.no_grad():
        full, single = model(x), model(x[:1])
    assert not any(k.startswith("pwca") for k in full)
    for key in ("embedding", "sa_logits", "glca_logits"):
        torch.testing.assert_close(full[key][:1], single[key], rtol=1e-4, atol=1e-5)
    # inference output: FGVC = SA + GLCA class probabilities; re-ID = [SA BNNeck feature, GLCA BNNeck feature]
    if task_type == "fgvc":
        expected = full["sa_logits"].softmax(-1) + full["glca_logits"].softmax(-1)
    else:
        expected = torch.cat([model.sa_head.bn(full["sa_feat"]), model.glca_head.bn(full["glca_feat"])], dim=1)
    torch.testing.assert_close(full["embedding"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SUPPORTED_BACKBONES)
def test_every_backbone_forward_backward(name):
    torch.manual_seed(0)
    model = DualAttentionModel(_tiny_backbone(name, depth=1), 3, task_type="reid").train()
    out = model(torch.randn(4, 3, 32, 32))
    loss = sum(out[f"{b}_logits"].logsumexp(1).mean() + out[f"{b}_feat"].pow(2).mean() for b in ("sa", "glca", "pwca"))
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_pretrained_weights_are_loaded_and_not_reinitialised(tmp_path):
    torch.manual_seed(0)
    src = create_backbone("deit_tiny_patch16_224", img_size=(224, 224), depth=2)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 192), torch.zeros(1000)
    torch.save({"model": state}, tmp_path / "deit.pth")
    vit = create_backbone("deit_tiny_patch16_224", img_size=(224, 224), depth=2, pretrained_path=str(tmp_path / "deit.pth"))
    model = DualAttentionModel(vit, 7)
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)
    bad = dict(state)
    bad.pop("blocks.1.mlp.fc1.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth.*missing"):
        create_backbone("deit_tiny_patch16_224", img_size=(224, 224), depth=2, pretrained_path=str(tmp_path / "bad.pth"))
    # wrong architecture: a one-line error naming the key, not torch's per-tensor RuntimeError
    with pytest.raises(ValueError, match=r"model.pretrained_path .*deit.pth \(check model.backbone_name\): weights do not fit the model \(30 tensors differ in shape"):
        create_backbone("deit_small_patch16_224", img_size=(224, 224), depth=2, pretrained_path=str(tmp_path / "deit.pth"))


def test_unsupported_backbone_is_an_error():
    with pytest.raises(ValueError, match="backbone_name 'resnet50'"):
        create_backbone("resnet50", img_size=(32, 32))


def test_drop_rate_reaches_the_dropouts_dcal_uses():
    # timm >= 0.9 reads drop_rate as head dropout only, and DCAL never runs timm's head
    vit = _tiny_backbone(drop_rate=0.25, drop_path_rate=0.1)
    blk = vit.blocks[-1]
    assert vit.pos_drop.p == blk.attn.proj_drop.p == blk.mlp.drop1.p == blk.mlp.drop2.p == 0.25
    assert float(blk.drop_path1.drop_prob) == pytest.approx(0.1)


def test_missing_pretrained_file_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"model.pretrained_path: weights file not found: .*nope.pth"):
        _tiny_backbone(pretrained_path=str(tmp_path / "nope.pth"))
