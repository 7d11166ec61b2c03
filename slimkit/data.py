"""Datasets shared by gate search and training: Fashion-MNIST (offline default), CIFAR, ImageFolder.

``load_data(name, input_size=...)`` returns a :class:`DataBundle` of train / val / test datasets
whose images come out at the architecture's input size ``(C, H, W)``: resized, expanded to its
input channels (grayscale repeated to 3 channels, RGB turned to luma for 1-channel models) and
normalized with the dataset's mean/std. ``make_loader`` batches any of them.

The validation split is always carved from the *training* set, never the test set, as in the
pruning papers: "Pruning from Scratch" (Wang et al., AAAI 2020) holds out 5,000 CIFAR-10 training
images (we do the same for Fashion-MNIST and CIFAR-100) and 50 images per class on ImageNet
(our default for ``imagefolder:``). The split is a deterministic function of ``seed``.

Small datasets (Fashion-MNIST, CIFAR, synthetic) stay in memory as one uint8 tensor and are
resized, augmented and normalized a whole batch at a time with tensor ops, which on CPU is an
order of magnitude faster than per-sample PIL transforms and needs no worker processes.
ImageFolder trees are decoded per sample by a standard ``DataLoader`` with torchvision transforms.

Names accepted by :func:`load_data` (see :data:`DATASETS`):

* ``fashion-mnist`` — read from ``data_dir``, else Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), else a torchvision download into ``~/.cache/slimkit``.
* ``cifar10`` / ``cifar100`` — torchvision's python-format archives under ``data_dir``.
* ``imagefolder:PATH`` — ``PATH/train/<class>/*`` for training, ``PATH/val/<class>/*`` as test.
* ``synthetic`` — random uint8 images and labels, for speed tests only.
* ``shapes`` — procedurally drawn shapes with per-pixel masks and boxes (:mod:`slimkit.shapes`), for
  segmentation and detection models: seeded, offline, drawn at any size.
* ``coco:PATH`` — a COCO-format detection folder, for detectors: ``PATH/annotations/instances_train2017.json``
  with images in ``PATH/train2017/`` and ``instances_val2017.json`` with ``PATH/val2017/`` as test
  (COCO's own layout; ``instances_train.json`` with ``train/`` works too). torchvision's
  ``CocoDetection`` reads it; labels are the category ids (0 is the background, as torchvision's
  detectors count), so the model has ``max id + 1`` classes.
* ``voc:PATH`` — a PASCAL VOC-format folder (``PATH/VOCdevkit/VOC2012``, or that folder itself), read by
  torchvision's ``VOCSegmentation`` (``SegmentationClass`` masks, 255 ignored) for segmentation models
  and ``VOCDetection`` (``Annotations`` boxes) for detectors (``load_data(..., detection=True)``);
  ``ImageSets/{Segmentation,Main}/train.txt`` trains, ``val.txt`` is the test split. 21 classes: VOC's
  20 and the background (0).

Every failure to find or read data raises :class:`DataError` with a one-line message saying what
is missing and how to fix it, so the CLI can print it as is.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CocoDetection, VOCDetection, VOCSegmentation
from torchvision.datasets.voc import DATASET_YEAR_DICT as VOC_YEARS
from torchvision.transforms.functional import InterpolationMode, hflip, pil_to_tensor, resize

from slimkit.errors import SlimkitError
from slimkit.shapes import NUM_CLASSES as SHAPES_CLASSES
from slimkit.shapes import ShapesDataset, ShapesLoader
from slimkit.validate import show

__all__ = [
    "CACHE_DIR",
    "DATASETS",
    "NUM_CLASSES",
    "DEFAULT_DATASET",
    "FASHION_MNIST_DIR",
    "DataBundle",
    "DataError",
    "ImageFolderDataset",
    "ImageTensorDataset",
    "CocoBoxes",
    "coco_files",
    "VOC_CLASSES",
    "VOC_VOID",
    "VocFolder",
    "VocBoxes",
    "VocMasks",
    "voc_folder",
    "Loader",
    "load_data",
    "make_loader",
]

InputSize = tuple[int, int, int]

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH", "synthetic", "shapes",
                             "coco:PATH", "voc:PATH")
DEFAULT_DATASET = "fashion-mnist"
# Classes of the datasets whose size is fixed (an ImageFolder has as many as its class folders).
NUM_CLASSES = {"fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10, "shapes": SHAPES_CLASSES}
# PASCAL VOC's classes in its label order: a mask value or a detector's label is the index here.
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_VOID = 255  # VOC's mask value for object borders and unlabelled pixels: losses and scores ignore it
# The shapes stream's splits: enough images for a gate search or a quick epoch; each is drawn when read.
SHAPES_SPLITS = {"train": 2000, "val": 200, "test": 200}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "slimkit"
_FMNIST_TORCHVISION_RAW = Path("FashionMNIST") / "raw"  # where torchvision's own download puts the files
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # torchvision's layout


_CIFAR_TITLES = {"cifar10": ("CIFAR-10", "cifar-10-python.tar.gz"), "cifar100": ("CIFAR-100", "cifar-100-python.tar.gz")}


def _cifar_not_found(name: str, root: Path) -> str:
    title, archive = _CIFAR_TITLES[name]
    return (f"{title} not found in {root}: extract https://www.cs.toronto.edu/~kriz/{archive} there so that "
            f"{root / _CIFAR_FOLDERS[name]} exists, or pass --data-dir")

# Paper settings (Wang et al. 2020): 5,000 held-out CIFAR-10 training images; 50 per ImageNet class.
PAPER_VAL_SIZE = 5000
PAPER_VAL_PER_CLASS = 50

SYNTHETIC_DESCRIPTION = "SYNTHETIC random tensors — for speed tests only"

# Per-channel mean/std of the training images, in [0, 1] units.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
    "synthetic": ((0.5,), (0.2887,)),  # uniform on [0, 1]: std = 1 / sqrt(12)
}

# ITU-R 601 luma, the weights PIL's convert("L") uses, so that in-memory data and ImageFolder data
# (converted by torchvision's Grayscale) agree for 1-channel models.
_LUMA = (0.299, 0.587, 0.114)

_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FMNIST_FIX = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir"
)


class DataError(SlimkitError):
    """Data that cannot be found or read; the message is one line naming the problem and the fix.

    A ``ValueError`` (through ``SlimkitError``), so the CLI reports it like any user error.
    """

    def __init__(self, message: str) -> None:
        # One line so that CLI output and logs stay readable; nested exception text may span lines.
        super().__init__(" ".join(message.split()))


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _working_stats(
    mean: Sequence[float], std: Sequence[float], source_chans: int, chans: int
) -> tuple[Tensor, Tensor]:
    """Mean/std shaped (1, c, 1, 1) for the channels images are normalized at.

    That is the source's channels, or 1 when an RGB source feeds a 1-channel model; a gray
    source is normalized before it is repeated to the model's channels (all equal anyway).
    """
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    if source_chans == 3 and chans == 1:
        w = torch.tensor(_LUMA)
        # Approximation: ignores correlation between colour channels, so std is slightly off; it
        # only sets the scale of the inputs, which BatchNorm absorbs.
        m, s = (w * m).sum(), (w * s.square()).sum().sqrt()
    return m.reshape(1, -1, 1, 1), s.reshape(1, -1, 1, 1)


def _check_channels(source_chans: int, chans: int, what: str) -> None:
    if source_chans != chans and source_chans != 1 and not (source_chans == 3 and chans == 1):
        raise DataError(
            f"{what} has {source_chans}-channel images but the model takes {chans} channels: "
            "only gray→any and RGB→gray are supported; build the model with in_chans=3"
        )


def _random_crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding + random horizontal flip, independently per image.

    Padding is 4 px at 32x32 (the CIFAR recipe of both papers), scaled with the image size.
    """
    b, c, h, w = x.shape
    ph, pw = max(1, round(4 * h / 32)), max(1, round(4 * w / 32))
    padded = F.pad(x, (pw, pw, ph, ph))
    oy = torch.randint(0, 2 * ph + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pw + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    # Reading the crop's columns right-to-left is the flip, so the column gather does both.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pw))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


class ImageTensorDataset(Dataset[tuple[Tensor, int]]):
    """Images held in memory as uint8 ``(N, c, h, w)``, delivered at ``input_size`` per batch.

    ``batch(indices)`` is the fast path used by :func:`make_loader`; ``ds[i]`` returns one
    preprocessed ``(image, label)`` pair for code that wants a plain map-style dataset.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        input_size: InputSize,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            shape = tuple(images.shape)
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {shape}")
        if labels.shape != (images.shape[0],):
            shape = tuple(labels.shape)
            raise ValueError(f"need one label per image, got {shape} for {images.shape[0]} images")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.input_size: InputSize = (input_size[0], input_size[1], input_size[2])
        self.source_mean = tuple(mean)
        self.source_std = tuple(std)
        source_chans, chans = images.shape[1], input_size[0]
        _check_channels(source_chans, chans, "dataset")
        self._mean, self._std = _working_stats(mean, std, source_chans, chans)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], int(y[0])

    def subset(self, indices: Tensor) -> ImageTensorDataset:
        """A dataset of the given rows (copied, so the parent can be freed)."""
        return ImageTensorDataset(
            self.images[indices],
            self.labels[indices],
            input_size=self.input_size,
            mean=self.source_mean,
            std=self.source_std,
        )

    def batch(
        self, indices: Tensor, *, augment: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Float32 NCHW images at ``input_size`` (normalized) and int64 labels for ``indices``."""
        # Work at the fewest channels until the end (a gray source is repeated last): at 224x224
        # that makes resize, crop and normalize 3x cheaper.
        chans, height, width = self.input_size
        x = self.images[indices].to(torch.float32).div_(255)
        if x.shape[1] == 3 and chans == 1:
            x = (x * torch.tensor(_LUMA).reshape(1, 3, 1, 1)).sum(1, keepdim=True)
        h, w = x.shape[-2:]
        if (h, w) != (height, width):
            # Antialiasing (as PIL's resize does) only matters when shrinking, and costs time.
            shrink = height < h or width < w
            x = F.interpolate(
                x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
            )
        if augment:
            x = _random_crop_flip(x, generator if generator is not None else torch.Generator())
        x = (x - self._mean) / self._std
        if x.shape[1] != chans:
            x = x.expand(-1, chans, -1, -1).contiguous()
        return x, self.labels[indices]


def _folder_transform(
    input_size: InputSize, augment: bool, mean: Tensor, std: Tensor
) -> Callable[[Any], Tensor]:
    """Per-sample torchvision transforms from a decoded RGB PIL image to a normalized tensor."""
    from torchvision import transforms

    chans, height, width = input_size
    if augment:
        # The standard ImageNet recipe (the papers' ImageNet setting): scale/aspect jitter + flip.
        geometry = [transforms.RandomResizedCrop((height, width)), transforms.RandomHorizontalFlip()]
    else:
        # Standard evaluation crop: resize the short side to size / 0.875 (256 for 224), center crop.
        short = round(min(height, width) / 0.875)
        geometry = [transforms.Resize(short), transforms.CenterCrop((height, width))]
    colour = [transforms.Grayscale(1)] if chans == 1 else []
    return transforms.Compose(
        [
            *geometry,
            *colour,
            transforms.ToTensor(),
            transforms.Normalize(mean.flatten().tolist(), std.flatten().tolist()),
        ]
    )


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Image files (``(path, label)`` samples) decoded per sample with torchvision transforms."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        *,
        input_size: InputSize,
        augment: bool = False,
    ) -> None:
        chans = input_size[0]
        _check_channels(3, chans, "imagefolder")
        self.samples = list(samples)
        self.classes = list(classes)
        self.input_size: InputSize = (input_size[0], input_size[1], input_size[2])
        self.augment = augment
        mean, std = _STATS["imagefolder"]
        self._mean, self._std = _working_stats(mean, std, 3, chans)
        self._transform = _folder_transform(input_size, augment, self._mean, self._std)

    @property
    def labels(self) -> Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        try:
            image = default_loader(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError...
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {str(exc)[:80]}): "
                            "remove or replace that file") from None
        return self._transform(image), label

    def subset(self, indices: Tensor) -> ImageFolderDataset:
        return ImageFolderDataset(
            [self.samples[i] for i in indices.tolist()],
            self.classes,
            input_size=self.input_size,
            augment=self.augment,
        )

    def with_augment(self, augment: bool) -> ImageFolderDataset:
        if augment == self.augment:
            return self
        return ImageFolderDataset(
            self.samples,
            self.classes,
            input_size=self.input_size,
            augment=augment,
        )


