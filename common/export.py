"""Export a trained model to ONNX or TorchScript, with proven parity.

Usage::

    python -m common.export CHECKPOINT --format onnx|torchscript --out FILE [--paper P] [--images DIR]

The paper is read from the checkpoint (its ``preprocessing.paper`` / ``trainer`` record, else its
layout; ``--paper`` overrides) and its adapter module is imported by name at run time
(entry-point group ``xray_papers.predict_adapters``: ``common`` has no static import of a paper). The adapter rebuilds
the model in eval mode (charm_xray: the memory bank and momentum branch as stored; dcal: the inference
path, without PWCA) and says which tensors it maps to which outputs (dvxray: two inputs; xmnet: the
classification logits and, when it segments, the vein-mask logits).

After writing, the exported file is loaded back (ONNX: ``onnxruntime``, the optional extra
``[export]``; TorchScript: ``torch.jit.load``) and run on the same inputs as PyTorch: random normal
batches and real inputs (the first images of ``--images`` through the checkpoint's preprocessing, or,
without it, a synthetic picture through the same preprocessing). The max abs difference of every output
is printed; above ``--tolerance`` (1e-4) the export is refused and no file is left. The file is written
to a temporary name and renamed only once the check passed. The checkpoint's preprocessing is stored
in the file (ONNX ``metadata_props`` key ``preprocessing``; TorchScript extra file ``preprocessing.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.checkpoint import CheckpointError
from common.predict import LoadedModel, get_adapter, iterate_inputs, list_inputs, paper_of_checkpoint
from common.preprocessing import Preprocessing, to_input

FORMATS = ("onnx", "torchscript", "safetensors")
TOLERANCE = 1e-4


class ExportError(ValueError):
    """The export failed or its outputs differ from PyTorch beyond the tolerance."""


class _TupleOut(nn.Module):
    """Always return a tuple of tensors (ONNX / TorchScript outputs have a fixed arity)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(*xs)
        return tuple(out) if isinstance(out, list | tuple) else (out,)


