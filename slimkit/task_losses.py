"""Task losses and metrics beyond classification, and the checks on a user's own loss and batches.

Gate learning and training call a loss as ``loss_fn(model, batch) -> scalar tensor``: the model
and one batch as the loader yields it. slimkit's own for segmentation is torchvision's reference
recipe: cross-entropy on the ``'out'`` map, plus 0.5 x cross-entropy on the ``'aux'`` map where
the model has one (DeepLabV3 and FCN with ``aux_loss=True``), pixels labelled 255 ignored (VOC's
"void"); for torchvision's detectors, the sum of the losses they return in train mode. Segmentation's metrics are pixel accuracy and mean IoU from one confusion matrix over the whole
evaluation set; the mean runs over the classes that occur (in the labels or the predictions), so a
class the data never shows does not count as a perfect or a failed class. Detection's are COCO's box
mAP averaged over IoU 0.5:0.95 and mAP at IoU 0.5, computed by pycocotools' COCOeval (the reference
implementation every detection paper reports, rather than a re-implementation of its interpolation
and matching rules) on the evaluation set converted to COCO's format in memory.

A user's ``loss_fn`` returning anything but a one-element tensor that depends on the model, or a
loader whose batches do not fit what slimkit feeds the model, stops at the first batch with one
line naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from slimkit.data import VOC_VOID
from slimkit.errors import SlimkitError
from slimkit.runtime import all_reduce_sum, autocast, place_batch
from slimkit.validate import a_kind

__all__ = ["AUX_WEIGHT", "IGNORE_INDEX", "LossFn", "detection_loss", "segmentation_loss", "segmentation_output_loss",
           "confusion_matrix", "segmentation_scores", "evaluate_segmentation", "detection_scores",
           "evaluate_detection", "checked_loss", "class_scores", "to_device",
           "check_classification_batch", "check_loader"]

LossFn = Callable[[nn.Module, Any], Tensor]
AUX_WEIGHT = 0.5  # torchvision's references/segmentation/train.py
IGNORE_INDEX = VOC_VOID  # VOC's "void" pixels: object borders and unlabelled regions


def segmentation_output_loss(out: Any, masks: Tensor) -> Tensor:
    """The segmentation loss of a model's output (a dict with 'out', maybe 'aux', or a bare map)."""
    if isinstance(out, Tensor):
        return F.cross_entropy(out.float(), masks, ignore_index=IGNORE_INDEX)
    if not isinstance(out, dict) or "out" not in out:
        raise SlimkitError(f"a segmentation model must return a class map or a dict with 'out' (torchvision's), got "
                           f"{type(out).__name__}: pass your own loss_fn")
    loss = F.cross_entropy(out["out"].float(), masks, ignore_index=IGNORE_INDEX)
    if out.get("aux") is not None:
        loss = loss + AUX_WEIGHT * F.cross_entropy(out["aux"].float(), masks, ignore_index=IGNORE_INDEX)
    return loss


def segmentation_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """``loss_fn`` for segmentation batches ``(images, masks)``: cross-entropy (+ 0.5 aux)."""
    images, masks = batch
    return segmentation_output_loss(model(images), masks)


def detection_loss(model: nn.Module, batch: tuple[list[Tensor], list[dict[str, Tensor]]]) -> Tensor:
    """``loss_fn`` for torchvision detectors on ``(images, targets)`` batches: the sum of the losses the
    detector itself returns in train mode (SSD: box regression + classification; the R-CNNs add the
    RPN's)."""
    images, targets = batch
    losses = model(images, targets)
    if not isinstance(losses, dict):
        raise SlimkitError(f"a detector in train mode returns a dict of losses, got {type(losses).__name__}: "
                           "pass your own loss_fn")
    return sum(losses.values())


