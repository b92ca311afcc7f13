"""Distributed-aware samplers (common/data/samplers.py)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from common.data import ClassAwareSampler, RandomIdentitySampler, RepeatFactorSampler, ShardedRandomSampler


def _batches(indices, size):
    return [list(indices[i : i + size]) for i in range(0, len(indices) - size + 1, size)]


def _union_matches_single(make, world: int, batch: int):
    """Rank r's batch k, pooled over ranks, equals the single-process batch k of size batch*world."""
    single = _batches(list(make(1, 0)), batch * world)
    per_rank = [_batches(list(make(world, r)), batch) for r in range(world)]
    n = min(len(b) for b in per_rank)
    assert n == len(single) and n > 0
    for k in range(n):
        assert sorted(sum((per_rank[r][k] for r in range(world)), [])) == sorted(single[k])


# ---------------------------------------------------------------- ShardedRandomSampler


@pytest.mark.parametrize(
    ("n", "world", "drop_last"), [(10, 3, False), (10, 3, True), (2, 4, False), (12, 4, False)]
)
def test_sharded_train_matches_torch_distributed_sampler(n, world, drop_last):
    data = list(range(n))
    for rank in range(world):
        ours = ShardedRandomSampler(
            n, shuffle=True, seed=5, num_replicas=world, rank=rank, drop_last=drop_last, pad=not drop_last
        )
        ref = DistributedSampler(
            data, num_replicas=world, rank=rank, shuffle=True, seed=5, drop_last=drop_last
        )
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)


def test_sharded_determinism_and_epochs():
    s = ShardedRandomSampler(50, shuffle=True, seed=1)
    a, b = list(s), list(s)
    s.set_epoch(1)
    c = list(s)
    assert a == b and a != c and sorted(c) == list(range(50))
    assert list(ShardedRandomSampler(50, shuffle=True, seed=2)) != a


@pytest.mark.parametrize(("n", "world"), [(10, 3), (7, 2), (2, 4), (9, 3)])
def test_sharded_eval_covers_each_index_once(n, world):
    shards = [
        list(ShardedRandomSampler(n, shuffle=False, num_replicas=world, rank=r, pad=False))
        for r in range(world)
    ]
    assert [
        len(ShardedRandomSampler(n, shuffle=False, num_replicas=world, rank=r, pad=False))
        for r in range(world)
    ] == [len(s) for s in shards]
    assert shards == [list(range(r, n, world)) for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))


def test_sharded_union_of_ranks_and_errors():
    _union_matches_single(
        lambda w, r: ShardedRandomSampler(37, shuffle=True, seed=3, num_replicas=w, rank=r), 2, 4
    )
    padded = ShardedRandomSampler(10, num_replicas=4, rank=0)
    assert padded.num_padded == 2 and len(padded) == 3
    with pytest.raises(ValueError, match="drop_last and pad exclude each other"):
        ShardedRandomSampler(10, drop_last=True, pad=True)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        ShardedRandomSampler(10, num_replicas=2, rank=2)


# ---------------------------------------------------------------- RepeatFactorSampler

# 8 images x 3 classes: class 0 common, class 1 rarer, class 2 never positive; row 7 empty.
# 10 label occurrences over 8 images, so occurrence and image frequencies differ.
LABELS = np.array(
    [
        [1, 0, 0],
        [1, 0, 0],
        [1, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 0],
    ]
)


def _hand_factors(t, max_repeat, frequency="occurrence"):
    counts = [6, 3, 1]  # class 2 has no positives: clipped to 1
    denom = sum(counts) if frequency == "occurrence" else 8
    r_c = [max(1.0, math.sqrt(t / max(c / denom, 1e-12))) for c in counts]
    r = []
    for row in LABELS:
        pos = [r_c[c] for c in range(3) if row[c] > 0.5]
        r.append(min(max(max(pos) if pos else 1.0, 1.0), max_repeat))
    return np.array(r), np.array(r_c)


