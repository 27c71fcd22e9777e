"""replace_prompt_encoder on ultralytics' real SAM models (SAM-2 tiny and MobileSAM, random
weights, built offline): ultralytics' mask handling and sizes (set_imgsz) mirrored, SAM2Predictor
and the SAM wrapper unchanged end to end, sizes carried back on restore.

ultralytics reads torchvision's version at import. Where torchvision cannot load (this CPU torch
has no build of it), ultralytics is imported through tests/torchvision_standin.py, which answers
that question (torchvision itself is not imported on these paths); the original and the swapped
runs both go through it."""

import contextlib
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import assert_close
from sam2_prompt import (PromptEncoder, replace_prompt_encoder, restore_prompt_encoder,
                         swapped_prompt_encoder)
from sam2_prompt.ultralytics import UltralyticsPromptEncoder
import torchvision_standin


@pytest.fixture(scope="module")
def ul():
    """ultralytics' SAM pieces; the stand-in stays in place while this module's tests run
    (ultralytics imports lazily), and leaves sys.modules after them."""
    with contextlib.ExitStack() as stack:
        if not torchvision_standin.torchvision_loads():
            stack.enter_context(torchvision_standin.installed(modules=False))
        torchvision_standin.require("ultralytics")
        from ultralytics import SAM
        from ultralytics.models.sam import SAM2Predictor
        from ultralytics.models.sam.build import build_mobile_sam, build_sam2_t
        from ultralytics.models.sam.modules.encoders import PromptEncoder as UltralyticsOriginal
        yield SimpleNamespace(SAM=SAM, SAM2Predictor=SAM2Predictor, build_sam2_t=build_sam2_t,
                              build_mobile_sam=build_mobile_sam, PromptEncoder=UltralyticsOriginal)


def randomized(model):
    encoder = getattr(model, "sam_prompt_encoder", None) or model.prompt_encoder
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in encoder.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def sam2(ul):
    torch.manual_seed(0)
    return randomized(ul.build_sam2_t(checkpoint=None).eval())


def prompts(image=1024, mask=256):
    gen = torch.Generator().manual_seed(2)
    coords = torch.rand(3, 4, 2, generator=gen) * image
    labels = torch.tensor([[1, 0, -1, 2], [3, 1, 1, 0], [0, -1, 1, 1]], dtype=torch.int32)
    box = torch.tensor([[100.0, 150.0, 600.0, 700.0], [20.0, 30.0, 900.0, 800.0],
                        [5.0, 5.0, 60.0, 90.0]]) * image / 1024
    low_res = torch.randn(3, 1, mask, mask, generator=gen)
    full = (torch.rand(3, 1, image, image, generator=gen) > 0.5).float()  # what the predictor passes
    return {
        "clicks": ((coords, labels), None, None),
        "boxes": (None, box, None),
        "corner pairs": (None, box.reshape(3, 2, 2), None),  # ultralytics' (B, 2, 2) boxes
        "clicks+boxes": ((coords, labels), box, None),
        "clicks+low-res mask": ((coords, labels), None, low_res),
        "clicks+full-size mask": ((coords, labels), None, full),  # resized by the encoder
    }


def encode(model, args):
    encoder = model.sam_prompt_encoder
    with torch.no_grad():
        return (*encoder(*args), encoder.get_dense_pe())


def test_encoder_matches_ultralytics(sam2, backend):
    """Every prompt kind through one swap; the dense grid once (the interpreter: seconds a grid)."""
    cases = prompts()

    def run():
        encoder = sam2.sam_prompt_encoder
        with torch.no_grad():
            return {name: encoder(*args) for name, args in cases.items()}, encoder.get_dense_pe()

    want, want_pe = run()
    with swapped_prompt_encoder(sam2, backend=backend):
        assert type(sam2.sam_prompt_encoder) is UltralyticsPromptEncoder
        assert sam2.sam_prompt_encoder.backend == backend
        got, got_pe = run()
    assert_close(got_pe, want_pe, atol=2e-5)
    for name in cases:
        for what, mine, theirs in zip(("sparse", "dense"), got[name], want[name]):
            torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0,
                                       msg=lambda m: f"{name}, {what}: {m}")