def _class_map(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out["out"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted; ignored pixels left out."""
    keep = target != IGNORE_INDEX
    index = target[keep].to(torch.int64) * num_classes + pred[keep].to(torch.int64)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor) -> dict[str, Any]:
    """Pixel accuracy, mean IoU over the classes present, and each class's IoU (None where absent)."""
    confusion = confusion.to(torch.float64)
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    iou = torch.where(present, hits / union.clamp(min=1), torch.zeros_like(hits))
    total = confusion.sum()
    return {"pixel_accuracy": float(hits.sum() / total) if total > 0 else 0.0,
            "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
            "iou": [float(v) if p else None for v, p in zip(iou, present)]}


def evaluate_segmentation(model: nn.Module, loader: Iterable, device: torch.device, num_classes: int,
                          amp: bool = True, channels_last: bool = True, eval_mode: bool = True) -> dict[str, Any]:
    """Loss (per pixel), pixel accuracy and mIoU of ``model`` on ``(images, masks)`` batches (in eval
    mode unless ``eval_mode`` is off: gate learning scores with BatchNorm on batch statistics)."""
    if eval_mode:
        model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total_loss = pixels = 0.0
    with torch.no_grad(), autocast(device, amp):
        for images, masks in loader:
            images, masks = place_batch(images, device, channels_last), masks.to(device, non_blocking=True)
            out = model(images)
            counted = int((masks != IGNORE_INDEX).sum())
            total_loss += segmentation_output_loss(out, masks).item() * counted
            pixels += counted
            confusion += confusion_matrix(_class_map(out).argmax(1), masks, num_classes)
    total_loss, pixels = all_reduce_sum(total_loss, pixels, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(confusion)
    return {"loss": total_loss / max(pixels, 1), **segmentation_scores(confusion.cpu())}


def _xywh(box: Tensor) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def detection_scores(targets: list[dict[str, Tensor]], predictions: list[dict[str, Tensor]],
                     num_classes: int) -> dict[str, float]:
    """COCO box mAP@[.5:.95] ('map') and mAP@.5 ('map50') of ``predictions`` (torchvision's eval-mode
    output: boxes xyxy, labels, scores) against ``targets`` (boxes xyxy, labels, optionally iscrowd),
    item i of both being the same image; classes 1 .. num_classes - 1 (0 is the background). A class
    with no ground-truth box is left out of the mean, as COCOeval does."""
    images, truth, found = [], [], []
    for image_id, (target, pred) in enumerate(zip(targets, predictions, strict=True), start=1):
        images.append({"id": image_id})
        crowd = target.get("iscrowd", torch.zeros(len(target["labels"]), dtype=torch.int64))
        for box, label, is_crowd in zip(target["boxes"], target["labels"], crowd):
            bbox = _xywh(box)
            truth.append({"id": len(truth) + 1, "image_id": image_id, "category_id": int(label), "bbox": bbox,
                          "area": bbox[2] * bbox[3], "iscrowd": int(is_crowd)})
        for box, label, score in zip(pred["boxes"], pred["labels"], pred["scores"]):
            found.append({"image_id": image_id, "category_id": int(label), "bbox": _xywh(box),
                          "score": float(score)})
    if not truth:
        raise SlimkitError(f"the evaluation images hold no boxes ({len(images)} images): mAP is undefined; "
                           "evaluate on images with annotated objects")
    if not found:  # COCO.loadRes refuses an empty list; nothing found is an AP of 0 everywhere
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco = COCO()
        coco.dataset = {"images": images, "annotations": truth,
                        "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes)]}
        coco.createIndex()
        result = COCOeval(coco, coco.loadRes(found), "bbox")
        result.evaluate()
        result.accumulate()
        result.summarize()
    # stats[0], stats[1]: AP at IoU .50:.95 and .50, all areas, 100 detections per image; -1 where no class has boxes
    return {"map": max(float(result.stats[0]), 0.0), "map50": max(float(result.stats[1]), 0.0)}


def evaluate_detection(model: nn.Module, loader: Iterable, device: torch.device, num_classes: int,
                       amp: bool = True) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 of a torchvision detector (in eval mode) on ``(images, targets)``
    batches; under torchrun every process's images count (each gets the same scores)."""
    model.eval()
    targets: list[dict[str, Tensor]] = []
    predictions: list[dict[str, Tensor]] = []
    with torch.no_grad(), autocast(device, amp):
        for images, batch_targets in loader:
            outputs = model(to_device(list(images), device))
            predictions += [{k: o[k].float().cpu() for k in ("boxes", "labels", "scores")} for o in outputs]
            targets += [{k: v.cpu() for k, v in t.items() if k in ("boxes", "labels", "iscrowd")}
                        for t in batch_targets]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (targets, predictions))
        targets = [t for part in gathered for t in part[0]]
        predictions = [p for part in gathered for p in part[1]]
    return detection_scores(targets, predictions, num_classes)


def checked_loss(value: Any, where: str = "loss_fn") -> Tensor:
    """``value`` if it is a loss gates can learn from: one number, as a tensor computed from the model."""
    if not isinstance(value, Tensor):
        raise SlimkitError(f"{where} must return a scalar tensor (the batch's loss), got {type(value).__name__}: "
                           "return e.g. torch.nn.functional.cross_entropy(model(x), y)")
    if value.numel() != 1:
        raise SlimkitError(f"{where} must return a scalar tensor, got one of shape {list(value.shape)}: reduce it "
                           "to one number, e.g. with .mean()")
    if not value.requires_grad:
        raise SlimkitError(f"{where} returned a tensor that does not depend on the model's output (no gradient): "
                           "compute the loss from model(batch), without torch.no_grad() or .detach()")
    return value.reshape(())


def class_scores(out: Any, model: nn.Module) -> Tensor:
    """``out``, a classifier's output, if it is the [batch, classes] scores slimkit's cross-entropy and
    accuracy read: a user's model whose forward returns a tuple or dict (aux logits, features) stops
    here in one line, at the first batch of training or gate learning, not as an AttributeError."""
    if isinstance(out, Tensor) and out.dim() == 2:
        return out
    what = f"a {list(out.shape)} tensor" if isinstance(out, Tensor) else a_kind(out)
    raise SlimkitError(f"{type(model).__name__}.forward returns {what}; slimkit trains a classifier on one "
                       "[batch, classes] tensor of class scores: return the logits alone (a factory option, or a "
                       "wrapper module that picks them)")


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch with every tensor in it (in tuples, lists and dicts, nested) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


def check_classification_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """A user loader's batch for slimkit's own classification loss: ``(images, integer labels)``."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
        what = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise SlimkitError(f"data yields a {what}; without loss_fn slimkit needs (images, labels) tensor pairs: "
                           "pass loss_fn=lambda model, batch: ... for other batches")
    images, labels = batch
    if images.dim() != 4 or labels.dim() != 1 or labels.dtype.is_floating_point or len(labels) != len(images):
        raise SlimkitError(f"data yields images {list(images.shape)} and labels {list(labels.shape)} "
                           f"({labels.dtype}); without loss_fn slimkit needs images (N, C, H, W) and N integer "
                           "labels: pass loss_fn for other batches")
    return images, labels


def check_loader(data: Any, what: str = "data") -> None:
    """``data`` can be iterated more than once (a DataLoader, a list of batches), not a one-shot iterator."""
    if isinstance(data, (str, bytes, Tensor)) or not isinstance(data, Iterable):
        raise SlimkitError(f"{what} must be a loader of batches (e.g. a torch.utils.data.DataLoader), got "
                           f"{type(data).__name__}")
    if iter(data) is data:
        raise SlimkitError(f"{what} is a one-shot iterator: gates learn over several passes; pass a DataLoader or a "
                           "list of batches")
