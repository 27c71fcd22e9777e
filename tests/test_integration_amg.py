"""replace_prompt_encoder on Meta's SAM2AutomaticMaskGenerator (sam2.1 hiera-t, random weights,
CPU): the same masks, predicted IoUs and stability scores from ``generate``, swapped or not.

The generator's module imports torchvision.ops (batched_nms, box_area) and its predictor
torchvision.transforms. Where torchvision cannot load (this CPU torch has no build of it), both
come from tests/torchvision_standin.py (plain torch), for the original and the swapped run alike."""

import warnings

import numpy as np
import pytest
import torch

from sam2_prompt import PromptEncoder, replace_prompt_encoder, restore_prompt_encoder
import torchvision_standin
from helpers import sam2_tiny

POINTS_PER_SIDE = {"torch": 2, "triton": 1}  # 4 and 1 prompts, 3 masks each, then m2m refinement


@pytest.fixture(scope="module")
def generator_cls(upstream):
    if torchvision_standin.torchvision_loads():
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        return SAM2AutomaticMaskGenerator
    with torchvision_standin.installed():
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    return SAM2AutomaticMaskGenerator


def memoized(forward_image):
    """The image encoder runs once (the prompt encoder never touches its output)."""
    seen = {}

    def forward(img_batch):
        if "out" not in seen:
            seen["out"], seen["input"] = forward_image(img_batch), img_batch.clone()
        assert torch.equal(img_batch, seen["input"])
        return {k: list(v) if isinstance(v, list) else v for k, v in seen["out"].items()}

    return forward


@pytest.fixture(scope="module")
def model(upstream):
    sam2 = sam2_tiny()
    sam2.forward_image = memoized(sam2.forward_image)
    return sam2


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 90, (160, 200, 3), dtype=np.uint8)
    picture[30:110, 40:150] = (230, 200, 60)
    picture[90:150, 120:190] = (40, 90, 220)
    return picture


def generate(generator, image):
    with torch.no_grad():
        records = generator.generate(image)
    return sorted(records, key=lambda r: (r["point_coords"], r["bbox"]))


def test_generate_unchanged(generator_cls, model, image, backend):
    # Random weights give logits near 0: filters and NMS off so that every mask is a record, and a
    # small stability offset so that the scores are not all 0. use_m2m: mask prompts too.
    with warnings.catch_warnings():  # Meta's transforms use the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        generator = generator_cls(model, points_per_side=POINTS_PER_SIDE[backend],
                                  points_per_batch=16, pred_iou_thresh=0.0,
                                  stability_score_thresh=0.0, stability_score_offset=0.05,
                                  box_nms_thresh=1.0, use_m2m=True)
    want = generate(generator, image)
    assert replace_prompt_encoder(generator, backend=backend) is generator
    try:
        assert isinstance(model.sam_prompt_encoder, PromptEncoder)
        assert model.sam_prompt_encoder.backend == backend
        got = generate(generator, image)
    finally:
        restore_prompt_encoder(generator)
    assert not isinstance(model.sam_prompt_encoder, PromptEncoder)
    assert len(got) == len(want) == 3 * POINTS_PER_SIDE[backend] ** 2
    assert all(0 < r["stability_score"] < 1 for r in want)
    for mine, theirs in zip(got, want):
        assert np.array_equal(mine["segmentation"], theirs["segmentation"])
        assert mine["bbox"] == theirs["bbox"] and mine["area"] == theirs["area"]
        for key in ("predicted_iou", "stability_score"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key