class CocoBoxes(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """A COCO-format split as torchvision's detectors take it: a [0, 1] float image at its own size (the
    detector's transform resizes it) and a target of xyxy ``boxes``, ``labels`` (category ids) and
    ``iscrowd``. Crowd regions and empty boxes are left out of training targets (a detector cannot
    ignore them); evaluation keeps crowd regions, which COCOeval ignores."""

    def __init__(self, images: Path, annotation_file: Path, *, training: bool) -> None:
        with contextlib.redirect_stdout(None):  # pycocotools prints its loading progress
            self._coco = CocoDetection(str(images), str(annotation_file))
        self.images, self.annotations, self.training = images, annotation_file, training
        _check_coco(self._coco.coco.dataset, annotation_file)
        self.num_classes = max(self._coco.coco.getCatIds(), default=0) + 1

    def __len__(self) -> int:
        return len(self._coco)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        try:
            image, objects = self._coco[index]
        except Exception as exc:  # noqa: BLE001 - a missing file, PIL's OSError, SyntaxError, ...
            name = self._coco.coco.loadImgs(self._coco.ids[index])[0].get("file_name", "?")
            raise DataError(f"cannot read image {self.images / name} ({type(exc).__name__}): restore that file or "
                            f"remove it from {self.annotations}") from None
        boxes, labels, crowd = [], [], []
        for a in objects:
            x, y, w, h = a["bbox"]
            if w <= 0 or h <= 0 or (self.training and a.get("iscrowd", 0)):
                continue
            boxes.append(list(_box_on_image(x, y, x + w, y + h, image.size,
                                            f"coco: {self.annotations}: annotation {a.get('id')!r}")))
            labels.append(a["category_id"])
            crowd.append(a.get("iscrowd", 0))
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64), "iscrowd": torch.tensor(crowd, dtype=torch.int64)}
        return pil_to_tensor(image.convert("RGB")).to(torch.float32).div_(255.0), target

    @staticmethod
    def collate(samples: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        return [image for image, _ in samples], [target for _, target in samples]

    def with_augment(self, augment: bool) -> CocoBoxes:  # noqa: ARG002 - boxes would have to follow a crop
        return self


def _box_on_image(x0: float, y0: float, x1: float, y1: float, size: tuple[int, int],
                  where: str) -> tuple[float, float, float, float]:
    """A box clipped to its image (annotations often reach a pixel past the edge), or a DataError when it
    misses the image altogether: its coordinates belong to another image or another scale."""
    width, height = size
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise DataError(f"{where}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] (x0, y0, x1, y1) lies outside the "
                        f"{width}x{height} image: fix its coordinates")
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))