class _OneInput(nn.Module):
    """Fixed arity for torch.export (the dynamo ONNX exporter does not take ``*xs``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner(x)


class _TwoInputs(_OneInput):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner(a, b)


def _export_onnx(wrapped: nn.Module, example: tuple[torch.Tensor, ...], path: Path, *, opset: int,
                 input_names: Sequence[str], output_names: Sequence[str], log) -> str:
    """Write the ONNX graph with a dynamic batch axis; returns the exporter used.

    The TorchScript-based exporter is tried first (seconds); models it cannot express (adaptive pooling
    to a computed size, torchvision's deformable convolution) go through the dynamo exporter
    (``torch.export`` + onnxscript, tens of seconds), with one log line saying so.
    """
    try:
        torch.onnx.export(wrapped, example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes={n: {0: "batch"} for n in [*input_names, *output_names]})
        return "torchscript-based"
    except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
        first = " ".join(str(exc).split())[:160]
        log(f"export: the TorchScript-based ONNX exporter cannot export this model ({type(exc).__name__}: "
            f"{first}); using the dynamo exporter")
    if len(example) > 2:
        raise ExportError(f"the dynamo ONNX exporter path handles 1 or 2 inputs, this model has {len(example)}")
    fixed = (_OneInput if len(example) == 1 else _TwoInputs)(wrapped).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(fixed, example, str(path), dynamo=True, opset_version=opset, verbose=False,
                      input_names=list(input_names), output_names=list(output_names),
                      dynamic_shapes=tuple({0: batch} for _ in example))
    return "dynamo"


def synthetic_picture(prep: Preprocessing, seed: int = 0) -> torch.Tensor:
    """A smooth picture with shapes (not noise), through the checkpoint's preprocessing: the "real"
    input when no ``--images`` are given."""
    rng = np.random.default_rng(seed)
    h, w = prep.input_size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 3)) * np.cos(4 * yy + rng.uniform(0, 3))
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    base += 0.4 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 0.02)
    rgb = np.clip(np.stack([base, base * 0.9, base * 0.8], -1) * 255, 0, 255).astype(np.uint8)
    return to_input(rgb, prep)


def real_inputs(loaded: LoadedModel, views: Sequence[str], images: str | None, pair_view, n: int = 2
                ) -> tuple[list[torch.Tensor], str]:
    """(inputs, description): the first ``n`` readable inputs of ``images``, else synthetic pictures."""
    prep = loaded.preprocessing
    if images:
        items, _ = list_inputs(images, views=views, pair_view=pair_view)
        for _, x, reasons, _ in iterate_inputs(items[: max(n, 8)], prep, batch_size=max(n, 8), desc="real inputs"):
            ok = [j for j, r in enumerate(reasons) if not r][:n]
            if ok:
                return [x[ok][:, v] for v in range(len(views))], f"{len(ok)} image(s) of {images}"
        raise ExportError(f"--images {images}: no readable image among the first {max(n, 8)}")
    pics = [[synthetic_picture(prep, seed=10 * i + v) for i in range(n)] for v in range(len(views))]
    return [torch.stack(p) for p in pics], "synthetic pictures through the checkpoint's preprocessing"


def _run_onnx(path: Path, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})


def _import_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(f"--format onnx needs the optional extra 'export' ({err.name} is not installed): "
                          "pip install -e '.[export]'") from None


def export_model(loaded: LoadedModel, module: nn.Module, out: Path, fmt: str, *, input_names: Sequence[str],
                 output_names: Sequence[str], inputs: dict[str, list[torch.Tensor]], tolerance: float = TOLERANCE,
                 opset: int = 19, log=print) -> dict[str, float]:
    """Write ``module`` to ``out`` as ``fmt`` and check it against PyTorch on ``inputs``.

    Args:
        loaded: the loaded checkpoint (its preprocessing is stored in the file).
        module: eval-mode module mapping the input tensors to a tensor or tuple of tensors.
        out: destination file (replaced only when the check passes).
        fmt: "onnx" or "torchscript".
        input_names, output_names: names of the graph's inputs / outputs.
        inputs: {description: input tensors}; the first entry is the tracing example.
        tolerance: the largest allowed max abs difference.
        opset: ONNX opset.
        log: where the parity lines go.

    Returns:
        {description: max abs difference over all outputs}.

    Raises:
        ExportError: the export failed, or a difference exceeds ``tolerance`` (no file is left).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        _import_onnx()
    wrapped = _TupleOut(module).eval()
    example = tuple(next(iter(inputs.values())))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    prep_json = loaded.preprocessing.to_json()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer / deprecation chatter; parity below is the real check
            if fmt == "onnx":
                _export_onnx(wrapped, example, tmp, opset=opset, input_names=input_names,
                             output_names=output_names, log=log)
                import onnx

                proto = onnx.load(str(tmp))
                entry = proto.metadata_props.add()
                entry.key, entry.value = "preprocessing", prep_json
                onnx.save(proto, str(tmp))
            else:
                traced = torch.jit.trace(wrapped, example, check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={"preprocessing.json": prep_json})
        diffs: dict[str, float] = {}
        with torch.no_grad():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                loaded_ts = torch.jit.load(str(tmp)) if fmt == "torchscript" else None
            for what, xs in inputs.items():
                ref = [t.float().numpy() for t in wrapped(*xs)]
                if fmt == "onnx":
                    got = [np.asarray(o, dtype=np.float32) for o in _run_onnx(tmp, input_names, xs)]
                else:
                    res = loaded_ts(*xs)
                    got = [t.float().numpy() for t in (res if isinstance(res, tuple | list) else (res,))]
                if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
                    raise ExportError(f"{fmt} export: outputs {[g.shape for g in got]} differ in shape from "
                                      f"PyTorch's {[r.shape for r in ref]} on {what}")
                diff = max(float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, ref))
                diffs[what] = diff
                per_output = ", ".join(f"{n} {float(np.max(np.abs(g - r))) if r.size else 0.0:.3g}"
                                       for n, g, r in zip(output_names, got, ref))
                log(f"parity {fmt} vs PyTorch on {what}: max abs diff {diff:.3g} ({per_output})")
        worst = max(diffs.values())
        if not worst <= tolerance:
            raise ExportError(f"export refused: the {fmt} model differs from PyTorch by {worst:.3g} (max abs), above "
                              f"the tolerance {tolerance:g}; {out} not written")
        os.replace(tmp, out)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types; one line for the user
        first = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise ExportError(f"{fmt} export of {loaded.source} failed ({type(exc).__name__}: {first})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return diffs


def export_weights(adapter, loaded: LoadedModel, out: Path, *, inputs: dict[str, list[torch.Tensor]],
                   tolerance: float = TOLERANCE, log=print) -> dict[str, float]:
    """A weights-only safetensors file whose metadata records the paper, the training args, the
    preprocessing, the stored thresholds and any model state outside the state dict (JSON strings),
    so that ``predict.py`` and this module rebuild the model from it alone; checked by reloading it
    through the paper's adapter and comparing outputs."""
    from common.checkpoint import export_safetensors
    from common.predict import preprocessing_metadata, read_thresholds

    if out.suffix != ".safetensors":
        raise ExportError(f"--out must end in .safetensors for --format safetensors, got {out}")
    try:
        thresholds = read_thresholds(loaded).tolist()
    except ValueError:
        thresholds = None
    meta = preprocessing_metadata(loaded.preprocessing, thresholds=thresholds,
                                  args=json.dumps(loaded.info.get("args") or {}))
    if loaded.info.get("extra"):
        meta["extra"] = json.dumps(loaded.info["extra"])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".safetensors", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_safetensors(loaded.model.state_dict(), tmp, metadata=meta)
        again = adapter.load(tmp, device=torch.device("cpu"))
        diffs = {}
        with torch.no_grad():
            for what, xs in inputs.items():
                ref = _TupleOut(adapter.export_module(loaded.model)).eval()(*xs)
                got = _TupleOut(adapter.export_module(again.model)).eval()(*xs)
                diffs[what] = max(float((g.float() - r.float()).abs().max()) for g, r in zip(got, ref))
                log(f"parity safetensors vs the checkpoint on {what}: max abs diff {diffs[what]:.3g}")
        if not max(diffs.values()) <= tolerance:
            raise ExportError(f"export refused: the safetensors reload differs by {max(diffs.values()):.3g} (max abs), "
                              f"above the tolerance {tolerance:g}; {out} not written")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return diffs


def export_checkpoint(checkpoint: str | Path, *, fmt: str, out: str | Path, paper: str | None = None,
                      images: str | None = None, tolerance: float = TOLERANCE, batch: int = 2, seed: int = 0,
                      log=print) -> dict[str, float]:
    """Load ``checkpoint`` through its paper's adapter (on CPU) and :func:`export_model` it.

    Returns:
        {inputs description: max abs difference}.
    """
    checkpoint = Path(checkpoint)
    paper = paper or paper_of_checkpoint(checkpoint)
    adapter = get_adapter(paper)
    loaded = adapter.load(checkpoint, device=torch.device("cpu"))
    model = loaded.model.eval()
    module = adapter.export_module(model).eval()
    prep = loaded.preprocessing
    views = adapter.views if adapter.task != "reid" else ("image",)
    input_names = list(views) if len(views) > 1 else ["image"]
    g = torch.Generator().manual_seed(seed)
    h, w = prep.input_size
    # the random batch has one more sample than the real one: the dynamic batch axis is checked too
    random = [torch.randn(batch + 1, 3, h, w, generator=g) for _ in views]
    real, what = real_inputs(loaded, views, images, adapter.pair_view, n=batch)
    log(f"export: {checkpoint} ({paper}, {type(model).__name__}, input {h}x{w}, {len(views)} input(s)) -> {out}")
    if fmt == "safetensors":
        return export_weights(adapter, loaded, Path(out), inputs={f"random inputs (batch {batch + 1})": random,
                                                                  f"{what} (batch {batch})": real},
                              tolerance=tolerance, log=log)
    return export_model(loaded, module, Path(out), fmt, input_names=input_names,
                        output_names=adapter.export_output_names(model),
                        inputs={f"random inputs (batch {batch + 1})": random, f"{what} (batch {batch})": real}, tolerance=tolerance, log=log)


def get_args_parser() -> argparse.ArgumentParser:
    """The ``python -m common.export`` parser."""
    parser = argparse.ArgumentParser("python -m common.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's checkpoint or a weights-only safetensors")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="onnx, torchscript, or safetensors (weights-only, with the preprocessing and args as "
                             "metadata); required")
    parser.add_argument("--out", required=True, help="destination file (.onnx / .pt / .safetensors); required")
    parser.add_argument("--paper", default=None, help="the paper's folder name (default: read from the checkpoint)")
    parser.add_argument("--images", default=None,
                        help="real inputs for the parity check: a folder, list or CSV as predict.py takes "
                             "(default: synthetic pictures through the checkpoint's preprocessing)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest allowed max abs difference to PyTorch (default: {TOLERANCE:g})")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the check inputs (default: 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        diffs = export_checkpoint(args.checkpoint, fmt=args.format, out=args.out, paper=args.paper,
                                  images=args.images, tolerance=args.tolerance, batch=args.batch)
    except (ExportError, CheckpointError, ValueError, OSError) as err:
        if os.environ.get("TRACEBACK", "") not in ("", "0"):
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"export: wrote {args.out} (max abs diff {max(diffs.values()):.3g} <= {args.tolerance:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
