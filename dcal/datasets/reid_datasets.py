"""Re-ID datasets for DCAL: VeRi-776, Market-1501 and DukeMTMC-reID readers, and the transforms.

VeRi-776 (``image_train/``, ``image_query/``, ``image_test/`` = gallery, ``name_*.txt``,
``train_label.xml`` / ``test_label.xml``). Changes from the replication (quirk 14): the XML files
declare ``encoding="gb2312"``, which Python's expat parser refuses, so the bytes are decoded with the
declared codec first; camera ids such as ``c001`` are read as 1; training identities are relabelled to
0..C-1. Every listed file name must agree with its XML entry (``<vehicleID>_c<camera>_...jpg``).

Market-1501 / DukeMTMC-reID (``bounding_box_train/``, ``query/``, ``bounding_box_test/``; names
``<pid>_c<cam>...jpg``): the standard protocol (torchreid's ``Market1501``): junk images (pid -1) are
ignored everywhere; distractors (pid 0) stay in the gallery.

Transforms (TransReID recipe, which DCAL's re-ID settings match): resize, flip 0.5, pad 10, random
crop, normalise, random erasing 0.5. The replication used colour jitter and no erasing.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from torchvision import transforms as T

from common.data.errors import DataError, ParseError
from common.data.lists import read_lines
from dcal.datasets.base_dataset import Record
from dcal.datasets.fgvc_datasets import find_dataset_dir

logger = logging.getLogger(__name__)

_DECL = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["'][^>]*\?>""")
_CAMERA = re.compile(r"^c?0*(\d+)$")
_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _line_of(text: str, needle: str) -> int | None:
    pos = text.find(needle)
    return None if pos < 0 else text.count("\n", 0, pos) + 1