def _check_coco(dataset: dict[str, Any], annotation_file: Path) -> None:
    """What a COCO instances file must hold for its boxes to mean what they say, checked before any
    training: unique image and annotation ids (pycocotools indexes by id, so a repeated id silently gives
    every image the last annotation of that id), category ids of 1 or more (0 is the background) that the
    file declares, annotations of images it lists, and boxes of four finite numbers."""
    fix = "fix that file"
    categories = set()
    for c in dataset.get("categories", []):
        cid = c.get("id") if isinstance(c, dict) else None
        if type(cid) is not int or cid < 1:
            raise DataError(f"coco: {annotation_file} declares a category id {cid!r}; ids are whole numbers from 1 "
                            f"(0 is the background): {fix}")
        categories.add(cid)
    image_ids: set[Any] = set()
    for im in dataset.get("images", []):
        iid = im.get("id") if isinstance(im, dict) else None
        if iid in image_ids:
            raise DataError(f"coco: {annotation_file} lists image id {iid!r} twice: {fix}")
        image_ids.add(iid)
    ann_ids: set[Any] = set()
    for a in dataset.get("annotations", []):
        if not isinstance(a, dict):
            raise DataError(f"coco: {annotation_file} holds an annotation that is not an object: {fix}")
        what = f"coco: {annotation_file}: annotation {a.get('id')!r}"
        if a.get("id") in ann_ids:
            raise DataError(f"coco: {annotation_file} has two annotations with id {a.get('id')!r}: give each its "
                            "own id")
        ann_ids.add(a.get("id"))
        if a.get("image_id") not in image_ids:
            raise DataError(f"{what} is of image {a.get('image_id')!r}, which the file does not list: {fix}")
        if a.get("category_id") not in categories:
            raise DataError(f"{what} has category {a.get('category_id')!r}, not one the file declares "
                            f"({', '.join(map(str, sorted(categories))) or 'none'}): {fix}")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise DataError(f"{what} has bbox {show(box)}; COCO boxes are [x, y, width, height], four finite "
                            f"numbers: {fix}")


@dataclass(frozen=True)
class VocFolder:
    """A VOC-format folder as torchvision's VOC datasets take it: ``root`` holds ``VOCdevkit/VOC<year>``
    (``folder``)."""

    root: Path
    year: str
    folder: Path


