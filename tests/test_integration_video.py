"""replace_prompt_encoder on Meta's SAM2VideoPredictor (sam2.1 hiera-t, random weights, CPU):
two objects (clicks; a box) propagated through a short synthetic JPEG clip give the same masks."""

import numpy as np
import pytest
import torch

from sam2_prompt import PromptEncoder, replace_prompt_encoder, restore_prompt_encoder

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
FRAMES = {"torch": 3, "triton": 2}  # the interpreter is slower: fewer frames


@pytest.fixture(scope="module")
def predictor(upstream):
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    model = build_sam2_video_predictor(CONFIG, ckpt_path=None, device="cpu")
    with torch.no_grad():
        for param in model.sam_prompt_encoder.parameters():
            param.normal_()
    return model


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """JPEG frames of a bright disc drifting over a textured background."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (240, 320, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:240, :320]
    for i in range(max(FRAMES.values())):
        frame = background.copy()
        frame[(yy - 110) ** 2 + (xx - 100 - 12 * i) ** 2 < 45 ** 2] = (230, 200, 60)
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def track(predictor, clip, frames):
    state = predictor.init_state(video_path=str(clip))
    state["num_frames"] = frames  # propagate over the first frames only
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                    points=np.array([[100, 110], [250, 60]], dtype=np.float32),
                                    labels=np.array([1, 0], dtype=np.int32))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2,
                                    box=np.array([180, 120, 300, 220], dtype=np.float32))
    logits = {}
    with torch.no_grad():
        for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
            assert list(obj_ids) == [1, 2]
            logits[frame_idx] = masks.clone()
    return logits


def test_propagated_masks_unchanged(predictor, clip, backend):
    frames = FRAMES[backend]
    expected = track(predictor, clip, frames)
    replace_prompt_encoder(predictor, backend=backend)
    try:
        assert isinstance(predictor.sam_prompt_encoder, PromptEncoder)
        actual = track(predictor, clip, frames)
    finally:
        restore_prompt_encoder(predictor)
    assert sorted(actual) == sorted(expected) == list(range(frames))
    for frame_idx in expected:
        got, want = actual[frame_idx], expected[frame_idx]
        torch.testing.assert_close(got, want, atol=1e-2, rtol=0)
        agreement = ((got > 0) == (want > 0)).float().mean().item()
        assert agreement >= 0.999, (frame_idx, agreement)