def test_repeat_factors_vs_hand_computation():
    s = RepeatFactorSampler(LABELS, threshold=0.5, max_repeat=10)
    r, r_c = _hand_factors(0.5, 10)
    # f = (6/10, 3/10, 1/10): r_c = (1, sqrt(5/3), sqrt(5)); rows with class 1 get sqrt(5/3).
    assert np.allclose(s.class_frequencies, [0.6, 0.3, 0.1])
    assert np.allclose(s.class_repeat_factors, r_c) and np.allclose(
        r_c, [1.0, math.sqrt(5 / 3), math.sqrt(5)]
    )
    assert np.allclose(s.repeat_factors, r)
    b = math.sqrt(5 / 3)
    assert np.allclose(s.repeat_factors, [1, 1, 1, 1, b, b, b, 1])
    clipped = RepeatFactorSampler(LABELS, threshold=100.0, max_repeat=3)
    assert np.allclose(clipped.repeat_factors, _hand_factors(100.0, 3)[0])
    assert clipped.repeat_factors.max() == 3 and clipped.repeat_factors[7] == 1.0
    lvis = RepeatFactorSampler(LABELS, threshold=0.5, frequency="image")
    assert np.allclose(lvis.class_frequencies, [6 / 8, 3 / 8, 1 / 8])
    assert np.allclose(lvis.repeat_factors, _hand_factors(0.5, 10, "image")[0])
    assert not np.allclose(lvis.repeat_factors, s.repeat_factors)


def test_repeat_factor_epoch_list_matches_original_rule():
    s = RepeatFactorSampler(LABELS, threshold=2.0, max_repeat=10, seed=42)
    s.set_epoch(3)
    # Hand rule of cxrlt.md 5.2: shuffle 0..N-1 with RandomState(42 + epoch), then round(r_i) copies.
    order = list(range(8))
    np.random.RandomState(45).shuffle(order)
    expected = [i for i in order for _ in range(int(np.rint(s.repeat_factors[i])))]
    assert list(s) == expected and len(s) == len(expected)
    # f_1 = 0.3 -> r = 2.58 -> 3 copies; f_0 = 0.6 -> r = 1.83 -> 2 copies; the empty row -> 1.
    assert [Counter(expected)[i] for i in (0, 5, 7)] == [2, 3, 1]
    # Quirk 15: r_i = 1.29 < 1.5 rounds to a single copy, so nothing is oversampled.
    assert sorted(RepeatFactorSampler(LABELS, threshold=0.5)) == list(range(8))
    # Two ranks: pad by repeating the start, then stride.
    total = math.ceil(len(expected) / 2) * 2
    padded = (expected + expected)[:total]
    for rank in range(2):
        r = RepeatFactorSampler(LABELS, threshold=2.0, seed=42, num_replicas=2, rank=rank)
        r.set_epoch(3)
        assert list(r) == padded[rank::2] and len(r) == total // 2


def test_repeat_factor_stochastic_rounding_and_union():
    s = RepeatFactorSampler(LABELS, threshold=0.5, rounding="stochastic", seed=0)
    totals = np.zeros(8)
    epochs = 400
    for epoch in range(epochs):
        s.set_epoch(epoch)
        counts = Counter(s)
        assert len(s) == sum(counts.values())
        for i in range(8):
            assert counts[i] in (math.floor(s.repeat_factors[i]), math.ceil(s.repeat_factors[i]))
            totals[i] += counts[i]
    # Mean copies per epoch -> r_i (std of the mean < 0.025 here).
    assert np.allclose(totals / epochs, s.repeat_factors, atol=0.1)
    s.set_epoch(9)
    again = RepeatFactorSampler(LABELS, threshold=0.5, rounding="stochastic", seed=0)
    again.set_epoch(9)
    assert list(s) == list(again)
    labels = np.random.RandomState(0).rand(60, 5) < 0.15
    _union_matches_single(
        lambda w, r: RepeatFactorSampler(labels, threshold=0.3, num_replicas=w, rank=r), 2, 4
    )


def test_repeat_factor_errors():
    with pytest.raises(ValueError, match="labels must be a non-empty N x C array"):
        RepeatFactorSampler(np.zeros(5))
    with pytest.raises(ValueError, match="rounding must be 'round' or 'stochastic'"):
        RepeatFactorSampler(LABELS, rounding="floor")


# ---------------------------------------------------------------- ClassAwareSampler