class VocMasks(Dataset[tuple[Tensor, Tensor]]):
    """A VOC segmentation split (torchvision's ``VOCSegmentation``): the image resized to ``input_size``
    (bilinear) and normalized with ImageNet's mean/std, its class mask resized alike (nearest: class ids
    must not blend). Mask values are VOC's class indices; 255 (object borders, "void") is ignored by the
    loss and the scores. ``augment`` flips image and mask together, at random."""

    def __init__(self, voc: VocFolder, split: str, *, input_size: InputSize, augment: bool = False) -> None:
        if input_size[0] != 3:
            raise DataError(f"voc holds RGB images; the model takes {input_size[0]} channels: build it with 3")
        self.voc, self.split, self.input_size, self.augment = voc, split, input_size, augment
        self._set = VOCSegmentation(str(voc.root), year=voc.year, image_set=split, download=False)
        self.num_classes = len(VOC_CLASSES)
        mean, std = _STATS["imagefolder"]  # ImageNet's, as torchvision's segmentation models expect
        self._mean, self._std = torch.tensor(mean).reshape(3, 1, 1), torch.tensor(std).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self._set)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_file, mask_file = self._set.images[index], self._set.masks[index]
        try:
            image, mask = self._set[index]
        except Exception as exc:  # noqa: BLE001 - a missing file, PIL's OSError, SyntaxError, ...
            raise DataError(f"voc: cannot read {image_file} or {mask_file} ({type(exc).__name__}): restore them or "
                            f"remove the image from ImageSets/Segmentation/{self.split}.txt") from None
        if mask.mode not in ("P", "L"):  # an RGB rendering of the palette holds colours, not class ids
            raise DataError(f"voc: {mask_file} is a {mask.mode} image; masks are palette (or grayscale) PNGs of class "
                            "indices, 255 for void, as VOC's SegmentationClass ships them")
        if mask.size != image.size:  # resized to the model's size separately, it would label other pixels
            raise DataError(f"voc: {mask_file} is {mask.size[0]}x{mask.size[1]} but its image {image_file} is "
                            f"{image.size[0]}x{image.size[1]}: a mask labels its image's pixels; give it the image's size")
        labels = torch.from_numpy(np.array(mask, dtype=np.uint8))
        if bool(((labels >= self.num_classes) & (labels != VOC_VOID)).any()):
            raise DataError(f"voc: {mask_file} holds class {int(labels[labels != VOC_VOID].max())}; VOC masks hold "
                            f"0-{self.num_classes - 1} (the background and VOC's 20 classes) and 255 for void")
        size = [self.input_size[1], self.input_size[2]]
        x = resize(pil_to_tensor(image.convert("RGB")), size, InterpolationMode.BILINEAR, antialias=True)
        labels = resize(labels[None], size, InterpolationMode.NEAREST)[0]
        if self.augment and bool(torch.rand(()) < 0.5):
            x, labels = hflip(x), hflip(labels)
        return (x.to(torch.float32).div_(255.0) - self._mean) / self._std, labels.to(torch.int64)

    def with_augment(self, augment: bool) -> VocMasks:
        return self if augment == self.augment else VocMasks(self.voc, self.split, input_size=self.input_size,
                                                              augment=augment)


class VocBoxes(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """A VOC detection split (torchvision's ``VOCDetection``), as torchvision's detectors take it: a [0, 1]
    float image at its own size and a target of xyxy ``boxes`` (VOC's 1-based pixel indices turned into
    pixel edges), ``labels`` (indices into :data:`VOC_CLASSES`) and ``iscrowd`` (VOC's "difficult" flag).
    Difficult objects are left out of training targets; evaluation keeps them as crowd regions, which
    COCOeval ignores, as VOC's own evaluation ignores difficult objects."""

    def __init__(self, voc: VocFolder, split: str, *, training: bool) -> None:
        self.voc, self.split, self.training = voc, split, training
        self._set = VOCDetection(str(voc.root), year=voc.year, image_set=split, download=False)
        self.num_classes = len(VOC_CLASSES)

    def __len__(self) -> int:
        return len(self._set)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_file, annotation_file = self._set.images[index], self._set.annotations[index]
        try:
            image, parsed = self._set[index]
        except Exception as exc:  # noqa: BLE001 - a missing file, PIL's OSError, an XML ParseError, ...
            raise DataError(f"voc: cannot read {image_file} or {annotation_file} ({type(exc).__name__}): restore them "
                            f"or remove the image from ImageSets/Main/{self.split}.txt") from None
        boxes, labels, difficult = [], [], []
        for obj in parsed.get("annotation", {}).get("object", []):
            name = str(obj.get("name", "")).strip()
            if name not in VOC_CLASSES[1:]:
                raise DataError(f"voc: {annotation_file} names an object {name!r}, not one of VOC's 20 classes "
                                f"({', '.join(VOC_CLASSES[1:])}): fix its <name>")
            try:
                box = obj["bndbox"]
                x0, y0 = float(box["xmin"]) - 1.0, float(box["ymin"]) - 1.0
                x1, y1 = float(box["xmax"]), float(box["ymax"])
                hard = int(obj.get("difficult") or 0)
                if not all(map(math.isfinite, (x0, y0, x1, y1))):
                    raise ValueError(f"{x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g} are not all finite")
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"voc: {annotation_file}: an object {name!r} has no readable <bndbox> or <difficult> "
                                f"({type(exc).__name__}: {exc}): give it xmin, ymin, xmax, ymax as finite numbers "
                                "(and difficult as 0 or 1)") from None
            if x1 <= x0 or y1 <= y0 or (self.training and hard):
                continue
            boxes.append(list(_box_on_image(x0, y0, x1, y1, image.size, f"voc: {annotation_file}: object {name!r}")))
            labels.append(VOC_CLASSES.index(name))
            difficult.append(hard)
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64),
                  "iscrowd": torch.tensor(difficult, dtype=torch.int64)}
        return pil_to_tensor(image.convert("RGB")).to(torch.float32).div_(255.0), target

    collate = staticmethod(CocoBoxes.collate)

    def with_augment(self, augment: bool) -> VocBoxes:  # noqa: ARG002 - boxes would have to follow a crop
        return self


BOX_DATASETS = (CocoBoxes, VocBoxes)
# Data that training does not augment: boxes would have to follow a crop, and every shapes image is new anyway.
UNAUGMENTED = (ShapesDataset, CocoBoxes, VocBoxes)
AnyDataset = ImageTensorDataset | ImageFolderDataset | ShapesDataset | CocoBoxes | VocMasks | VocBoxes


def takes_augment(dataset: AnyDataset) -> bool:
    """Whether ``make_loader(..., augment=True)`` augments ``dataset`` (crop/flip); False where it is ignored."""
    return not isinstance(dataset, UNAUGMENTED)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


