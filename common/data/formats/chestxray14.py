"""NIH ChestX-ray14 as distributed on Kaggle (reference: charm_xray.md §3.1-3.2).

Layout under ``root``::

    Data_Entry_2017.csv            12 columns: the header ends with a comma, and the bracketed
                                   "OriginalImage[Width,Height]" / "OriginalImagePixelSpacing[x,y]"
                                   headers each span two CSV fields
    train_val_list.txt             official split, one image name per line
    test_list.txt
    images_001/images/*.png ...    (also accepted: images/*.png, the CHARM README layout)

Labels are matched exactly against :data:`DISEASE_LABELS` ("No Finding" = all zeros). CHARM-Xray
matches names as substrings (charm_xray.md quirk 24); for the 14 NIH names both give the same
vector, and exact matching additionally rejects misspelt names. The official split is returned as
read; CHARM-Xray's own random patient split is the paper folder's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.data.errors import DataError, ParseError
from common.data.lists import ImageRecord, csv_line, parse_multilabel_string, read_csv, read_name_list

# CHARM-Xray's DISEASE_LABELS: the model's output order (charm_xray.md §3.1).
DISEASE_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
)
NO_FINDING = "No Finding"
CSV_NAME = "Data_Entry_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
# As pandas reads the real file: 12 columns, the last one unnamed (trailing comma).
CSV_COLUMNS: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "Unnamed: 11",
)
_IMAGE_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")


@dataclass(frozen=True)
class ChestXray14Record:
    """One row of ``Data_Entry_2017.csv`` with its image located and its official split.

    ``labels`` follows :data:`DISEASE_LABELS`; ``split`` is "train_val" or "test"; ``line`` is the
    row's line in ``source`` (the CSV).
    """

    path: str
    labels: tuple[int, ...]
    patient_id: int
    follow_up: int
    view_position: str
    split: str
    source: str
    line: int

    def image_record(self) -> ImageRecord:
        """This row as an :class:`ImageRecord` for :class:`common.data.datasets.MultiLabelImageDataset`."""
        return ImageRecord((self.path,), tuple(float(v) for v in self.labels), self.source, self.line)


def _index_images(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pattern in ("*/images/*.png", "images/*.png"):
        for path in sorted(root.glob(pattern)):
            if path.name in found and found[path.name] != path:
                raise DataError(f"image {path.name} found twice under {root}: {found[path.name]} and {path}")
            found[path.name] = path
    return found


def _split_of(root: Path) -> dict[str, str]:
    split: dict[str, str] = {}
    for name, file in (("train_val", TRAIN_VAL_LIST), ("test", TEST_LIST)):
        path = root / file
        for image in read_name_list(path):
            if image in split:
                raise DataError(f"{path}: image {image} is also listed in {TRAIN_VAL_LIST}")
            split[image] = name
    return split


def read_chestxray14(root: str | Path, *, missing_images: str = "error") -> list[ChestXray14Record]:
    """Read NIH ChestX-ray14 under ``root`` (see the module docstring for the layout).

    Args:
        root: folder holding ``Data_Entry_2017.csv``, the two split lists and the image folders.
        missing_images: "error" (the trainers) stops at the first CSV image absent from the image
            folders; "keep" (``common.data.check``, which lists them all) keeps its record with the
            path ``root/*/images/<name>``, a pattern no file matches.

    Returns:
        One record per CSV row, in file order.

    Raises:
        DataError: a missing file, an image listed in both split lists, a CSV image missing on disk
            or absent from both lists, or a list entry absent from the CSV.
        ParseError: a bad CSV row (unknown finding, malformed image name, patient id that does not
            match the image name, duplicate image, non-integer id); the message gives file:line.
    """
    if missing_images not in ("error", "keep"):
        raise ValueError(f"missing_images must be 'error' or 'keep', got {missing_images!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ChestX-ray14 root is not a directory: {root}")
    csv_path = root / CSV_NAME
    frame = read_csv(
        csv_path,
        ["Image Index", "Finding Labels", "View Position"],
        dtype={"Follow-up #": int, "Patient ID": int},
    )
    split = _split_of(root)
    images = _index_images(root)
    records: list[ChestXray14Record] = []
    seen: dict[str, int] = {}
    for row, name, findings, follow_up, patient, view in zip(
        frame.index,
        frame["Image Index"],
        frame["Finding Labels"],
        frame["Follow-up #"],
        frame["Patient ID"],
        frame["View Position"],
    ):
        line = csv_line(row)
        name = str(name).strip()
        match = _IMAGE_NAME.match(name)
        if match is None:
            raise ParseError(csv_path, line, f"Image Index {name!r} is not <8-digit patient>_<3-digit follow-up>.png")
        if int(match.group(1)) != int(patient):
            raise ParseError(csv_path, line, f"Patient ID {patient} does not match image name {name}")
        if name in seen:
            raise ParseError(csv_path, line, f"duplicate Image Index {name} (first at line {seen[name]})")
        seen[name] = line
        labels = parse_multilabel_string(
            "" if not isinstance(findings, str) else findings,
            DISEASE_LABELS,
            source=csv_path,
            line=line,
            empty_names=(NO_FINDING,),
        )
        if name not in split:
            raise DataError(f"{csv_path}:{line}: image {name} is in neither {TRAIN_VAL_LIST} nor {TEST_LIST}")
        if name not in images and missing_images == "error":
            raise DataError(f"{csv_path}:{line}: image {name} not found under {root}/*/images/")
        records.append(
            ChestXray14Record(
                path=str(images.get(name, root / "*" / "images" / name)),
                labels=labels,
                patient_id=int(patient),
                follow_up=int(follow_up),
                view_position=str(view),
                split=split[name],
                source=str(csv_path),
                line=line,
            )
        )
    if not records:
        raise DataError(f"{csv_path}: no rows")
    extra = sorted(set(split) - set(seen))
    if extra:
        raise DataError(f"{root / TRAIN_VAL_LIST} / {TEST_LIST}: {len(extra)} listed image(s) not in {CSV_NAME}, e.g. {extra[0]}")
    return records


def describe(root: str | Path, **opts: str):
    """The folder as :func:`read_chestxray14` reads it, for ``python -m common.data.check chestxray14``.

    Splits are the official lists (``train_val`` / ``test``) with the patient of every image; a CSV
    image missing from the image folders is kept and reported by the check. No options.
    """
    from common.data.description import DatasetDescription, SplitSamples, positives, take_options

    take_options(opts, {})
    records = read_chestxray14(root, missing_images="keep")
    splits = {}
    for split in ("train_val", "test"):
        rows = [r for r in records if r.split == split]
        splits[split] = SplitSamples(
            ids=[Path(r.path).name for r in rows], files=[(r.path,) for r in rows],
            labels=[positives(r.labels) for r in rows], levels={"patient": [str(r.patient_id) for r in rows]},
            sources=[f"{r.source}:{r.line}" for r in rows])
    notes = ["splits: the official train_val_list.txt / test_list.txt; charm_xray's default --split charm_notebook "
             "makes its own patient split of the CSV instead (and reports the patients it leaks)"]
    return DatasetDescription("chestxray14", Path(root), splits, DISEASE_LABELS, notes=notes)