def test_set_imgsz_after_the_swap_and_restore_carries_the_sizes(sam2, backend):
    """model.set_imgsz((512, 512)) sets the encoder's sizes: ours follows, restore carries them."""
    args = prompts(image=512, mask=128)["clicks+full-size mask"]
    sizes = ("input_image_size", "image_embedding_size", "mask_input_size")
    original = sam2.sam_prompt_encoder
    try:
        sam2.set_imgsz((512, 512))
        want = encode(sam2, args)
        sam2.set_imgsz((1024, 1024))
        replace_prompt_encoder(sam2, backend=backend)
        sam2.set_imgsz((512, 512))
        ours = sam2.sam_prompt_encoder
        assert [list(getattr(ours, s)) for s in sizes] == [[512, 512], [32, 32], [128, 128]]
        got = encode(sam2, args)
        restore_prompt_encoder(sam2)
        assert sam2.sam_prompt_encoder is original
        assert [list(getattr(original, s)) for s in sizes] == [[512, 512], [32, 32], [128, 128]]
        assert_close(encode(sam2, args)[2], want[2], atol=0)  # the original, as it was at 512
    finally:
        if sam2.sam_prompt_encoder is not original:
            restore_prompt_encoder(sam2)
        sam2.set_imgsz((1024, 1024))
    for mine, theirs in zip(got, want):
        assert_close(mine, theirs, atol=2e-5)


@pytest.fixture(scope="module")
def predictor(ul):
    """SAM2Predictor at imgsz 512 on a small image, features computed once."""
    torch.manual_seed(0)
    model = randomized(ul.build_sam2_t(checkpoint=None))
    predictor = ul.SAM2Predictor(overrides=dict(imgsz=512, save=False, verbose=False))
    predictor.setup_model(model=model, verbose=False)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    image[60:160, 80:220] = (60, 200, 230)
    predictor.set_image(image)
    return predictor


def predictions(predictor, backend="torch"):
    """Clicks (two objects, two points each), a box, clicks with a full-size mask prompt (only
    the last under the interpreter: the dense grid takes seconds there)."""
    mask = np.zeros((240, 320), np.float32)
    mask[60:160, 80:220] = 1.0
    calls = [dict(points=[[[150, 100], [60, 30]], [[250, 200], [100, 120]]], labels=[[1, 0], [1, 1]],
                  multimask_output=True),
             dict(bboxes=[[70, 50, 230, 170]]),
             dict(points=[[150, 100]], labels=[1], masks=mask)]
    calls = calls if backend == "torch" else calls[-1:]
    with torch.no_grad():
        return [predictor(**call)[0] for call in calls]


def test_sam2_predictor_unchanged(predictor, backend):
    want = predictions(predictor, backend)
    with swapped_prompt_encoder(predictor, backend=backend) as same:
        assert same is predictor
        assert type(predictor.model.sam_prompt_encoder) is UltralyticsPromptEncoder
        got = predictions(predictor, backend)
    assert type(predictor.model.sam_prompt_encoder).__name__ == "PromptEncoder"
    for call, (mine, theirs) in enumerate(zip(got, want)):
        assert mine.masks is not None and len(mine.masks) == len(theirs.masks) > 0, call
        assert torch.equal(mine.masks.data, theirs.masks.data), f"call {call}: masks"
        # boxes: xyxy of each mask (from the mask), its predicted score, a class placeholder
        torch.testing.assert_close(mine.boxes.data, theirs.boxes.data, atol=1e-4, rtol=0)