class Loader(Protocol):
    """What :func:`make_loader` returns: re-iterable batches, a length and an epoch setter."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) so nearby pairs such as (0, 1) and (1, 0) do not collide.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class _SeededLoader:
    """What both loaders share: batch count and per-(seed, epoch) randomness."""

    batch_size: int
    drop_last: bool
    dataset: AnyDataset
    seed: int
    epoch: int

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    rank: int = 0
    world_size: int = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> "_SeededLoader":
        """Under DDP: every process draws the same global batches (same (seed, epoch) order) and
        takes its own contiguous slice of each, so N processes together see exactly the batches
        one process would, whatever N is (which is also what lets --resume change the world size)."""
        if world_size > 1 and self.batch_size % world_size:
            raise ValueError(f"batch size {self.batch_size} is not divisible by {world_size} processes")
        self.rank, self.world_size = rank, world_size
        return self

    def _local(self, indices: Tensor) -> Tensor:
        return indices.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else indices

    def _next_generator(self) -> torch.Generator:
        """The generator for this pass: (seed, epoch) fixes shuffling and augmentation; the
        epoch then advances so the next pass differs."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        return generator


class TensorLoader(_SeededLoader):
    """Batches of an in-memory dataset, shuffled and augmented from one seeded generator.

    Each pass uses the generator for (seed, epoch); the epoch advances after every pass, and
    ``set_epoch`` pins it (for resuming), so a run is reproducible epoch by epoch.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        augment: bool,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.augment = augment
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = self._next_generator()
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            indices = self._local(order[i * self.batch_size : (i + 1) * self.batch_size])
            if len(indices):  # a short last batch may leave a process nothing
                yield self.dataset.batch(indices, augment=self.augment, generator=generator)


class FolderLoader(_SeededLoader):
    """A torch ``DataLoader`` over an ImageFolder dataset, reseeded per epoch.

    Shuffling and, with ``num_workers > 0``, the workers' random transforms follow (seed, epoch);
    with ``num_workers == 0`` the transforms draw from torch's global generator.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset | CocoBoxes | VocMasks | VocBoxes,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        augment: bool,
        num_workers: int,
    ) -> None:
        self.dataset = dataset.with_augment(augment)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = self._next_generator()
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        batches = [b for i in range(len(self))
                   if (b := self._local(order[i * self.batch_size : (i + 1) * self.batch_size]).tolist())]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers, generator=generator,
                            collate_fn=getattr(self.dataset, "collate", None))
        try:
            yield from loader
        except DataError as exc:
            # From a worker process, torch re-raises it with the worker's traceback in the message;
            # the user needs the last line only (which file, and what to do).
            text = str(exc)
            raise DataError(text.rpartition("DataError: ")[2] if text.startswith("Caught ") else text) from None


def make_loader(
    dataset: AnyDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    augment: bool = False,
    num_workers: int = 0,
    detection: bool = False,
) -> Loader:
    """Batches of ``(float32 NCHW images, int64 labels)`` from a dataset of :func:`load_data`; of
    ``(images, masks)`` from the shapes data, or with ``detection`` of ``(list of images, list of
    target dicts)`` as torchvision's detectors take them.

    ``augment`` adds random crop + horizontal flip (in-memory data: 4 px padding at 32x32,
    scaled with the size; ImageFolder: the standard random-resized crop). In-memory data is
    batched in the calling process, so ``num_workers`` only applies to ImageFolder.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if detection != isinstance(dataset, BOX_DATASETS) and not isinstance(dataset, ShapesDataset):
        raise DataError(f"{type(dataset).__name__} " + ("holds no boxes: detectors train on shapes, coco:PATH or "
                                                         "voc:PATH" if detection else "holds boxes: for detectors"))
    if isinstance(dataset, ImageTensorDataset):
        return TensorLoader(
            dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, augment=augment
        )
    if isinstance(dataset, ShapesDataset):
        return ShapesLoader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, detection=detection)
    if isinstance(dataset, (ImageFolderDataset, CocoBoxes, VocMasks, VocBoxes)):
        return FolderLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            augment=augment,
            num_workers=num_workers,
        )
    raise TypeError(f"make_loader takes a dataset from load_data, got {type(dataset).__name__}")


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """The datasets of one run. ``val`` is carved from the training set (None when empty)."""

    train: AnyDataset
    val: AnyDataset | None
    test: AnyDataset
    num_classes: int
    name: str
    description: str
    in_chans_source: int


@dataclass
class _Splits:
    """A dataset before the validation split."""

    train: AnyDataset
    test: AnyDataset
    num_classes: int
    in_chans_source: int
    title: str
    origin: str
    default_val_size: int
    stratified: bool  # split val evenly over classes (the paper's "50 images per class")


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian dims, then uint8 data), gzipped or not."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; reinstall the dataset or pass --data-dir") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file: reinstall the dataset or pass --data-dir")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise DataError(f"{path} is truncated: reinstall the dataset or pass --data-dir")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _fmnist_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (uncompressed preferred, ``.gz`` accepted), or None."""
    found = {}
    for key, stem in _FMNIST_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's downloader opens URLs without a timeout; offline it could hang for minutes.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_fmnist() -> Path:
    from torchvision.datasets import FashionMNIST

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _socket_timeout(20):
        FashionMNIST(str(CACHE_DIR), train=True, download=True)
        FashionMNIST(str(CACHE_DIR), train=False, download=True)
    return CACHE_DIR / "FashionMNIST" / "raw"


def _fashion_mnist(data_dir: str | None, input_size: InputSize) -> _Splits:
    files = None
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        files = _fmnist_files(root) or _fmnist_files(root / _FMNIST_TORCHVISION_RAW)
        if files is None:
            names = ", ".join(f"{stem}[.gz]" for stem in _FMNIST_FILES.values())
            raise DataError(f"Fashion-MNIST not found in {root} (need {names}): {_FMNIST_FIX}")
    else:
        files = _fmnist_files(FASHION_MNIST_DIR) or _fmnist_files(CACHE_DIR / _FMNIST_TORCHVISION_RAW)
        if files is None:
            try:
                files = _fmnist_files(_download_fmnist())
            except Exception as exc:  # any network/IO failure means the same thing to the user
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(
                    f"Fashion-MNIST not found in {FASHION_MNIST_DIR} and download failed ({reason}): "
                    f"{_FMNIST_FIX}"
                ) from exc
            if files is None:
                raise DataError(
                    f"Fashion-MNIST download left no IDX files in {CACHE_DIR}: {_FMNIST_FIX}"
                )
    arrays = {key: _read_idx(path) for key, path in files.items()}
    mean, std = _STATS["fashion-mnist"]

    def split(prefix: str) -> ImageTensorDataset:
        images = torch.from_numpy(arrays[f"{prefix}_images"].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{prefix}_labels"].astype(np.int64))
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"Fashion-MNIST {prefix} images and labels differ in count: reinstall it")
        return ImageTensorDataset(images, labels, input_size=input_size, mean=mean, std=std)

    return _Splits(
        train=split("train"),
        test=split("test"),
        num_classes=10,
        in_chans_source=1,
        title="Fashion-MNIST",
        origin=str(files["train_images"].parent),
        default_val_size=PAPER_VAL_SIZE,
        stratified=False,
    )


