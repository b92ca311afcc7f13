"""Shared checks of every paper's predict.py / common.export (issue 18): a folder with one corrupt image,
a checkpoint without preprocessing fields, a resumed predict, explanation PNGs, export parity."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.cli import run_main
from common.export import export_checkpoint

CORRUPT = "zz_corrupt.png"


def parse(module, argv: list[str]) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args([str(a) for a in argv])


def corrupt_copy(src: Path, dst: Path, files: list[Path], corrupt: str = CORRUPT) -> Path:
    """``dst`` with copies of ``files`` (names kept relative to ``src``) and one corrupt PNG."""
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    (dst / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return dst


def check_predict_cli(module, checkpoint: Path, folder: Path, out: Path, *, new_files: list[tuple[Path, Path]],
                      key_columns: tuple[str, ...], class_names: list[str], capsys, extra: list[str] = (),
                      corrupt: str = CORRUPT, n_new: int | None = None) -> pd.DataFrame:
    """Predict over ``folder`` (which holds one corrupt image), then add ``new_files`` and ``--resume``."""
    base = ["--checkpoint", checkpoint, "--output", out, "--device", "cpu", "--batch_size", "3", *extra]
    first = module.main(parse(module, [*base, "--images", folder]))
    err = capsys.readouterr().err
    assert f"skipped: cannot read image {folder / corrupt}" in err
    assert list(first.columns[: len(key_columns)]) == list(key_columns)
    assert list(first.columns[len(key_columns): len(key_columns) + len(class_names)]) == list(class_names)
    bad = first[first["skipped"] != ""]
    assert len(bad) == 1 and corrupt in bad.iloc[0]["skipped"]
    good = first[first["skipped"] == ""]
    assert len(good) >= 2
    probs = good[list(class_names)].astype(float).to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    on_disk = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(on_disk) == len(first) and list(on_disk.columns) == list(first.columns)
    # an existing output is not overwritten silently
    with pytest.raises(SystemExit):
        run_main(module.main, parse(module, [*base, "--images", folder]))
    assert "pass --resume" in capsys.readouterr().err
    for src, dst in new_files:
        shutil.copyfile(src, dst)
    again = module.main(parse(module, [*base, "--images", folder, "--resume"]))
    log = capsys.readouterr().err
    assert f"{len(first) - 1} already in" in log  # the corrupt image's row is retried, the others kept
    assert len(again) == len(first) + (len(new_files) if n_new is None else n_new)
    kept = again.iloc[: len(good)]
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), good.reset_index(drop=True), check_dtype=False)
    return again


def check_refused_without_preprocessing(module, checkpoint: Path, folder: Path, out: Path, capsys,
                                        missing: tuple[str, ...], extra: list[str] = ()) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, parse(module, ["--checkpoint", checkpoint, "--images", folder, "--output", out,
                                             "--device", "cpu", *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(checkpoint) in err
    for name in missing:
        assert name in err, err
    assert not out.exists()


def check_explain(module, checkpoint: Path, folder: Path, out: Path, n: int = 2, extra: list[str] = ()) -> list[Path]:
    module.main(parse(module, ["--checkpoint", checkpoint, "--images", folder, "--output", out, "--device", "cpu",
                               "--explain", n, "--overwrite", *extra]))
    pngs = sorted((out.parent / f"{out.stem}_explain").glob("*.png"))
    assert len(pngs) == n
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    return pngs


def check_export_parity(checkpoint: Path, tmp_path: Path, *, paper: str | None = None, images: Path | None = None,
                        formats: tuple[str, ...] = ("onnx", "torchscript")) -> dict[str, dict[str, float]]:
    """Every format exports, passes the 1e-4 parity check on random and real inputs, and is loadable."""
    results = {}
    for fmt in formats:
        suffix = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}[fmt]
        out = tmp_path / f"model{suffix}"
        lines: list[str] = []
        diffs = export_checkpoint(checkpoint, fmt=fmt, out=out, paper=paper, images=str(images) if images else None,
                                  log=lines.append)
        assert out.is_file() and len(diffs) == 2 and max(diffs.values()) <= 1e-4, lines
        assert any("random inputs" in line and "max abs diff" in line for line in lines)
        if fmt == "torchscript":
            torch.jit.load(str(out))
        results[fmt] = diffs
    return results
