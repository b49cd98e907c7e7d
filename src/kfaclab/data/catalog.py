"""What each dataset is made of: its four IDX files, their checksums, where to look, where to fetch.

The sha256 values are of the *decompressed* IDX bytes: mirrors re-wrap the same data in different
gzip containers (other timestamps, compression levels), so only the decompressed bytes are stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kfaclab.errors import UsageError


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset, e.g. ``train-images-idx3-ubyte`` (found as ``<name>[.gz]``)."""

    name: str
    sha256: str
    # Checked before the checksum so that a wrong file gets a message about its structure.
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec
    # Folders a system package installs the files into; searched after the user cache.
    system_dirs: tuple[Path, ...]
    # Base URLs, tried in order; a file's URL is base + name + ".gz".
    mirrors: tuple[str, ...]

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


def _files(
    shas: tuple[str, str, str, str], n_train: int = 60000, n_test: int = 10000
) -> tuple[FileSpec, FileSpec, FileSpec, FileSpec]:
    return (
        FileSpec("train-images-idx3-ubyte", shas[0], (n_train, 28, 28)),
        FileSpec("train-labels-idx1-ubyte", shas[1], (n_train,)),
        FileSpec("t10k-images-idx3-ubyte", shas[2], (n_test, 28, 28)),
        FileSpec("t10k-labels-idx1-ubyte", shas[3], (n_test,)),
    )


MNIST = DatasetSpec(
    "mnist",
    *_files(
        (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        )
    ),
    system_dirs=(),
    # yann.lecun.com is gone (HTTP 403 since 2023); these are the mirrors torchvision and TFDS use.
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
)

FASHION_MNIST = DatasetSpec(
    "fashion-mnist",
    *_files(
        (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        )
    ),
    # Debian's `dataset-fashion-mnist` package.
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    # The S3 website endpoint serves plain HTTP only; the checksum is what makes it trustworthy.
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}

# sha256 -> "dataset/file". MNIST and Fashion-MNIST share file names, so a folder holding one of
# them is searched for the other too; this tells "another dataset's file" from "a damaged file".
KNOWN_FILES: dict[str, str] = {
    f.sha256: f"{spec.name}/{f.name}" for spec in DATASETS.values() for f in spec.files
}


def get_spec(name: str) -> DatasetSpec:
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        choices = ", ".join(repr(n) for n in DATASETS)
        raise UsageError(f"dataset must be one of {choices}, got {name!r}")
    return DATASETS[key]