def test_sam_wrapper_and_its_predictor(ul, tmp_path):
    """ultralytics' SAM wrapper (weights from a local file: no download) and its predictor."""
    torch.manual_seed(0)
    weights = tmp_path / "sam2_t.pt"  # the name picks ultralytics' builder
    torch.save({"model": randomized(ul.build_sam2_t(checkpoint=None)).state_dict()}, weights)
    sam = ul.SAM(str(weights))
    original = sam.model.sam_prompt_encoder
    image = np.random.default_rng(4).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    with torch.no_grad():
        want = sam.predict(image, bboxes=[[20, 30, 150, 160]], imgsz=512, verbose=False)[0]
        assert replace_prompt_encoder(sam, backend="torch") is sam
        assert type(sam.model.sam_prompt_encoder) is UltralyticsPromptEncoder
        got = sam.predict(image, bboxes=[[20, 30, 150, 160]], imgsz=512, verbose=False)[0]
    assert torch.equal(got.masks.data, want.masks.data)
    torch.testing.assert_close(got.boxes.data, want.boxes.data, atol=1e-4, rtol=0)
    assert sam.predictor.model is sam.model
    restore_prompt_encoder(sam.predictor)  # the same model, reached through the predictor
    assert sam.model.sam_prompt_encoder is original
    assert list(original.input_image_size) == [512, 512]  # the predictor's set_imgsz, carried back


def test_sam1_model_prompt_encoder(ul):
    """SAMModel (MobileSAM) keeps the same encoder class as `prompt_encoder`."""
    torch.manual_seed(0)
    mobile = randomized(ul.build_mobile_sam(checkpoint=None).eval())
    args = prompts()["clicks+boxes"]
    encoder = mobile.prompt_encoder
    with torch.no_grad():
        want = (*encoder(*args), encoder.get_dense_pe())
        with swapped_prompt_encoder(mobile, backend="torch"):
            assert type(mobile.prompt_encoder) is UltralyticsPromptEncoder
            mobile.set_imgsz((512, 512))  # SAMModel's own set_imgsz
            assert mobile.prompt_encoder.image_embedding_size == [32, 32]
            mobile.set_imgsz((1024, 1024))
            got = (*mobile.prompt_encoder(*args), mobile.prompt_encoder.get_dense_pe())
    assert mobile.prompt_encoder is encoder and encoder.image_embedding_size == [64, 64]
    for mine, theirs in zip(got, want):
        assert_close(mine, theirs, atol=2e-5)


def test_checkpoints_load_strict_and_state_is_kept(sam2):
    model = copy.deepcopy(sam2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    replace_prompt_encoder(model, backend="torch")
    assert isinstance(model.sam_prompt_encoder, PromptEncoder)
    assert list(model.state_dict()) == list(state)
    bumped = {k: v + 1.0 if k.startswith("sam_prompt_encoder.point") else v for k, v in state.items()}
    model.load_state_dict(bumped, strict=True)  # an ultralytics checkpoint loads as it is
    restore_prompt_encoder(model)
    assert torch.equal(model.sam_prompt_encoder.point_embeddings[1].weight,
                       state["sam_prompt_encoder.point_embeddings.1.weight"] + 1.0)


def test_bad_masks_are_refused(sam2):
    with swapped_prompt_encoder(sam2, backend="torch"):
        encoder = sam2.sam_prompt_encoder
        for bad, error in ((torch.zeros(2, 2, 64, 64), ValueError), (torch.zeros(2, 64, 64), ValueError),
                           (torch.zeros(2, 1, 64, 64, dtype=torch.int64), TypeError)):
            with pytest.raises(error, match="masks must be"):
                encoder(None, None, bad)


def test_bench_rows_agree_with_ultralytics(ul):
    """sam2-prompt-bench's ultralytics rows, each checked against ultralytics' own encoder (here
    with the stand-in's torchvision version, as the tests above)."""
    from sam2_prompt.bench import cases

    cases._ecosystem_module.cache_clear()  # it remembers whether ultralytics imported
    try:
        for case in (cases.make(3, 2, boxes=1), cases.make(3, 0, masks=True)):
            for backend in ("ultralytics", "ultralytics-torch"):
                assert cases.unavailable(case, backend, "cpu") is None
                assert cases.baseline(backend) == "ultralytics"
                name, want = cases.oracle(case, "cpu", backend)
                assert name == "ultralytics eager fp32"
                with torch.no_grad():
                    forward = cases.build(case, backend, "cpu")
                    got = cases.keep(forward(*cases.backend_inputs(case, backend, "cpu")))
                assert cases.check_agreement(case, backend, got, want) <= 2e-5
    finally:
        cases._ecosystem_module.cache_clear()
