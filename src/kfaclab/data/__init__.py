"""Datasets: a strict IDX reader, sha256-verified files from local folders, cache or mirrors, and
whole datasets as tensors on a device (see ``load_dataset``)."""

from kfaclab.data.catalog import DATASETS, DatasetSpec, FileSpec, get_spec
from kfaclab.data.download import download_file
from kfaclab.data.idx import parse_idx, read_idx
from kfaclab.data.loader import (
    Dataset,
    FileReport,
    clear_cache,
    ensure_dataset,
    load_dataset,
    verify_dataset,
)
from kfaclab.data.sources import cache_dir

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "FileReport",
    "FileSpec",
    "cache_dir",
    "clear_cache",
    "download_file",
    "ensure_dataset",
    "get_spec",
    "load_dataset",
    "parse_idx",
    "read_idx",
    "verify_dataset",
]