def test_class_aware_length_groups_and_balance():
    rs = np.random.RandomState(1)
    labels = np.zeros((40, 4), dtype=int)
    labels[:30, 0] = 1  # head class
    labels[30:36, 1] = 1
    labels[36:39, 2] = 1
    labels[39, 3] = 1  # one-image tail class
    labels[rs.rand(40) < 0.1, 2] = 1
    s = ClassAwareSampler(labels, num_samples_cls=3, reduce=4, seed=0)
    max_size = max(int(labels[:, c].sum()) for c in range(4))
    assert len(s) == int(max_size * 4 / 4)
    seq = list(s)
    assert len(seq) == len(s)
    groups = [seq[i : i + 3] for i in range(0, len(seq) - 2, 3)]
    # Each group of 3 comes from one class; every full pass of 4 groups visits each class once.
    visited = []
    for group in groups:
        shared = set.intersection(*({c for c in range(4) if labels[i, c]} for i in group))
        assert shared
        visited.append(shared)
    for p in range(len(groups) // 4):
        candidates = visited[4 * p : 4 * p + 4]
        assert any(all(c in cands for c, cands in zip(perm, candidates)) for perm in _perms(4))
    assert Counter(seq)[39] >= 3  # the tail image is drawn once per visit of class 3
    s.set_epoch(1)
    assert list(s) != seq
    s.set_epoch(0)
    assert list(s) == seq


def _perms(n):
    import itertools

    return itertools.permutations(range(n))


def test_class_aware_never_draws_unlabelled_and_union():
    labels = np.zeros((20, 3), dtype=int)
    labels[:8, 0] = 1
    labels[8:12, 1] = 1
    labels[12:14, 2] = 1  # rows 14-19 have no positive
    s = ClassAwareSampler(labels, num_samples_cls=2, reduce=1)
    assert all(i < 14 for i in s)
    _union_matches_single(lambda w, r: ClassAwareSampler(labels, 2, 1, num_replicas=w, rank=r), 2, 3)
    with pytest.raises(ValueError, match=r"classes without positive images: \[2\]"):
        ClassAwareSampler(labels[:12])


# ---------------------------------------------------------------- RandomIdentitySampler


def _pids():
    # 10 identities with 1..10 images each, interleaved so indices of one identity are scattered.
    pids = [pid for pid in range(10) for _ in range(pid + 1)]
    return list(np.random.RandomState(0).permutation(pids))


def test_identity_sampler_pk_batches():
    pids = _pids()
    s = RandomIdentitySampler(pids, batch_size=8, num_instances=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) > 0
    used = Counter()
    for batch in batches:
        assert len(batch) == 8
        ids = [pids[i] for i in batch]
        # P=2 identities, K=4 consecutive images each.
        assert len(set(ids[:4])) == 1 and len(set(ids[4:])) == 1 and ids[0] != ids[4]
        used.update(batch)
    # Identities with >= K images use each image at most once per epoch (no replacement).
    for i, count in used.items():
        if pids.count(pids[i]) >= 4:
            assert count == 1
    k = 4
    assert s.torchreid_length == sum(max(n, k) - max(n, k) % k for n in range(1, 11))
    assert sum(len(b) for b in batches) <= s.torchreid_length


def test_identity_sampler_small_identity_with_replacement_and_determinism():
    pids = ["a"] * 2 + ["b"] * 5 + ["c"] * 4
    s = RandomIdentitySampler(pids, batch_size=4, num_instances=4, seed=3)
    batches = list(s)
    for batch in batches:
        if pids[batch[0]] == "a":
            assert set(batch) <= {0, 1} and len(batch) == 4
    assert sorted(pids[b[0]] for b in batches) == ["a", "b", "c"]
    assert list(s) == batches
    s.set_epoch(1)
    other = RandomIdentitySampler(pids, batch_size=4, num_instances=4, seed=3)
    other.set_epoch(1)
    assert list(s) == list(other)


def test_identity_sampler_union_of_ranks_and_dataloader():
    pids = _pids()

    def make(w, r):
        return RandomIdentitySampler(pids, batch_size=4, num_instances=2, seed=1, num_replicas=w, rank=r)

    single = list(make(1, 0))
    ranks = [list(make(2, r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(make(2, 0))
    single_big = list(RandomIdentitySampler(pids, batch_size=8, num_instances=2, seed=1))
    for k in range(len(ranks[0])):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(single_big[k])
        for batch in (ranks[0][k], ranks[1][k]):  # each rank's batch is itself P x K
            ids = [pids[i] for i in batch]
            assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert single  # the 1-rank sampler with batch 4 also runs
    loader = DataLoader(torch.arange(len(pids)), batch_sampler=make(1, 0))
    assert [b.tolist() for b in loader] == single and len(loader) == len(single)


def test_identity_sampler_errors():
    with pytest.raises(
        ValueError, match=r"batch_size \(6\) must be a positive multiple of num_instances \(4\)"
    ):
        RandomIdentitySampler([0, 1], batch_size=6)
    with pytest.raises(
        ValueError, match=r"3 identities, but a global batch needs 4 \(2 per rank x 2 ranks\)"
    ):
        RandomIdentitySampler([0, 1, 2], batch_size=8, num_instances=4, num_replicas=2)
