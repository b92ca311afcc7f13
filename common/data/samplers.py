"""Distributed-aware samplers: sharded random, repeat-factor, class-aware and P x K identity sampling.

Shared contract:
- ``num_replicas`` / ``rank`` default to 1 / 0 (single process); ``seed`` and :meth:`set_epoch`
  fix the order, so the same ``(seed, epoch)`` always yields the same indices.
- Every rank builds the same global sequence and takes its share by striding (rank ``r`` takes
  positions ``r, r + W, r + 2W, ...``; :class:`RandomIdentitySampler` strides over whole K-chunks).
  Hence, with per-rank batch size B, the union over ranks of batch k is exactly the single-process
  batch k of size B x W.
- Randomness comes from generators built per epoch, never from the global RNGs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ClassAwareSampler", "RandomIdentitySampler", "RepeatFactorSampler", "ShardedRandomSampler"]


class _EpochSampler(Sampler):
    """Rank bookkeeping and the epoch counter shared by all samplers here."""

    def __init__(self, *, seed: int, num_replicas: int, rank: int):
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``iter()`` yields.

        Args:
            epoch: epoch number (the generator is seeded with ``seed + epoch``).
        """
        self.epoch = int(epoch)

    def _torch_generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return g

    def _pad_and_shard(self, order: list[int]) -> list[int]:
        """Pad ``order`` by repeating its start to a multiple of W, then take this rank's stride."""
        total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
        padded = list(order)
        while len(padded) < total:
            padded += order[: total - len(padded)]
        return padded[self.rank : total : self.num_replicas]


