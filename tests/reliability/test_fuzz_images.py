"""Generated bad image files for ``common.data.load_image`` (every loader's reader): truncated and
bit-flipped PNG/JPEG, zero bytes, other formats, 16-bit and odd modes. Each case ends in an image of
the requested mode or in one one-line ``DataError`` naming the file; never another exception type."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.data import load_image
from common.data.datasets import MultiLabelImageDataset
from common.data.errors import DataError
from common.data.lists import ImageRecord

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _encoded(mode: str, fmt: str, size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16))
        fmt = "PNG"  # 16-bit grayscale PNG, as NIH/PadChest ship; JPEG cannot hold it
    elif mode == "F":
        img = Image.fromarray(rng.random((size, size)).astype(np.float32))
        fmt = "TIFF"
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "P": 1, "1": 1}[mode]
        arr = rng.integers(0, 255, (size, size, channels), dtype=np.uint8)
        img = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, "L" if channels == 1 else None)
        if mode in ("P", "1", "LA"):
            img = img.convert(mode)
        if fmt == "JPEG" and img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


_modes = st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "F"])
_formats = st.sampled_from(["PNG", "JPEG"])
_damage = st.sampled_from(["none", "truncate", "flip", "zero", "garbage", "header_only"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on corrupt TIFF tags
@FUZZ
@given(mode=_modes, fmt=_formats, damage=_damage, size=st.integers(1, 24), seed=st.integers(0, 10**6),
       cut=st.floats(0.0, 1.0), want=st.sampled_from(["RGB", "L", None]))
def test_load_image_ends_in_an_image_or_one_line(mode, fmt, damage, size, seed, cut, want):
    data = _encoded(mode, fmt, size, seed)
    rng = np.random.default_rng(seed)
    if damage == "truncate":
        data = data[: int(len(data) * cut)]
    elif damage == "flip" and data:
        arr = bytearray(data)
        for i in rng.integers(0, len(arr), size=max(1, len(arr) // 20)):
            arr[int(i)] ^= 0xFF
        data = bytes(arr)
    elif damage == "zero":
        data = b""
    elif damage == "garbage":
        data = rng.integers(0, 256, size=int(64 * cut) + 1, dtype=np.uint8).tobytes()
    elif damage == "header_only":
        data = data[:16]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{'png' if fmt == 'PNG' else 'jpg'}"
        path.write_bytes(data)
        try:
            img = load_image(path, want, source=("list.txt", 7))
        except DataError as err:
            text = str(err)
            assert "\n" not in text and str(path) in text and "list.txt:7" in text
            return
        if want is not None:
            assert img.mode == want and img.size[0] >= 1


def test_a_bad_image_inside_a_dataset_names_the_list_line(tmp_path):
    (tmp_path / "ok.png").write_bytes(_encoded("L", "PNG", 8, 0))
    (tmp_path / "bad.png").write_bytes(_encoded("L", "PNG", 8, 0)[:30])
    ds = MultiLabelImageDataset([ImageRecord(("ok.png",), (1.0,), "train.txt", 1),
                                 ImageRecord(("bad.png",), (0.0,), "train.txt", 2)], root=tmp_path)
    assert ds[0][0].shape[0] == 3
    try:
        ds[1]
    except DataError as err:
        assert "train.txt:2" in str(err) and "bad.png" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a truncated image was accepted")