def _cifar(name: str, data_dir: str | None, input_size: InputSize) -> _Splits:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, num_classes = {"cifar10": (CIFAR10, 10), "cifar100": (CIFAR100, 100)}[name]
    root = Path(data_dir).expanduser() if data_dir is not None else CACHE_DIR
    try:
        train_set = cls(str(root), train=True, download=False)
        test_set = cls(str(root), train=False, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise DataError(_cifar_not_found(name, root)) from exc
    mean, std = _STATS[name]

    def to_dataset(ds: CIFAR10) -> ImageTensorDataset:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        return ImageTensorDataset(images, labels, input_size=input_size, mean=mean, std=std)

    return _Splits(
        train=to_dataset(train_set),
        test=to_dataset(test_set),
        num_classes=num_classes,
        in_chans_source=3,
        title=_CIFAR_TITLES[name][0],
        origin=str(root / _CIFAR_FOLDERS[name]),
        default_val_size=PAPER_VAL_SIZE,
        stratified=False,
    )


def _image_folder(path: str, input_size: InputSize) -> _Splits:
    from torchvision.datasets import ImageFolder

    root = Path(path).expanduser()
    layout = f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image>"
    folders = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"imagefolder: {root / split} does not exist: {layout}")
        try:
            folders[split] = ImageFolder(str(root / split))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"imagefolder: no images in {root / split} ({exc}): {layout}") from exc
    classes = folders["train"].classes
    if len(classes) < 2:
        # A classifier of one class scores top-1 1.0 whatever it learns: no result of it means anything.
        raise DataError(f"imagefolder: {root / 'train'} has {len(classes)} class folder ({', '.join(classes)}): "
                        "a classifier needs at least 2; add a folder per class (train/<class>/<image>)")
    if folders["val"].classes != classes:
        missing = sorted(set(classes) ^ set(folders["val"].classes))
        raise DataError(
            f"imagefolder: train and val class folders differ ({', '.join(missing[:5])}): "
            "give both splits the same class folders"
        )
    train = ImageFolderDataset(folders["train"].samples, classes, input_size=input_size)
    test = ImageFolderDataset(folders["val"].samples, classes, input_size=input_size)
    return _Splits(
        train=train,
        test=test,
        num_classes=len(classes),
        in_chans_source=3,
        title="ImageFolder",
        origin=str(root),
        default_val_size=PAPER_VAL_PER_CLASS * len(classes),
        stratified=True,
    )


