"""The memory bank and the training forward against the original's arithmetic (charm_xray.md §4.4-4.5),
bit for bit: the original excludes only similarities exactly equal to 1.0, so any last-bit difference in
the features or the similarities changes which slots a later step retrieves.

The oracles below follow the reference's description literally: per query, cosine similarity as
``F.normalize(q) @ F.normalize(memory).T``, drop the slots at exactly 1.0, top-k of the rest, sum of
``slot * similarity``; the forward pools with ``adaptive_avg_pool2d``, writes before it retrieves, and the
momentum step is ``theta_k * m + theta_q * (1 - m)``.
"""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from charm_xray.models import ChestXrayModel, MemoryBank


def _loop_retrieve(memory: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    similarity = torch.matmul(F.normalize(query, dim=1), F.normalize(memory, dim=1).T)
    keep = similarity != 1.0
    k = min(k, memory.size(0))
    result = torch.zeros_like(query)
    for i in range(query.size(0)):
        valid = torch.where(keep[i])[0]
        if len(valid) == 0:
            continue
        weights, rel = similarity[i, valid].topk(min(k, len(valid)))
        rows = memory[valid[rel]]
        result[i] = (rows * weights.unsqueeze(1).expand_as(rows)).sum(dim=0)
    return result


def _original_train_forward(model: ChestXrayModel, x: torch.Tensor, threshold: float, k: int) -> torch.Tensor:
    b = model.backbone(x)
    main = model.final_block(b)
    with torch.no_grad():
        momentum = model.momentum_final_block.final_block(b)
    attention = model.spatial_attention(main)
    fused = F.adaptive_avg_pool2d(main * attention, (1, 1)).flatten(1) + F.adaptive_avg_pool2d(momentum, (1, 1)).flatten(1)
    mean_norm = torch.mean(torch.norm(fused, dim=1))
    rarity = torch.abs(torch.norm(fused, dim=1) - mean_norm) / mean_norm
    bank = model.memory_bank
    chosen = fused.detach()[rarity < threshold]
    n = min(chosen.size(0), bank.memory.size(0) - int(bank.index))
    if n > 0:
        start = int(bank.index)
        bank.memory[start:start + n] = chosen[:n]
        bank.index.fill_((start + n) % bank.memory.size(0))
    out = model.classifier(fused + _loop_retrieve(bank.memory, fused, k))
    m = model.momentum_final_block.momentum
    for p_q, p_k in zip(model.final_block.parameters(), model.momentum_final_block.final_block.parameters()):
        p_k.data = p_k.data * m + p_q.data * (1.0 - m)
    return out


# ---------------------------------------------------------------------------------------------- signature


def test_original_signature_and_config_defaults():
    bank = MemoryBank(6)  # MemoryBank(feature_dim, bank_size=None, rarity_threshold=None)
    assert (bank.feature_dim, bank.bank_size, bank.rarity_threshold) == (6, 512, 0.2)
    assert bank.memory.shape == (512, 6)
    bank = MemoryBank(2, 4, 0.5)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    bank.update(features, torch.tensor([0.1, 0.7, 0.49]))  # update(features, rarity_scores): rarity < 0.5
    assert torch.equal(bank.memory[:2], features[[0, 2]]) and int(bank.index) == 2
    bank.update(features, torch.tensor([0.5, 0.6, 0.9]))  # nothing below the threshold: nothing written
    assert int(bank.index) == 2
    rare = MemoryBank(2, 4, 0.5, select="rare")  # our extra, keyword only
    rare.update(features, torch.tensor([0.1, 0.7, 0.49]))
    assert torch.equal(rare.memory[:1], features[[1]]) and int(rare.index) == 1
    # retrieve(query, k=None): k defaults to RETRIEVAL_K = 3
    torch.manual_seed(0)
    full = MemoryBank(5, 16)
    full.write(torch.randn(16, 5))
    q = torch.randn(4, 5)
    assert torch.equal(full.retrieve(q), _loop_retrieve(full.memory, q, 3))
    assert not torch.equal(full.retrieve(q), full.retrieve(q, 2))
    with pytest.raises(TypeError):
        MemoryBank(2, 4, 0.5, "rare")  # the extras are keyword-only


# ---------------------------------------------------------------------------------------------- retrieval


def _self_similarity(v: torch.Tensor) -> torch.Tensor:
    n = F.normalize(v[None], dim=1)
    return (n @ n.T)[0, 0]


def test_a_self_match_at_0_99999994_is_retrieved_as_in_the_original():
    # a feature whose float32 cosine with itself is 0.99999994 (1 - 2**-24), not 1.0
    below_one = torch.tensor(1.0 - 2.0 ** -24)
    v = next(torch.tensor(c, dtype=torch.float32) for c in itertools.product(range(1, 6), repeat=3)
             if _self_similarity(torch.tensor(c, dtype=torch.float32)) == below_one)
    sim_self = _self_similarity(v)
    other = torch.tensor([-1.0, 4.0, 0.5])
    bank = MemoryBank(3, 4)
    bank.write(torch.stack([v, other]))  # slots 2, 3 stay zero
    q1, q2 = v[None].clone().requires_grad_(), v[None].clone().requires_grad_()
    out = bank.retrieve(q1, k=1)
    ref = _loop_retrieve(bank.memory, q2, 1)
    # the sample's own feature is not excluded: it is the top slot, weighted by 0.99999994
    assert torch.equal(out, ref) and torch.equal(out[0], sim_self * v)
    grad = torch.randn(1, 3)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    assert torch.equal(q1.grad, q2.grad)
    # the corrected exclusion drops it: the best of the rest is the other slot
    tol = MemoryBank(3, 4, exclusion_tol=1e-6)
    tol.write(torch.stack([v, other]))
    cos = F.normalize(v[None], dim=1) @ F.normalize(other[None], dim=1).T
    assert torch.allclose(tol.retrieve(v[None], k=1), cos * other, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_retrieval_equals_the_per_query_original_bit_for_bit(seed):
    """Values and gradients, with fresh self-matches, zero slots, k above the slots left and a query
    whose every slot is excluded."""
    gen = torch.Generator().manual_seed(seed)
    batch, dim, size = 9, 37 + seed * 50, 24
    query = torch.randn(batch, dim, generator=gen) * 4
    memory = torch.zeros(size, dim)
    memory[:15] = torch.randn(15, dim, generator=gen)
    memory[:batch] = query  # each query's own feature, as written just before retrieval in training
    memory[15] = query[0] * 2  # a second slot along query 0
    for k in (1, 3, 5, 30):
        bank = MemoryBank(dim, size)
        bank.memory.copy_(memory)
        q1, q2 = query.clone().requires_grad_(), query.clone().requires_grad_()
        out, ref = bank.retrieve(q1, k), _loop_retrieve(memory, q2, k)
        assert torch.equal(out, ref), k
        grad = torch.randn(batch, dim, generator=gen)
        (out * grad).sum().backward()
        (ref * grad).sum().backward()
        assert torch.equal(q1.grad, q2.grad), k
    everything_excluded = MemoryBank(2, 2)
    everything_excluded.write(torch.tensor([[1.0, 0.0], [4.0, 0.0]]))
    assert torch.equal(everything_excluded.retrieve(torch.tensor([[2.0, 0.0]]), 3), torch.zeros(1, 2))


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("model_name", ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "efficientnet_b1"])
def test_training_steps_equal_the_original_bit_for_bit(model_name):
    """Three SGD steps from identical states with the bank index at 511 of 512 (the first write is
    truncated to one row and the index wraps to 0): logits, bank and weights equal the original's
    arithmetic exactly at every step."""
    torch.manual_seed(0)
    ours = ChestXrayModel(model_name, bank_size=512, rarity_threshold=0.2, retrieval_k=3).train()
    ours.memory_bank.index.fill_(511)
    original = copy.deepcopy(ours)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 64, 64, generator=gen), (torch.rand(8, 14, generator=gen) > 0.7).float())
               for _ in range(3)]
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    opt_orig = torch.optim.SGD([p for p in original.parameters() if p.requires_grad], lr=0.1)
    for step, (x, y) in enumerate(batches):
        torch.manual_seed(100 + step)  # the same dropout masks
        logits = ours(x)
        torch.manual_seed(100 + step)
        expected = _original_train_forward(original, x, 0.2, 3)
        assert torch.equal(logits, expected), (step, (logits - expected).abs().max().item())
        assert torch.equal(ours.memory_bank.memory, original.memory_bank.memory), step
        assert int(ours.memory_bank.index) == int(original.memory_bank.index), step
        if step == 0:
            assert int(ours.memory_bank.index) == 0  # one row written at slot 511, then the wrap
        for opt, out in ((opt_ours, logits), (opt_orig, expected)):
            F.binary_cross_entropy_with_logits(out, y).backward()
            opt.step()
            opt.zero_grad()
    a, b = ours.state_dict(), original.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
