"""What slimkit traces of torchvision's detection models: the dense part, backbone to head tensors.

A torchvision detector resizes its input, runs backbone (+ FPN) and dense heads, then decodes
anchors, runs NMS and (for the R-CNNs) RoI heads on however many boxes survive. That tail cannot be
traced with static shapes, and its widths are fixed by the task (boxes, classes, keypoints, and the
RoI heads read the FPN's width). :class:`DenseDetectionCore` holds the detector's own submodules
under their own names (so the channel graph's parameter names are the detector's and G resizes the
detector itself) and returns the tensors the tail reads: the graph freezes them as outputs, so
every width the tail depends on keeps its size, and everything before it may be pruned.

MACs of a detector are counted on this core at the deployment input (the R-CNNs' RoI heads run on
a data-dependent number of boxes: their cost is not a property of the widths).

:class:`WholeDetector` is the other view, for export only: the detector itself, transform to NMS, on
one image tensor, returning its detections as a tuple of tensors (what an ONNX graph can output).
"""

from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

__all__ = ["DenseDetectionCore", "WholeDetector", "traced_part", "is_detector", "deployment_side", "DETECTION_OUTPUTS",
           "set_detector_input_size"]

# what a torchvision detector returns per image, in the order a whole-detector export outputs them
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "masks", "keypoints", "keypoints_scores")


def is_detector(model: nn.Module) -> bool:
    return isinstance(model, (SSD, RetinaNet, FCOS, GeneralizedRCNN))


def deployment_side(detector: nn.Module) -> int:
    """The side a detector's own transform resizes every image to (320 for SSDlite, 800 for the R-CNNs)."""
    return int(min(detector.transform.min_size))


class DenseDetectionCore(nn.Module):
    """Backbone and dense heads of a torchvision detector on an image batch at the deployment size."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        for name, child in detector.named_children():  # the same names: parameter paths match the detector's
            self.add_module(name, child)
        self.two_stage = isinstance(detector, GeneralizedRCNN)
        self.training = detector.training  # its submodules' mode: restoring "the core's mode" must not flip them

    def forward(self, x: torch.Tensor) -> Any:
        features = self.backbone(x)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        levels = list(features.values())
        if self.two_stage:  # the RPN's scores and deltas; the FPN levels feed the RoI heads
            objectness, deltas = self.rpn.head(levels)
            return levels, objectness, deltas
        return self.head(levels)


def traced_part(model: nn.Module) -> nn.Module:
    """The module slimkit traces and counts for ``model``: a detector's dense core, else the model."""
    return DenseDetectionCore(model) if is_detector(model) else model


class WholeDetector(nn.Module):
    """A torchvision detector on one image, (1, 3, H, W) in [0, 1], -> its detections as a tuple in the
    order of :attr:`output_names`: boxes (N, 4, xyxy pixels of the input), scores (N,), labels (N,),
    and masks or keypoints for Mask/Keypoint R-CNN. Its own transform (resize, normalize), box decoding
    and NMS run inside, so an export of it is the deployable detector."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        if not is_detector(detector):
            raise TypeError(f"{type(detector).__name__} is not a torchvision detector")
        self.detector = detector
        roi_heads = getattr(detector, "roi_heads", None)
        extra = ()
        if roi_heads is not None and roi_heads.has_mask():
            extra = ("masks",)
        elif roi_heads is not None and roi_heads.has_keypoint():
            extra = ("keypoints", "keypoints_scores")
        self.output_names = ("boxes", "scores", "labels") + extra
        # what runs here beyond the dense core, named in the latency report: for an R-CNN the second
        # stage too (RoI heads on up to 1000 proposals), usually the larger part
        stages = ["transform", "box decoding", "NMS"]
        if roi_heads is not None:
            stages[1:] = ["proposals and their NMS", "RoI heads", "box decoding", "NMS"]
            stages += ["mask head and pasting"] if extra == ("masks",) else ["keypoint head"] if extra else []
        self.postprocessing = ", ".join(stages)

    def with_score_threshold(self, value: float) -> WholeDetector:
        """A copy that keeps detections down to score ``value``: the same graph with another constant
        (the threshold is a Python float the tracer records as one)."""
        copy = deepcopy(self)
        owner = getattr(copy.detector, "roi_heads", copy.detector)  # R-CNNs threshold in their RoI heads
        owner.score_thresh = value
        return copy

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detections = self.detector([x[0]])[0]
        return tuple(detections[name] for name in self.output_names)


def set_detector_input_size(detector: nn.Module, size: tuple[int, int]) -> nn.Module:
    """Make ``detector``'s own transform resize every image to ``size`` = (H, W), the input its MACs
    were counted at (a plan's ``input_size``), instead of the size it was built for (320 for SSDlite,
    800-1333 for the R-CNNs): trained and evaluated at the size it is deployed at."""
    transform = detector.transform
    height, width = size
    transform.min_size = (min(height, width),)
    transform.max_size = max(height, width)
    if getattr(transform, "fixed_size", None) is not None:  # SSD resizes to exactly this, given as (W, H)
        transform.fixed_size = (width, height)
    return detector