def _synthetic(input_size: InputSize, seed: int, size: int, num_classes: int) -> _Splits:
    if size < 2:
        raise DataError(f"synthetic_size must be at least 2, got {size}")
    n_test = max(1, size // 4)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size + n_test, *input_size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (size + n_test,), generator=generator)
    mean, std = _STATS["synthetic"]

    def dataset(rows: slice) -> ImageTensorDataset:
        return ImageTensorDataset(images[rows], labels[rows], input_size=input_size, mean=mean, std=std)

    return _Splits(
        train=dataset(slice(0, size)),
        test=dataset(slice(size, None)),
        num_classes=num_classes,
        in_chans_source=input_size[0],
        title=SYNTHETIC_DESCRIPTION,
        origin=f"seed {seed}",
        default_val_size=size // 8,
        stratified=False,
    )


def _shapes(size: InputSize, seed: int, val_size: int | None) -> DataBundle:
    """Disjoint index ranges of one seeded stream: train, then test, then val (so the test images are the
    same whatever --val-size is)."""
    if size[0] != 3:
        raise DataError(f"the shapes dataset draws 3-channel images; the model takes {size[0]}: build it with 3")
    n_train, n_test = SHAPES_SPLITS["train"], SHAPES_SPLITS["test"]
    n_val = SHAPES_SPLITS["val"] if val_size is None else val_size
    if not 0 <= n_val <= 100_000:
        raise DataError(f"val_size {n_val} must be between 0 and 100000 for the shapes dataset: pass a valid --val-size")
    train = ShapesDataset(n_train, input_size=size, seed=seed)
    test = ShapesDataset(n_test, input_size=size, seed=seed, first_index=n_train)
    val = ShapesDataset(n_val, input_size=size, seed=seed, first_index=n_train + n_test) if n_val else None
    counts = f"{n_train:,} train / " + (f"{n_val:,} val / " if n_val else "") + f"{n_test:,} test"
    return DataBundle(train=train, val=val, test=test, num_classes=SHAPES_CLASSES, name="shapes",
                      description=f"shapes (drawn from seed {seed}, offline): {counts}, {SHAPES_CLASSES} classes "
                                  f"(background, rectangle, ellipse, triangle) → {size[0]}x{size[1]}x{size[2]}",
                      in_chans_source=3)


# COCO's own names first (instances_train2017.json with train2017/), then the plain ones.
_COCO_SPLITS = {"train": ("train2017", "train"), "val": ("val2017", "val")}


def coco_files(path: str) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images folder, annotation file), "val": ...}`` of a COCO-format folder, or a
    DataError naming the first thing missing and the layout expected."""
    root = Path(path).expanduser()
    layout = ("expected PATH/annotations/instances_train2017.json with images in PATH/train2017/, and the same for "
              "val2017 (or instances_train.json with train/)")
    if not path:
        raise DataError(f"coco needs a path: use coco:PATH; {layout}")
    if not root.is_dir():
        raise DataError(f"coco: {root} is not a folder: {layout}")
    found = {}
    for split, names in _COCO_SPLITS.items():
        name = next((n for n in names if (root / "annotations" / f"instances_{n}.json").is_file()), None)
        if name is None:
            raise DataError(f"coco: {root / 'annotations' / f'instances_{names[0]}.json'} not found (nor "
                            f"instances_{names[1]}.json): {layout}")
        if not (root / name).is_dir():
            raise DataError(f"coco: {root / name} not found: the images of annotations/instances_{name}.json go there")
        found[split] = (root / name, root / "annotations" / f"instances_{name}.json")
    return found


def _coco(path: str, val_size: int | None) -> DataBundle:
    """A COCO-format folder: train2017 to train on, val2017 as the test split (COCO has no public test
    labels); no validation split is carved (gates learn on shapes)."""
    if val_size:
        raise DataError(f"coco:PATH holds no validation split to carve (val_size {val_size}): pass --val-size 0")
    files = coco_files(path)
    splits = {}
    for split, (images, annotation_file) in files.items():
        try:
            splits[split] = CocoBoxes(images, annotation_file, training=split == "train")
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise DataError(f"coco: cannot read {annotation_file} ({type(exc).__name__}: {' '.join(str(exc).split())[:80]}): "
                            "it must be a COCO instances file (images, annotations, categories)") from None
    train, test = splits["train"], splits["val"]
    if len(train) == 0:
        raise DataError(f"coco: {files['train'][1]} lists no images: add images and their annotations")
    classes = max(train.num_classes, test.num_classes)
    train.num_classes = test.num_classes = classes
    return DataBundle(train=train, val=None, test=test, num_classes=classes, name=f"coco:{path}",
                      description=f"COCO-format boxes in {Path(path).expanduser()}: {len(train):,} train / "
                                  f"{len(test):,} test ({files['val'][0].name}) images, {classes} classes "
                                  "(category ids, 0 the background), each resized by the detector",
                      in_chans_source=3)


# What each task reads from a VOC folder: (labels folder, ImageSets subfolder, label file suffix).
_VOC_PARTS = {"masks": ("SegmentationClass", "Segmentation", ".png"), "boxes": ("Annotations", "Main", ".xml")}
_VOC_LAYOUT = ("expected PATH/VOCdevkit/VOC2012/ (or PATH = that VOC2012 folder) with JPEGImages/, and "
               "SegmentationClass/ + ImageSets/Segmentation/{train,val}.txt for segmentation or Annotations/ + "
               "ImageSets/Main/{train,val}.txt for detection")


def _voc_year_folder(given: Path) -> Path | None:
    """The VOC<year> folder ``given`` is or holds (directly or in VOCdevkit/), the newest year first."""
    years = sorted({key[:4] for key in VOC_YEARS}, reverse=True)
    if given.name.startswith("VOC") and given.name[3:] in years:
        return given
    for parent in (given / "VOCdevkit", given, given / "TrainVal" / "VOCdevkit"):
        for year in years:
            if (parent / f"VOC{year}").is_dir():
                return parent / f"VOC{year}"
    return None


def voc_folder(path: str, *, detection: bool) -> VocFolder:
    """The VOC folder at ``path`` with what a segmentation model (masks) or a detector (boxes) reads in
    it, or a DataError naming the first thing missing and the layout expected. Every image and label
    file the train and val lists name is looked for here, so a missing one stops the run before it
    starts, not an epoch in."""
    if not path:
        raise DataError(f"voc needs a path: use voc:PATH; {_VOC_LAYOUT}")
    given = Path(path).expanduser()
    if not given.is_dir():
        raise DataError(f"voc: {given} is not a folder: {_VOC_LAYOUT}")
    folder = _voc_year_folder(given)
    if folder is None:
        raise DataError(f"voc: no VOC2007-VOC2012 folder in {given} or {given / 'VOCdevkit'}: {_VOC_LAYOUT}")
    year = folder.name[3:]
    base = Path(VOC_YEARS[year]["base_dir"])  # where torchvision looks under its root
    if folder.parts[-len(base.parts):] != base.parts:
        raise DataError(f"voc: {folder} must sit in a folder named {base.parent} (torchvision reads ROOT/{base}): "
                        f"move it there and pass voc:ROOT; {_VOC_LAYOUT}")
    labels_dir, lists_dir, suffix = _VOC_PARTS["boxes" if detection else "masks"]
    for needed in ("JPEGImages", labels_dir):
        if not (folder / needed).is_dir():
            raise DataError(f"voc: {folder / needed} not found: {_VOC_LAYOUT}")
    for split in ("train", "val"):
        listing = folder / "ImageSets" / lists_dir / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"voc: {listing} not found (the image names of the {split} split, one a line): "
                            f"{_VOC_LAYOUT}")
        names = listing.read_text().split()
        if not names:
            raise DataError(f"voc: {listing} lists no images: add the image names (without .jpg), one a line")
        for name in names:
            for needed in (folder / "JPEGImages" / f"{name}.jpg", folder / labels_dir / f"{name}{suffix}"):
                if not needed.is_file():
                    raise DataError(f"voc: {needed} not found ({listing} lists {name}): add it, or remove {name} "
                                    "from that list")
    return VocFolder(root=Path(*folder.parts[:-len(base.parts)]), year=year, folder=folder)


def _voc(path: str, val_size: int | None, size: InputSize, detection: bool) -> DataBundle:
    """A VOC-format folder: the train list to train on, the val list as the test split (VOC's test labels
    are not public); no validation split is carved."""
    if val_size:
        raise DataError(f"voc:PATH holds no validation split to carve (val_size {val_size}): pass --val-size 0")
    voc = voc_folder(path, detection=detection)
    if detection:
        train, test = VocBoxes(voc, "train", training=True), VocBoxes(voc, "val", training=False)
        labels, sizing = "boxes", "), each resized by the detector"
    else:
        train, test = VocMasks(voc, "train", input_size=size), VocMasks(voc, "val", input_size=size)
        labels, sizing = "masks", f"; 255 ignored) → {size[0]}x{size[1]}x{size[2]}"
    classes = len(VOC_CLASSES)
    return DataBundle(train=train, val=None, test=test, num_classes=classes, name=f"voc:{path}",
                      description=f"VOC{voc.year} {labels} in {voc.folder}: {len(train):,} train / {len(test):,} test "
                                  f"(val.txt) images, {classes} classes (VOC's 20 and the background{sizing}",
                      in_chans_source=3)


def _split_indices(
    labels: Tensor,
    val_size: int,
    num_classes: int,
    seed: int,
    stratified: bool,
    class_names: Sequence[str],
) -> tuple[Tensor, Tensor]:
    """(train, val) row indices, sorted; a seeded permutation decides which rows are held out."""
    n = labels.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if not stratified:
        val = perm[:val_size]
    else:
        # Sorting the shuffled rows by label (stably) groups each class in random order; the
        # first k of each group are held out, k spread as evenly as val_size allows.
        grouped = perm[torch.argsort(labels[perm], stable=True)]
        counts = torch.bincount(labels, minlength=num_classes).tolist()
        parts, start = [], 0
        for c, count in enumerate(counts):
            k = val_size // num_classes + (1 if c < val_size % num_classes else 0)
            if k > count:
                raise DataError(
                    f"class {class_names[c]!r} has {count} training images, fewer than the {k} to hold "
                    f"out for validation: pass a smaller --val-size (now {val_size})"
                )
            parts.append(grouped[start : start + k])
            start += count
        val = torch.cat(parts)
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def data_missing(name: str, data_dir: str | None = None, *, detection: bool = False) -> str | None:
    """Why ``name`` cannot be loaded here, without reading it (for ``slimkit run --dry-run``), or None
    (``detection``: what a detector reads, where the data holds boxes and masks apart).

    A cheap look at the paths each loader reads; the loaders themselves give the full error."""
    if name in ("synthetic", "shapes"):
        return None
    if name == "fashion-mnist":
        roots = [Path(data_dir).expanduser()] if data_dir else [FASHION_MNIST_DIR, CACHE_DIR]
        if any(_fmnist_files(r) or _fmnist_files(r / _FMNIST_TORCHVISION_RAW) for r in roots):
            return None
        return (f"Fashion-MNIST not found in {roots[0]}" + ("" if data_dir else " (a download is tried at run time)")
                + f": {_FMNIST_FIX}")
    if name in ("cifar10", "cifar100"):
        root = Path(data_dir).expanduser() if data_dir else CACHE_DIR
        folder = _CIFAR_FOLDERS[name]
        return None if (root / folder).is_dir() else _cifar_not_found(name, root)
    if name.startswith("imagefolder:"):
        root = Path(name.removeprefix("imagefolder:")).expanduser()
        missing = [str(root / s) for s in ("train", "val") if not (root / s).is_dir()]
        return f"imagefolder: {', '.join(missing)} missing (set data.name=imagefolder:PATH)" if missing else None
    if name.startswith("coco:"):
        try:
            coco_files(name.removeprefix("coco:"))
        except DataError as exc:
            return str(exc)
    if name.startswith("voc:"):
        try:
            voc_folder(name.removeprefix("voc:"), detection=detection)
        except DataError as exc:
            return str(exc)
    return None  # an unknown name is the loader's (and the recipe check's) to report


def _check_input_size(input_size: Sequence[int]) -> InputSize:
    if len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise DataError(f"input_size must be three positive ints (C, H, W), got {tuple(input_size)}")
    return (input_size[0], input_size[1], input_size[2])


def load_data(
    name: str,
    *,
    data_dir: str | None,
    input_size: tuple[int, int, int],
    val_size: int | None = None,
    seed: int = 0,
    synthetic_size: int = 512,
    num_classes_hint: int | None = None,
    detection: bool = False,
) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) for a model taking ``input_size`` images.

    ``val_size`` images are held out of the training set (default: 5,000 for Fashion-MNIST and
    CIFAR, 50 per class for ImageFolder, 1/8 for synthetic; 0 for none), chosen by ``seed``.
    ``synthetic_size`` and ``num_classes_hint`` (default 10) only shape the synthetic dataset.
    ``detection`` reads a ``voc:`` folder's boxes instead of its masks.
    """
    size = _check_input_size(input_size)
    if name == "shapes":
        return _shapes(size, seed, val_size)
    if name.startswith("coco:"):
        return _coco(name.removeprefix("coco:"), val_size)
    if name.startswith("voc:"):
        return _voc(name.removeprefix("voc:"), val_size, size, detection)
    if name == "fashion-mnist":
        source = _fashion_mnist(data_dir, size)
    elif name in ("cifar10", "cifar100"):
        source = _cifar(name, data_dir, size)
    elif name.startswith("imagefolder:"):
        path = name.removeprefix("imagefolder:")
        if not path:
            raise DataError(
                "imagefolder needs a path: use imagefolder:PATH with PATH/train and PATH/val"
            )
        source = _image_folder(path, size)
    elif name == "synthetic":
        source = _synthetic(size, seed, synthetic_size, num_classes_hint or 10)
    else:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")

    pool = source.train
    val_size = source.default_val_size if val_size is None else val_size
    if not 0 <= val_size < len(pool):
        raise DataError(
            f"val_size {val_size} must be between 0 and {len(pool) - 1} "
            f"({source.title} has {len(pool)} training images): pass a valid --val-size"
        )
    if isinstance(pool, ImageFolderDataset):
        class_names = pool.classes
    else:
        class_names = [str(c) for c in range(source.num_classes)]
    train_idx, val_idx = _split_indices(
        pool.labels, val_size, source.num_classes, seed, source.stratified, class_names
    )
    train = pool.subset(train_idx)
    val = pool.subset(val_idx) if val_size > 0 else None

    c, h, w = size
    n_val = len(val) if val is not None else 0
    counts = f"{len(train):,} train / " + (f"{n_val:,} val / " if n_val else "") + f"{len(source.test):,} test"
    description = (
        f"{source.title} ({source.origin}): {counts}, {source.num_classes} classes, "
        f"{source.in_chans_source}-channel source → {c}x{h}x{w}"
    )
    return DataBundle(
        train=train,
        val=val,
        test=source.test,
        num_classes=source.num_classes,
        name=name,
        description=description,
        in_chans_source=source.in_chans_source,
    )
