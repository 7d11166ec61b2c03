"""A procedurally drawn shapes dataset for segmentation (and detection): seeded, offline, any size.

Dense-prediction models need images with objects, masks and boxes to learn gates and to prove the
training loop, and no such dataset ships with a Linux distribution. Each image here is drawn from
``(seed, index)`` alone: a noisy background of a random colour with a gentle gradient, and one to
``max_shapes`` rectangles, ellipses and triangles of random colours, sizes and places, painted in
order (a later shape covers an earlier one), then sensor-like noise over everything. The same
seed and index give the same image, mask and boxes at any time, on any machine, at any size; an
image is drawn when it is read, so the model's deployment resolution (520 px for LR-ASPP) costs no
memory up front.

Targets: a per-pixel class mask (0 background, 1 rectangle, 2 ellipse, 3 triangle) and, per shape
still visible, its tight box (x0, y0, x1, y1 in pixel-edge coordinates: the box of the pixels the
mask gives it) and class. Masks and boxes therefore always agree.

Images come out as float32 in [0, 1], normalized with ImageNet's mean/std for segmentation models
(torchvision's segmentation models expect it; its detectors normalize inside their transform).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["SHAPE_CLASSES", "NUM_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "ShapesSample", "ShapesDataset",
           "ShapesLoader", "draw_sample"]

SHAPE_CLASSES = ("background", "rectangle", "ellipse", "triangle")
NUM_CLASSES = len(SHAPE_CLASSES)  # segmentation classes, background included
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MIN_COLOUR_GAP = 0.35  # L1 distance (of 3) between a shape's colour and the background's: visible, not trivial


@dataclass(frozen=True)
class ShapesSample:
    """One drawn image: ``image`` uint8 (3, H, W); ``mask`` int64 (H, W) of class ids; ``boxes`` float32
    (K, 4) xyxy and ``labels`` int64 (K,) of the shapes left visible."""

    image: Tensor
    mask: Tensor
    boxes: Tensor
    labels: Tensor


def _sample_seed(seed: int, index: int) -> int:
    # SeedSequence mixes (seed, index) so nearby pairs such as (0, 1) and (1, 0) do not collide.
    return int(np.random.SeedSequence([seed, index, 0x5AA9E5]).generate_state(1, np.uint64)[0] >> 1)


def draw_sample(seed: int, index: int, size: tuple[int, int], max_shapes: int = 4) -> ShapesSample:
    """Image ``index`` of the stream ``seed`` at ``size`` = (H, W)."""
    # numpy, not torch: one image is many small array operations, which torch's intra-op threads
    # slow down by an order of magnitude on a busy machine.
    height, width = size
    rng = np.random.Generator(np.random.PCG64(_sample_seed(seed, index)))
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    background = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, (3, 2)).astype(np.float32)  # per-channel gradient along y and x
    image = (background[:, None, None] + slope[:, 0, None, None] * (ys / height - 0.5)
             + slope[:, 1, None, None] * (xs / width - 0.5))
    image = np.broadcast_to(image, (3, height, width)).copy()
    instance = np.zeros((height, width), dtype=np.int64)  # 0: background; i: the i-th shape
    classes: list[int] = []
    side = min(height, width)
    for i in range(int(rng.integers(1, max_shapes + 1))):
        label = int(rng.integers(1, NUM_CLASSES))
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        a, b = rng.uniform(0.08, 0.3) * side, rng.uniform(0.08, 0.3) * side  # half extents
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        for _ in range(8):  # a colour that stands out from the background
            if np.abs(colour - background).sum() >= _MIN_COLOUR_GAP:
                break
            colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        dx, dy = xs - cx, ys - cy
        if label == 1:
            inside = (np.abs(dx) <= a) & (np.abs(dy) <= b)
        elif label == 2:
            inside = (dx / a) ** 2 + (dy / b) ** 2 <= 1.0
        else:  # an isosceles triangle, apex up: between apex and base, within the slanted sides
            inside = (np.abs(dy) <= b) & (np.abs(dx) <= a * (dy + b) / (2 * b))
        inside = np.broadcast_to(inside, (height, width))
        image[:, inside] = colour[:, None]
        instance[inside] = i + 1
        classes.append(label)
    image += rng.normal(0.0, 0.04, image.shape).astype(np.float32)
    image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    mask = np.array([0, *classes], dtype=np.int64)[instance]
    boxes, labels = [], []
    for i, label in enumerate(classes, start=1):
        mine = instance == i
        rows = np.flatnonzero(mine.any(1))
        if rows.size == 0:  # covered entirely by later shapes: nothing of it to find
            continue
        cols = np.flatnonzero(mine.any(0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        labels.append(label)
    return ShapesSample(torch.from_numpy(image), torch.from_numpy(mask),
                        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64))


class ShapesDataset:
    """``count`` images of the stream ``seed``, numbered from ``first_index``, at ``input_size`` (C, H, W).

    Splits of one stream are disjoint ranges of indices, so train, val and test never share an image."""

    def __init__(self, count: int, *, input_size: tuple[int, int, int], seed: int, first_index: int = 0,
                 normalize: bool = True, max_shapes: int = 4) -> None:
        if input_size[0] != 3:
            raise ValueError(f"the shapes dataset draws 3-channel images, not {input_size[0]}-channel ones")
        self.count = count
        self.input_size = (input_size[0], input_size[1], input_size[2])
        self.seed = seed
        self.first_index = first_index
        self.normalize = normalize
        self.max_shapes = max_shapes
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return self.count

    def sample(self, i: int) -> ShapesSample:
        if not 0 <= i < self.count:
            raise IndexError(f"shapes image {i} of {self.count}")
        return draw_sample(self.seed, self.first_index + i, self.input_size[1:], self.max_shapes)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.sample(i)
        return self._image(s.image[None])[0], s.mask

    def _image(self, images: Tensor) -> Tensor:
        x = images.to(torch.float32).div_(255.0)
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Segmentation: float32 images (B, 3, H, W) and int64 class masks (B, H, W)."""
        samples = [self.sample(int(i)) for i in indices]
        return (self._image(torch.stack([s.image for s in samples])), torch.stack([s.mask for s in samples]))

    def detection_batch(self, indices: Tensor) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """Detection, as torchvision's detectors take it: a list of [0, 1] images and of target dicts."""
        samples = [self.sample(int(i)) for i in indices]
        return ([s.image.to(torch.float32).div(255.0) for s in samples],
                [{"boxes": s.boxes, "labels": s.labels} for s in samples])

    def subset(self, indices: Tensor) -> ShapesDataset:
        """The first ``len(indices)`` images (a stream has no gaps: any subset of one size is as good)."""
        return ShapesDataset(len(indices), input_size=self.input_size, seed=self.seed, first_index=self.first_index,
                             normalize=self.normalize, max_shapes=self.max_shapes)


class ShapesLoader:
    """Batches of a :class:`ShapesDataset`, shuffled from (seed, epoch) like slimkit's other loaders."""

    def __init__(self, dataset: ShapesDataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool,
                 detection: bool = False) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.detection = detection
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> ShapesLoader:
        """Under DDP: the same global batches everywhere, each process its contiguous slice."""
        if world_size > 1 and self.batch_size % world_size:
            raise ValueError(f"batch size {self.batch_size} is not divisible by {world_size} processes")
        self.rank, self.world_size = rank, world_size
        return self

    def __iter__(self) -> Iterator[tuple]:
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, 1_000_000_007 + self.epoch))
        self.epoch += 1
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            indices = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world_size > 1:
                indices = indices.tensor_split(self.world_size)[self.rank]
            if len(indices):
                yield self.dataset.detection_batch(indices) if self.detection else self.dataset.batch(indices)
