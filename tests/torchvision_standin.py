"""A stand-in for the few torchvision names Meta's sam2 and ultralytics use, in plain torch, for
tests on machines where torchvision cannot load (only CUDA builds are published for this CPU torch;
an installed but broken one raises e.g. ``RuntimeError: operator torchvision::nms does not exist``).

Tests only. A test that imports a pipeline through it says so in its docstring, and runs the
original and the swapped pipeline through the same functions, so a difference from torchvision
cannot show up as a difference between the two. Used only where ``import torchvision`` fails
(raising anything), as if torchvision were not installed.

    Meta's sam2.utils.transforms:       torchvision.transforms.Resize, Normalize, ToTensor
    Meta's automatic_mask_generator:    torchvision.ops.boxes.batched_nms, box_area
    ultralytics (import time):          importlib.metadata.version("torchvision")
"""

import importlib
import importlib.machinery
import importlib.metadata
import os
import sys
import types
from contextlib import contextmanager
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(package: str):
    """Import a pipeline package the integration tests run against: skip the test module where it
    is missing, fail in CI (the test set-up installs it there)."""
    import pytest

    try:
        return importlib.import_module(package)
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"{package} is required in CI and failed to import: {err}")
        pytest.skip(f"{package} is not installed: {err}", allow_module_level=True)


# What the stand-in's metadata claims: the torchvision release paired with torch 2.13
# (ultralytics reads the version at import and compares it with torch's).
VERSION = "0.28.0"


def torchvision_loads() -> bool:
    """True when a real torchvision imports; anything it raises counts as "not installed"."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install raises RuntimeError, not ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported package must not satisfy a later import
        return False
    return True


# ----------------------------------------------------------------------------- transforms
class Resize(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size: List[int] = list(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False,
                             antialias=True).squeeze(0)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean: List[float] = list(mean)
        self.std: List[float] = list(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std


class ToTensor:
    def __call__(self, image: np.ndarray) -> torch.Tensor:  # HWC uint8 -> CHW float in [0, 1]
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------------------- ops
def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """boxes: [N, 4] (x0, y0, x1, y1) -> [N]."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms: greedy, highest score first; drops boxes whose IoU with a kept box is
    above the threshold. boxes: [N, 4], scores: [N] -> kept indices (int64), by falling score."""
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order].double()
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = box_area(boxes)
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def batched_nms(boxes, scores, idxs, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.batched_nms: NMS within each category (boxes of different idxs moved apart)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ----------------------------------------------------------------------------- installing
def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec raises without one
    return module


def _modules() -> dict:
    root = _module("torchvision")
    root.__version__ = VERSION
    transforms = _module("torchvision.transforms")
    transforms.Resize, transforms.Normalize, transforms.ToTensor = Resize, Normalize, ToTensor
    ops = _module("torchvision.ops")
    boxes = _module("torchvision.ops.boxes")
    for module in (ops, boxes):
        module.nms, module.batched_nms, module.box_area = nms, batched_nms, box_area
    root.transforms, root.ops, ops.boxes = transforms, ops, boxes
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes}


class _Distribution(importlib.metadata.Distribution):
    def read_text(self, filename):
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: torchvision\nVersion: {VERSION}\n"
        return None

    def locate_file(self, path):
        return None


class _MetadataFinder:
    """Answers importlib.metadata's question "is torchvision installed, which version?"."""

    @staticmethod
    def find_spec(*args, **kwargs):
        return None

    @staticmethod
    def find_distributions(context=importlib.metadata.DistributionFinder.Context()):
        if context.name == "torchvision":
            yield _Distribution()


@contextmanager
def installed(modules: bool = True, forget=("sam2.utils.transforms", "sam2.sam2_image_predictor",
                                            "sam2.automatic_mask_generator")):
    """Inside the block importlib.metadata finds the stand-in's torchvision (what ultralytics asks
    at import) and, with ``modules``, ``import torchvision`` gives the stand-in (what Meta's sam2
    modules do at import: keep that block to the import, since other packages probing for
    torchvision inside it would take the stand-in for the real one). On leaving, the modules
    imported inside that are in ``forget`` or belong to torchvision or ultralytics leave
    sys.modules again (what was imported keeps its references), so that nothing else in the
    session sees the stand-in. Keep the block open while ultralytics is in use (it imports
    lazily)."""
    before = dict(sys.modules)
    finder = _MetadataFinder()
    sys.meta_path.insert(0, finder)
    if modules:
        sys.modules.update(_modules())
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n not in before or n.startswith("torchvision")]:
            if name in forget or name.split(".")[0] in ("torchvision", "ultralytics"):
                del sys.modules[name]
        sys.modules.update({n: m for n, m in before.items() if n.startswith("torchvision")})
