"""Record-based image dataset shared by the DCAL FGVC and re-ID readers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch.utils.data import Dataset

from common.data.images import load_image


@dataclass(frozen=True)
class Record:
    """One image: path, integer label (class or relabelled identity), camera (-1 for FGVC), and
    where it was listed (list file, line) for error messages."""

    path: str
    label: int
    camid: int = -1
    pid: int = -1
    name: str = ""
    source: tuple[str, int] | None = None


class ImageRecordDataset(Dataset):
    """Loads ``records`` with ``transform``.

    Items are tuples: ``(image, label)`` when ``with_camera`` is False, else
    ``(image, label, pid, camid)`` (re-ID: label = training class index, pid = original identity).
    """

    def __init__(self, records: Sequence[Record], transform: Callable | None, *, with_camera: bool = False):
        self.records = list(records)
        self.transform = transform
        self.with_camera = with_camera

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        img = load_image(rec.path, "RGB", source=rec.source)
        if self.transform is not None:
            img = self.transform(img)
        if not self.with_camera:
            return img, rec.label
        return img, rec.label, rec.pid, rec.camid

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]
