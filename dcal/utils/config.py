"""Typed, validated YAML configurations for DCAL (sections: top level, model, data, training).

Changes from the replication: every key is checked against the dataclasses below, so an unknown or
mistyped key is an error naming the file and the key (the replication fell back to plain dicts when a
key such as ``momentum`` was not a field, quirk 11); numbers written as ``1e-6`` are read as numbers
(PyYAML's YAML 1.1 resolver reads them as strings, quirk 10); ``--opts KEY=VALUE`` overrides use the
same checks.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.safe_yaml import UniqueKeyLoader, format_yaml_error


class ConfigError(ValueError):
    """Bad configuration; ``str(err)`` is one line naming the file (or --opts) and the key."""


@dataclass
class ModelConfig:
    backbone_name: str = "deit_small_patch16_224"
    num_classes: int = 200
    embed_dim: int = 384
    num_heads: int = 6
    num_sa_blocks: int = 12
    num_glca_blocks: int = 1
    num_pwca_blocks: int = 12
    top_k_ratio: float = 0.1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    img_size: int | list[int] = 224
    # additions (not in the replication)
    patch_size: int | None = None
    pretrained_path: str = ""
    neck_feat: str = "after"


@dataclass
class DataConfig:
    dataset_name: str = "cub200"
    data_root: str = "./data"
    batch_size: int = 32
    num_workers: int = 4
    image_size: list[int] = field(default_factory=lambda: [224, 224])
    # addition: FGVC training resize before the random crop; None = image_size * 550 / 448
    resize_size: list[int] | None = None


@dataclass
class TrainingConfig:
    num_epochs: int = 100
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: int = 5
    min_lr: float = 1e-6
    uncertainty_weighting: bool = True
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    ce_weight: float = 1.0
    log_interval: int = 100
    eval_interval: int = 1
    save_interval: int = 10
    num_instances: int = 4
    momentum: float = 0.9
    # additions (not in the replication)
    lr_scale_batch: int = 0
    milestones: list[int] = field(default_factory=lambda: [40, 80])
    gamma: float = 0.1
    sampler: str = "pk"
    amp: str = "none"
    clip_grad: float | None = None
    accum_steps: int = 1


@dataclass
class ExperimentConfig:
    task_type: str = "fgvc"
    exp_name: str = "dcal"
    save_dir: str = "./experiments"
    device: str = "cuda"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig}
CHOICES = {
    "task_type": ("fgvc", "reid"),
    "training.optimizer": ("adamw", "adam", "sgd"),
    "training.scheduler": ("cosine", "multistep", "constant"),
    "training.sampler": ("pk", "random"),
    "training.amp": ("none", "bf16", "fp16"),
    "model.neck_feat": ("after", "before"),
}


class _Loader(UniqueKeyLoader):
    """SafeLoader that also reads ``1e-6`` / ``5E+3`` (no dot) as floats, as YAML 1.2 does, and rejects
    a key given twice in one mapping (``common.safe_yaml``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml_value(text: str) -> Any:
    """Parse one scalar/list as the config loader would (``1e-6`` -> float)."""
    return yaml.load(text, Loader=_Loader)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to the annotated type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, arm, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _fill(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (valid: {', '.join(sorted(names))})")
        if cls is ExperimentConfig and key in SECTIONS:
            kwargs[key] = _fill(SECTIONS[key], value if value is not None else {}, source, f"{key}.")
        else:
            kwargs[key] = _check_type(value, hints[key], f"{source}: {prefix}{key}")
    return cls(**kwargs)


def load_config(path: str | Path, opts: list[str] | None = None) -> ExperimentConfig:
    """Read and validate a YAML config, then apply ``KEY=VALUE`` overrides.

    Args:
        path: YAML file with optional sections ``model``, ``data``, ``training``.
        opts: overrides such as ``training.learning_rate=1e-3`` or ``device=cpu``.

    Returns:
        The validated ExperimentConfig.

    Raises:
        ConfigError: missing file, YAML syntax error, unknown key, wrong type or invalid choice.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(format_yaml_error(path, exc)) from None
    cfg = _fill(ExperimentConfig, data, str(path))
    for opt in opts or []:
        cfg = apply_override(cfg, opt)
    validate(cfg, str(path))
    return cfg


def apply_override(cfg: ExperimentConfig, opt: str) -> ExperimentConfig:
    """Apply one ``section.key=value`` (or ``key=value`` for top-level keys) override."""
    if "=" not in opt:
        raise ConfigError(f"--opts: {opt!r} is not KEY=VALUE")
    key, text = opt.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = parse_yaml_value(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"--opts {key!r}: invalid YAML value {text!r} ({' '.join(str(problem).split())})") from None
    if len(parts) == 1:
        target, name = cfg, parts[0]
    elif len(parts) == 2 and parts[0] in SECTIONS:
        target, name = getattr(cfg, parts[0]), parts[1]
    else:
        raise ConfigError(f"--opts: unknown key {key!r} (use section.key with section in {sorted(SECTIONS)})")
    fields_ = {f.name for f in dataclasses.fields(target)}
    if name not in fields_ or (target is cfg and name in SECTIONS):
        raise ConfigError(f"--opts: unknown key {key!r}")
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _check_type(value, hints[name], f"--opts {key}"))
    return cfg


def validate(cfg: ExperimentConfig, where: str) -> None:
    """Cross-field checks; raises ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got '{obj}'")
    m, d, t = cfg.model, cfg.data, cfg.training
    if m.num_glca_blocks not in (0, 1):
        raise ConfigError(f"{where}: model.num_glca_blocks must be 0 or 1 (M = 1 in the paper), got {m.num_glca_blocks}")
    if m.num_pwca_blocks not in (0, m.num_sa_blocks):
        raise ConfigError(f"{where}: model.num_pwca_blocks must be 0 or num_sa_blocks ({m.num_sa_blocks}): "
                          f"PWCA shares every SA block, got {m.num_pwca_blocks}")
    if len(d.image_size) != 2:
        raise ConfigError(f"{where}: data.image_size must be [height, width], got {d.image_size}")
    img = [m.img_size, m.img_size] if isinstance(m.img_size, int) else list(m.img_size)
    if img != list(d.image_size):
        raise ConfigError(f"{where}: model.img_size {m.img_size} does not match data.image_size {d.image_size} "
                          "(the ViT patch grid is fixed at construction)")
    if d.resize_size is not None and len(d.resize_size) != 2:
        raise ConfigError(f"{where}: data.resize_size must be [height, width], got {d.resize_size}")
    if not 0.0 < m.top_k_ratio <= 1.0:
        raise ConfigError(f"{where}: model.top_k_ratio must be in (0, 1], got {m.top_k_ratio}")
    if m.num_classes < 1 or d.batch_size < 1 or t.num_epochs < 1:
        raise ConfigError(f"{where}: model.num_classes, data.batch_size and training.num_epochs must be >= 1")
    if t.eval_interval != 1:
        raise ConfigError(f"{where}: training.eval_interval={t.eval_interval} is not supported "
                          "(the shared engine evaluates every epoch); remove the key or set 1")
    if cfg.task_type == "reid" and t.sampler == "pk" and d.batch_size % t.num_instances:
        raise ConfigError(f"{where}: data.batch_size {d.batch_size} must be a multiple of training.num_instances "
                          f"{t.num_instances} for the P x K sampler")


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict (for args.json / checkpoints)."""
    return dataclasses.asdict(cfg)