class ShardedRandomSampler(_EpochSampler):
    """Shuffled (train) or sequential (eval) sampler split across ranks.

    With ``pad=True`` (training) the order equals ``torch.utils.data.DistributedSampler``: a
    ``randperm`` seeded with ``seed + epoch``, wrapped around to a multiple of W, rank r takes
    ``r::W``. With ``pad=False`` (evaluation) nothing is added, so ranks may get one index fewer
    and every index is seen exactly once over all ranks. ``drop_last=True`` instead drops the tail
    that does not divide by W.

    Args:
        n: dataset length.
        shuffle: permute (train) or keep ``0..n-1`` (eval).
        seed: base seed.
        num_replicas: world size W.
        rank: this process's rank.
        drop_last: drop the tail to a multiple of W (excludes ``pad``).
        pad: wrap around to a multiple of W.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        pad: bool = True,
    ):
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if drop_last and pad:
            raise ValueError("ShardedRandomSampler: drop_last and pad exclude each other; set pad=False")
        self.n = n
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pad = pad
        if drop_last:
            self.total_size = (n // num_replicas) * num_replicas
        elif pad:
            self.total_size = math.ceil(n / num_replicas) * num_replicas
        else:
            self.total_size = n

    @property
    def num_padded(self) -> int:
        """How many wrapped-around duplicates were added over all ranks (to drop after gathering)."""
        return max(self.total_size - self.n, 0)

    def _order(self) -> list[int]:
        if self.shuffle:
            return torch.randperm(self.n, generator=self._torch_generator()).tolist()
        return list(range(self.n))

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.drop_last:
            order = order[: self.total_size]
        elif self.pad and order:
            return iter(self._pad_and_shard(order))
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return len(range(self.rank, self.total_size, self.num_replicas))


class RepeatFactorSampler(_EpochSampler):
    """Repeat-factor ("CAS") sampling exactly as CXR-LT's ``RepeatFactorDistributedSampler``.

    Rule of ``cxrlt.md`` §5.2 (``train_csra_head.py``), with the defaults reproducing it:

    1. ``count_c`` = number of positives (label > 0.5) of class c, clipped to >= 1. With
       ``frequency="occurrence"`` (original) ``f_c = count_c / sum(count)``, the share of label
       occurrences (quirk 16); ``"image"`` gives LVIS's ``f_c = count_c / N``.
    2. ``r_c = max(1, sqrt(threshold / max(f_c, 1e-12)))``; per image ``r_i`` = max of ``r_c`` over
       its positive classes, 1 for rows without positives (empty rows are neither dropped nor
       boosted; PadChest's "Normal" is an ordinary class column); ``r_i`` clipped to
       ``[1, max_repeat]``. Exposed as ``repeat_factors``.
    3. Each epoch: ``0..N-1`` is shuffled with ``numpy.random.RandomState(seed + epoch)`` (the
       original uses seed 42), then every entry is replaced by ``round(r_i)`` consecutive copies
       (``rounding="round"``, half to even, so ``r_i < 1.5`` never repeats; quirk 15) or by
       ``floor(r_i) + Bernoulli(frac(r_i))`` copies drawn from the same RandomState after the
       shuffle (``rounding="stochastic"``, the LVIS/Detectron2 rounding).
    4. The list is padded to a multiple of W by repeating its start; rank r takes ``r::W``.

    Args:
        labels: N x C array of 0/1 labels.
        threshold: T.
        max_repeat: upper clip of ``r_i``.
        seed: base seed of the per-epoch RandomState.
        num_replicas: world size W.
        rank: this process's rank.
        frequency: "occurrence" (original) or "image".
        rounding: "round" (original) or "stochastic".
    """

    def __init__(
        self,
        labels: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
        *,
        threshold: float = 0.01,
        max_repeat: float = 10.0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        frequency: Literal["occurrence", "image"] = "occurrence",
        rounding: Literal["round", "stochastic"] = "round",
    ):
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] == 0:
            raise ValueError(
                f"RepeatFactorSampler: labels must be a non-empty N x C array, got shape {labels.shape}"
            )
        if frequency not in ("occurrence", "image"):
            raise ValueError(
                f"RepeatFactorSampler: frequency must be 'occurrence' or 'image', got {frequency!r}"
            )
        if rounding not in ("round", "stochastic"):
            raise ValueError(
                f"RepeatFactorSampler: rounding must be 'round' or 'stochastic', got {rounding!r}"
            )
        if threshold <= 0 or max_repeat < 1:
            raise ValueError(
                f"RepeatFactorSampler: need threshold > 0 and max_repeat >= 1, got {threshold}, {max_repeat}"
            )
        positive = labels > 0.5
        counts = np.maximum(positive.sum(axis=0), 1).astype(np.float64)
        denom = counts.sum() if frequency == "occurrence" else float(labels.shape[0])
        self.class_frequencies = counts / denom
        self.class_repeat_factors = np.maximum(
            1.0, np.sqrt(threshold / np.maximum(self.class_frequencies, 1e-12))
        )
        per_image = np.where(positive, self.class_repeat_factors[None, :], 1.0).max(axis=1)
        self.repeat_factors = np.clip(per_image, 1.0, max_repeat)
        self.rounding = rounding
        self.n = labels.shape[0]

    def _global_list(self) -> list[int]:
        rs = np.random.RandomState(self.seed + self.epoch)
        order = np.arange(self.n)
        rs.shuffle(order)
        factors = self.repeat_factors[order]
        if self.rounding == "round":
            copies = np.rint(factors).astype(np.int64)
        else:
            whole = np.floor(factors)
            copies = (whole + (rs.random_sample(self.n) < factors - whole)).astype(np.int64)
        return np.repeat(order, copies).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._pad_and_shard(self._global_list()))

    def __len__(self) -> int:
        return math.ceil(len(self._global_list()) / self.num_replicas)


class ClassAwareSampler(_EpochSampler):
    """Class-aware sampling of the official DB-loss code (``golden_references.md`` §6.2).

    The classes are visited in random order, reshuffled after each full pass; each visit draws
    ``num_samples_cls`` consecutive images from that class's image list, itself cyclically
    reshuffled when exhausted. Epoch length = ``int(max class size x C / reduce)``. Images without
    any positive label are never drawn. Deviation: the cycling iterators are rebuilt every epoch
    from ``seed + epoch`` (the original carries them across epochs) so an epoch is reproducible on
    its own. For W > 1 the global sequence is extended to a multiple of W before striding.

    Args:
        labels: N x C array of 0/1 labels; every class needs at least one positive image.
        num_samples_cls: images drawn per class visit.
        reduce: divisor of the epoch length.
        seed: base seed.
        num_replicas: world size W.
        rank: this process's rank.
    """

    def __init__(
        self,
        labels: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
        num_samples_cls: int = 3,
        reduce: int = 4,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] == 0:
            raise ValueError(
                f"ClassAwareSampler: labels must be a non-empty N x C array, got shape {labels.shape}"
            )
        if num_samples_cls < 1 or reduce < 1:
            raise ValueError(
                f"ClassAwareSampler: num_samples_cls and reduce must be >= 1, got {num_samples_cls}, {reduce}"
            )
        self.class_indices = [np.flatnonzero(labels[:, c] > 0.5).tolist() for c in range(labels.shape[1])]
        empty = [c for c, idx in enumerate(self.class_indices) if not idx]
        if empty:
            raise ValueError(f"ClassAwareSampler: classes without positive images: {empty}")
        self.num_samples_cls = num_samples_cls
        self.num_samples = int(max(len(x) for x in self.class_indices) * labels.shape[1] / reduce)
        self.total_size = math.ceil(self.num_samples / num_replicas) * num_replicas

    def _global_list(self) -> list[int]:
        g = self._torch_generator()

        def cycle(items: list[int]) -> Iterator[int]:
            while True:
                for k in torch.randperm(len(items), generator=g).tolist():
                    yield items[k]

        class_cycle = cycle(list(range(len(self.class_indices))))
        image_cycles = [cycle(idx) for idx in self.class_indices]
        out: list[int] = []
        while len(out) < self.total_size:
            images = image_cycles[next(class_cycle)]
            out.extend(next(images) for _ in range(self.num_samples_cls))
        return out[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._global_list()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.total_size // self.num_replicas


class RandomIdentitySampler(_EpochSampler):
    """P x K identity sampling for re-ID (torchreid's ``RandomIdentitySampler``), as a batch sampler.

    Yields lists of ``batch_size`` indices: use ``DataLoader(dataset, batch_sampler=sampler)``
    (not ``sampler=``, which would let a mismatched ``batch_size`` split identities). Each batch
    holds P = ``batch_size // num_instances`` identities with exactly K = ``num_instances`` images
    each, identity by identity.

    Per epoch, as in torchreid: every identity's images are shuffled (an identity with fewer than
    K images is first drawn K times with replacement) and cut into chunks of K (a last incomplete
    chunk is dropped); then while at least P x W identities still have chunks, P x W of them are
    picked at random and each contributes its next chunk. Rank r takes chunks ``r::W`` of that
    sequence, so the union of the ranks' batch k is the single-process batch k of size
    ``batch_size`` x W.

    ``torchreid_length`` is torchreid's ``__len__`` (images in all chunks: sum over identities of
    ``max(n, K)`` rounded down to a multiple of K), an upper bound of what an epoch yields;
    ``len(sampler)`` is the exact number of batches this rank yields in the current epoch.

    Args:
        pids: identity label of every dataset index (any hashable values).
        batch_size: per-rank batch size, a multiple of ``num_instances``.
        num_instances: K.
        seed: base seed.
        num_replicas: world size W.
        rank: this process's rank.
    """

    def __init__(
        self,
        pids: Sequence[Hashable],
        batch_size: int,
        num_instances: int = 4,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(
                f"RandomIdentitySampler: batch_size ({batch_size}) must be a positive multiple of "
                f"num_instances ({num_instances})"
            )
        groups: dict[Hashable, list[int]] = {}
        for index, pid in enumerate(pids):
            groups.setdefault(pid, []).append(index)
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.pids_per_batch = batch_size // num_instances
        self.index_groups = list(groups.values())
        needed = self.pids_per_batch * num_replicas
        if len(self.index_groups) < needed:
            raise ValueError(
                f"RandomIdentitySampler: {len(self.index_groups)} identities, but a global batch needs "
                f"{needed} ({self.pids_per_batch} per rank x {num_replicas} ranks)"
            )
        k = num_instances
        self.torchreid_length = sum(max(len(g), k) - max(len(g), k) % k for g in self.index_groups)
        self._cache: tuple[int, list[list[int]]] | None = None

    def _global_chunks(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        g = self._torch_generator()
        k = self.num_instances
        chunks_per_id: list[list[list[int]]] = []
        for indices in self.index_groups:
            if len(indices) < k:
                picks = torch.randint(len(indices), (k,), generator=g).tolist()
                pool = [indices[p] for p in picks]
            else:
                pool = [indices[p] for p in torch.randperm(len(indices), generator=g).tolist()]
            chunks_per_id.append([pool[s : s + k] for s in range(0, len(pool) - k + 1, k)])
        available = list(range(len(chunks_per_id)))
        per_global_batch = self.pids_per_batch * self.num_replicas
        out: list[list[int]] = []
        while len(available) >= per_global_batch:
            chosen = [
                available[p] for p in torch.randperm(len(available), generator=g)[:per_global_batch].tolist()
            ]
            for ident in chosen:
                out.append(chunks_per_id[ident].pop(0))
                if not chunks_per_id[ident]:
                    available.remove(ident)
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._global_chunks()[self.rank :: self.num_replicas]
        p = self.pids_per_batch
        for start in range(0, len(mine), p):
            yield [index for chunk in mine[start : start + p] for index in chunk]

    def __len__(self) -> int:
        return len(self._global_chunks()) // (self.pids_per_batch * self.num_replicas)
