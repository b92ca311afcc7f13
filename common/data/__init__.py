"""Datasets, list parsers, samplers and image loading shared by the paper folders."""

from common.data.datasets import DualViewPairDataset, MultiLabelImageDataset
from common.data.errors import DataError, ParseError
from common.data.images import load_image, to_8bit
from common.data.lists import (
    ImageRecord,
    csv_line,
    parse_label_vector,
    parse_multilabel_string,
    read_csv,
    read_image_label_list,
    read_lines,
    read_name_list,
)
from common.data.samplers import (
    ClassAwareSampler,
    RandomIdentitySampler,
    RepeatFactorSampler,
    ShardedRandomSampler,
)
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassAwareSampler",
    "DataError",
    "DualViewPairDataset",
    "ImageRecord",
    "MultiLabelImageDataset",
    "ParseError",
    "RandomIdentitySampler",
    "RepeatFactorSampler",
    "ShardedRandomSampler",
    "build_eval_transform",
    "csv_line",
    "load_image",
    "parse_label_vector",
    "parse_multilabel_string",
    "read_csv",
    "read_image_label_list",
    "read_lines",
    "read_name_list",
    "to_8bit",
]