def read_veri_xml(path: str | Path) -> dict[str, tuple[int, int]]:
    """Parse a VeRi label XML into ``{imageName: (vehicle id, camera id)}``.

    Args:
        path: ``train_label.xml`` or ``test_label.xml``; the declared encoding (gb2312 in the
            public release) is honoured.

    Returns:
        Mapping from image file name to integer (vehicleID, cameraID), e.g. ``"0002"``/``"c012"``
        -> (2, 12).

    Raises:
        DataError / ParseError: missing file, undecodable bytes, malformed XML, or an ``Item``
        lacking an attribute or with an unreadable id (names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"VeRi label file not found: {path}")
    raw = path.read_bytes()
    m = _DECL.match(raw)
    encoding = m.group(1).decode("ascii") if m else "utf-8"
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ParseError(path, None, f"cannot decode as declared encoding {encoding!r}: {exc}") from None
    # expat only handles a few single-byte encodings itself, so it gets an already-decoded string
    # without the declaration (the declaration would make it try gb2312 again and fail).
    body = text[m.end():] if m else text
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        line = exc.position[0] + (text[: m.end()].count("\n") if m else 0)
        raise ParseError(path, line, f"malformed XML: {exc}") from None
    out: dict[str, tuple[int, int]] = {}
    for item in root.iter("Item"):
        name = item.get("imageName")
        vid, cam = item.get("vehicleID"), item.get("cameraID")
        where = _line_of(text, f'imageName="{name}"') if name else None
        if name is None or vid is None or cam is None:
            raise ParseError(path, where, f"Item without imageName/vehicleID/cameraID: {dict(item.attrib)}")
        cam_m = _CAMERA.match(cam.strip())
        if not vid.strip().lstrip("-").isdecimal() or cam_m is None:
            raise ParseError(path, where, f"unreadable vehicleID {vid!r} or cameraID {cam!r} for {name}")
        if name in out:
            raise ParseError(path, where, f"duplicate imageName {name}")
        out[name] = (int(vid), int(cam_m.group(1)))
    if not out:
        raise ParseError(path, None, "no <Item> elements found")
    return out


def parse_reid_name(name: str, source: tuple[str | Path, int | None]) -> tuple[int, int]:
    """(pid, camera) from a ``<pid>_c<cam>...`` file name; ParseError naming ``source`` otherwise."""
    m = _NAME.match(name)
    if m is None:
        raise ParseError(source[0], source[1], f"file name {name!r} is not '<id>_c<camera>_...'")
    return int(m.group(1)), int(m.group(2))


def _relabel(records: list[Record]) -> list[Record]:
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [Record(r.path, mapping[r.pid], r.camid, r.pid, r.name, r.source) for r in records]


def _veri_split(root: Path, list_name: str, folder: str, labels: dict[str, tuple[int, int]] | None,
                xml_name: str, require_xml: bool) -> list[Record]:
    list_path = root / list_name
    records, from_names = [], 0
    for lineno, name in read_lines(list_path):
        pid, cam = parse_reid_name(name, (list_path, lineno))
        if labels is not None and name in labels:
            if labels[name] != (pid, cam):
                raise ParseError(list_path, lineno, f"{name}: file name says id {pid} camera {cam}, "
                                 f"{xml_name} says id {labels[name][0]} camera {labels[name][1]}")
        elif require_xml:
            raise ParseError(list_path, lineno, f"{name} has no Item in {root / xml_name}")
        else:
            from_names += 1
        if pid == -1:
            continue  # junk
        records.append(Record(str(root / folder / name), -1, cam, pid, name, (str(list_path), lineno)))
    if from_names:
        logger.info("%s: %d names not in %s; ids taken from the file names", list_path, from_names, xml_name)
    if not records:
        raise DataError(f"{list_path}: no images listed")
    return records


def read_veri776(data_root: str | Path) -> tuple[list[Record], list[Record], list[Record]]:
    """Read VeRi-776 train / query / gallery.

    Args:
        data_root: the ``VeRi`` folder or its parent.

    Returns:
        ``(train, query, gallery)``; train labels relabelled to 0..C-1, ``pid``/``camid`` original.
    """
    root = find_dataset_dir(data_root, "VeRi", "name_train.txt")
    train_xml = read_veri_xml(root / "train_label.xml")
    test_xml = read_veri_xml(root / "test_label.xml")
    train = _relabel(_veri_split(root, "name_train.txt", "image_train", train_xml, "train_label.xml", True))
    query = _veri_split(root, "name_query.txt", "image_query", test_xml, "test_label.xml", False)
    gallery = _veri_split(root, "name_test.txt", "image_test", test_xml, "test_label.xml", True)
    _log_stats("VeRi-776", root, train, query, gallery)
    return train, query, gallery


def _read_market_dir(folder: Path, relabel: bool) -> list[Record]:
    if not folder.is_dir():
        raise DataError(f"data.data_root: folder not found: {folder}")
    records = []
    for path in sorted(folder.glob("*.jpg")):
        pid, cam = parse_reid_name(path.name, (path, None))
        if pid == -1:
            continue  # junk images are ignored, as in the standard Market-1501 protocol
        records.append(Record(str(path), -1, cam, pid, path.name))
    if not records:
        raise DataError(f"{folder}: no usable .jpg images")
    return _relabel(records) if relabel else records


def _market_reader(subdir: str):
    def read(data_root: str | Path) -> tuple[list[Record], list[Record], list[Record]]:
        root = find_dataset_dir(data_root, subdir, "bounding_box_train")
        train = _read_market_dir(root / "bounding_box_train", True)
        query = _read_market_dir(root / "query", False)
        gallery = _read_market_dir(root / "bounding_box_test", False)
        _log_stats(subdir, root, train, query, gallery)
        return train, query, gallery

    return read


def _log_stats(name: str, root: Path, train: list[Record], query: list[Record], gallery: list[Record]) -> None:
    logger.info("%s %s: train %d images / %d ids, query %d / %d ids, gallery %d / %d ids", name, root,
                len(train), len({r.pid for r in train}), len(query), len({r.pid for r in query}),
                len(gallery), len({r.pid for r in gallery}))


REID_READERS = {
    "veri776": read_veri776,
    "market1501": _market_reader("Market-1501-v15.09.15"),
    "dukemtmc": _market_reader("DukeMTMC-reID"),
}


def read_reid(dataset_name: str, data_root: str | Path) -> tuple[list[Record], list[Record], list[Record]]:
    """Dispatch to the reader of ``data.dataset_name`` (error lists the implemented names)."""
    if dataset_name not in REID_READERS:
        raise DataError(f"data.dataset_name '{dataset_name}': no re-ID reader in this re-implementation "
                        f"(available: {', '.join(REID_READERS)})")
    return REID_READERS[dataset_name](data_root)


def build_reid_transform(image_size: Sequence[int], *, train: bool, mean: Sequence[float],
                         std: Sequence[float]) -> T.Compose:
    """Re-ID train/eval transform (see the module docstring)."""
    size = tuple(image_size)
    if not train:
        return T.Compose([T.Resize(size, antialias=True), T.ToTensor(), T.Normalize(mean, std)])
    return T.Compose([
        T.Resize(size, antialias=True), T.RandomHorizontalFlip(0.5), T.Pad(10), T.RandomCrop(size),
        T.ToTensor(), T.Normalize(mean, std), T.RandomErasing(p=0.5, value=0),
    ])


def _describe_reid(fmt: str, root: str | Path, opts: dict[str, str], *, query_in_gallery: bool):
    from common.data.description import DatasetDescription, SplitSamples, take_options
    from common.splits import reid_rules

    take_options(opts, {})
    train, query, gallery = read_reid(fmt, root)

    def samples(records: list[Record]) -> SplitSamples:
        return SplitSamples(ids=[r.name for r in records], files=[(r.path,) for r in records],
                            levels={"identity": [str(r.pid) for r in records], "camera": [str(r.camid) for r in records]},
                            sources=[f"{r.source[0]}:{r.source[1]}" if r.source else None for r in records])

    rules = reid_rules("query", "gallery")
    if query_in_gallery:
        rules.append({"splits": ["query", "gallery"], "levels": ["image"],
                      "reason": "VeRi-776 lists every query image in name_test.txt too; the same-camera rule drops it "
                                "from its own ranking"})
    notes = ["junk images (id -1) are left out, as the readers do; train identities must not reach query / gallery"]
    return DatasetDescription(fmt, Path(root), {"train": samples(train), "query": samples(query),
                                                "gallery": samples(gallery)}, allowed_overlaps=rules, notes=notes)


def describe_veri776(root: str | Path, **opts: str):
    """VeRi-776 as ``train_reid.py`` reads it (``read_veri776``), for ``python -m common.data.check veri776``."""
    return _describe_reid("veri776", root, opts, query_in_gallery=True)


def describe_market1501(root: str | Path, **opts: str):
    """Market-1501 as ``train_reid.py`` reads it, for ``python -m common.data.check market1501``."""
    return _describe_reid("market1501", root, opts, query_in_gallery=False)
