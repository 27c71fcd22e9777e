"""replace_prompt_encoder on Hugging Face transformers' real SAM-2 models (random weights, built
offline from their default configs): our drop-in for transformers' Sam2PromptEncoder against the
module it replaces (same keys, conventions, outputs), Sam2Model's forward from image embeddings and
Sam2VideoModel's per-frame forward unchanged, the image-wide positional grid served by the dense
op, what is copied both ways, what is refused."""

import copy
import importlib
import inspect
import re

import pytest
import torch
from torch import nn

from helpers import assert_close
from sam2_prompt import hf, replace_prompt_encoder, restore_prompt_encoder, swapped_prompt_encoder
from torchvision_standin import require

transformers = require("transformers")

# transformers module -> class prefix of the models whose prompt encoder is Sam2PromptEncoder's code
SIBLINGS = {"sam2": "Sam2", "sam2_video": "Sam2Video", "edgetam": "EdgeTam",
            "edgetam_video": "EdgeTamVideo", "sam3_tracker": "Sam3Tracker",
            "sam3_tracker_video": "Sam3TrackerVideo"}


def randomize(module: nn.Module, seed: int) -> None:
    """Learned embeddings that are not alike (transformers initialises some to constants)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    sam2 = transformers.Sam2Model(transformers.Sam2Config()).eval()
    randomize(sam2.prompt_encoder, 1)
    randomize(sam2.shared_image_embedding, 2)
    return sam2


def prompts(batch=2, prompts_per_image=3, image=1024):
    """transformers' conventions: points [B, P, N, 2], labels [B, P, N], boxes [B, P, 4], masks."""
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(batch, prompts_per_image, 5, 2, generator=gen) * image
    points[0, 0, 4] = float("nan")  # under a padding label: must not leak
    labels = torch.tensor([1, 0, -1, 3, -10])[torch.randperm(5, generator=gen)]
    labels = torch.stack([labels.roll(i) for i in range(batch * prompts_per_image)])
    labels = labels.reshape(batch, prompts_per_image, 5)
    labels[0, 0, 4], labels[-1, -1, 0] = -10, -5  # -5: another negative label, the bare encoding
    corner = torch.rand(batch, prompts_per_image, 2, generator=gen) * image / 2
    boxes = torch.cat([corner, corner + image / 3], dim=-1)
    masks = torch.randn(batch, 1, 256, 256, generator=gen)
    return {
        "clicks+padding": (points, labels, None, None),
        "boxes": (None, None, boxes, None),
        "clicks+boxes": (points, labels, boxes, None),
        "clicks+mask": (points, labels, None, masks),
        "mask only": (None, None, None, masks),
        "nothing": (None, None, None, None),
    }


def assert_outputs(got, want, atol=2e-5):
    for mine, theirs in zip(got, want):
        if theirs is None:
            assert mine is None
        else:
            assert_close(mine, theirs, atol=atol)


SPARSE = ["clicks+padding", "boxes", "clicks+boxes", "clicks+mask"]


@pytest.mark.parametrize("prompt", SPARSE)
def test_encoder_matches_transformers(model, backend, prompt):
    check_encoder(model, backend, prompt)


@pytest.mark.parametrize("prompt", ["mask only", "nothing"])
def test_encoder_without_sparse_prompts(model, prompt):
    """No points, no boxes: sparse is None (transformers' own), no op runs on any backend."""
    check_encoder(model, "torch", prompt)


def check_encoder(model, backend, prompt):
    args = prompts()[prompt]
    helpers = prompt == "clicks+boxes"  # transformers' _embed_points / _embed_boxes, mirrored

    def run(encoder):
        outputs = [encoder(*args), encoder(input_points=args[0], input_labels=args[1],
                                           input_boxes=args[2], input_masks=args[3])]
        if helpers:
            outputs += [(encoder._embed_points(args[0], args[1], pad),) for pad in (False, True)]
            outputs.append((encoder._embed_boxes(args[2]),))
        return outputs

    with torch.no_grad():
        want = run(model.prompt_encoder)
        with swapped_prompt_encoder(model, backend=backend):
            assert isinstance(model.prompt_encoder, hf.Sam2PromptEncoder)
            assert model.prompt_encoder.backend == backend
            got = run(model.prompt_encoder)
    for mine, theirs in zip(got, want):
        assert_outputs(mine, theirs)
    got = got[0]
    if args[0] is not None:  # the padding points are all-zero tokens, NaN coordinates included
        padding = args[1] == hf.PAD_POINT_LABEL
        assert torch.all(got[0][:, :, : args[0].shape[2]][padding] == 0)


def image_embeddings(model, batch=2, seed=4):
    """What get_image_embeddings returns, at random: [B, 32, 256, 256], [B, 64, 128, 128],
    [B, 256, 64, 64] (no vision encoder runs)."""
    gen = torch.Generator().manual_seed(seed)
    channels = (32, 64, 256)
    sizes = model.config.vision_config.backbone_feature_sizes
    return [torch.randn(batch, c, *size, generator=gen) for c, size in zip(channels, sizes)]


FORWARD = ["clicks+padding", "boxes", "clicks+boxes", "clicks+mask", "nothing"]


@pytest.mark.parametrize("prompt", FORWARD)
def test_sam2model_forward_unchanged(model, prompt):
    check_forward(model, "torch", prompt,
                  multimasks=(True, False) if prompt == "clicks+padding" else (True,))


def test_sam2model_forward_unchanged_triton(model, backend):
    """On the Triton path (the interpreter: seconds per dense grid), one forward per backend."""
    check_forward(model, backend, "clicks+boxes", multimasks=(True,))


def check_forward(model, backend, prompt, multimasks):
    points, labels, boxes, masks = prompts(batch=1, prompts_per_image=2)[prompt]
    if masks is not None:  # full-size masks: Sam2Model resizes them to mask_input_size itself
        masks = torch.nn.functional.interpolate(masks[:1], size=(1024, 1024))
    kwargs = dict(image_embeddings=image_embeddings(model, batch=1), input_points=points,
                  input_labels=labels, input_boxes=boxes, input_masks=masks)

    def run():
        with torch.no_grad():
            return [model(**kwargs, multimask_output=m) for m in multimasks]

    want = run()
    with swapped_prompt_encoder(model, backend=backend):
        served = vars(model)["get_image_wide_positional_embeddings"]
        assert isinstance(served, hf.ImageWideGrid) and served.model is model
        got = run()
    assert "get_image_wide_positional_embeddings" not in vars(model)  # the class's method again
    for mine, theirs in zip(got, want):
        for name in ("pred_masks", "iou_scores", "object_score_logits"):
            torch.testing.assert_close(getattr(mine, name), getattr(theirs, name), atol=1e-4,
                                       rtol=0, msg=lambda m: f"{name}: {m}")


def test_image_wide_grid_is_served_and_never_stale(model, backend):
    want = model.get_image_wide_positional_embeddings()
    gaussian = model.shared_image_embedding.positional_embedding
    before = gaussian.clone()
    try:
        with swapped_prompt_encoder(model, backend=backend):
            assert_close(model.get_image_wide_positional_embeddings(), want, atol=2e-5)
            model.prompt_encoder.image_embedding_size = (8, 12)  # small grids from here on
            grid = model.get_image_wide_positional_embeddings()
            assert grid.shape == (1, 256, 8, 12)
            assert_close(grid, type(model).get_image_wide_positional_embeddings(model), atol=2e-5)
            gaussian.data = before * 0.5  # a .data write: no version counter moves
            halved = type(model).get_image_wide_positional_embeddings(model)
            assert_close(model.get_image_wide_positional_embeddings(), halved, atol=2e-5)
            grid = model.get_image_wide_positional_embeddings()
            grid.zero_()  # a returned tensor is never shared with a later call
            assert grid.abs().sum() == 0 != model.get_image_wide_positional_embeddings().abs().sum()
    finally:
        gaussian.data = before
        model.prompt_encoder.image_embedding_size = (64, 64)


def test_video_model_frame_forward_unchanged():
    """Sam2VideoModel's per-frame forward (what tracking calls on each frame): clicks, then a box
    (transformers 5.x fails on points and boxes together there: num_objects unset). The PyTorch
    path: the kernels' run through the same encoder is Sam2Model's test above."""
    torch.manual_seed(0)
    video = transformers.Sam2VideoModel(transformers.Sam2VideoConfig()).eval()
    randomize(video.prompt_encoder, 5)
    points, labels, boxes, _ = prompts(batch=1, prompts_per_image=1)["clicks+boxes"]
    calls = [dict(input_points=points, input_labels=labels), dict(input_boxes=boxes)]
    embeddings = image_embeddings(video, batch=1)

    def run():
        with torch.no_grad():
            return [video._single_frame_forward(image_embeddings=embeddings, **c) for c in calls]

    want = run()
    with swapped_prompt_encoder(video, backend="torch"):
        assert type(video.prompt_encoder) is hf.Sam2PromptEncoder
        got = run()
    assert type(video.prompt_encoder).__name__ == "Sam2VideoPromptEncoder"
    for mine, theirs in zip(got, want):
        for name in ("pred_masks", "iou_scores", "object_score_logits", "object_pointer"):
            torch.testing.assert_close(getattr(mine, name), getattr(theirs, name), atol=1e-4, rtol=0)


def _methods_source(cls) -> str:
    prefix = cls.__name__[: -len("PromptEncoder")]
    names = ("__init__", "_embed_points", "_embed_boxes", "forward")
    return re.sub(prefix, "Sam2", "\n".join(inspect.getsource(getattr(cls, n)) for n in names))


@pytest.mark.parametrize("module", list(SIBLINGS))
def test_sibling_encoders_are_sam2s_and_swap(module):
    """The allow-list is sound: each class's code is Sam2PromptEncoder's under another name (its
    positional and mask embeddings too), and the swap reproduces it."""
    modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    config_module = importlib.import_module(f"transformers.models.{module}.configuration_{module}")
    prefix = SIBLINGS[module]
    encoder_cls = getattr(modeling, f"{prefix}PromptEncoder")
    assert encoder_cls.__name__ in hf.ENCODER_CLASSES
    assert _methods_source(encoder_cls) == _methods_source(transformers.Sam2Model.__init__.__globals__[
        "Sam2PromptEncoder"])
    for part in ("PositionalEmbedding", "MaskEmbedding"):
        theirs = inspect.getsource(getattr(modeling, prefix + part)).replace(prefix, "Sam2")
        assert theirs == inspect.getsource(transformers.Sam2Model.__init__.__globals__["Sam2" + part])
    config = getattr(config_module, f"{prefix}PromptEncoderConfig")()
    holder = nn.Module()
    holder.prompt_encoder = encoder_cls(config)
    randomize(holder.prompt_encoder, 6)
    size = config.image_size
    args = prompts(batch=1, prompts_per_image=2, image=size)["clicks+boxes"]
    with torch.no_grad():
        want = holder.prompt_encoder(*args)
        replace_prompt_encoder(holder, backend="torch")
        assert holder.prompt_encoder.input_image_size == size
        got = holder.prompt_encoder(*args)
    assert_outputs(got, want)
    restore_prompt_encoder(holder)
    assert type(holder.prompt_encoder) is encoder_cls


def test_constructor_mirrors_transformers_rng_and_keys(model):
    config = model.config.prompt_encoder_config
    torch.manual_seed(7)
    theirs = type(model.prompt_encoder)(config)
    torch.manual_seed(7)
    ours = hf.Sam2PromptEncoder(config)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    for name in ("input_image_size", "image_embedding_size", "mask_input_size", "hidden_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.shared_embedding.scale == theirs.shared_embedding.scale
    coords = torch.rand(2, 3, 4, 2, generator=torch.Generator().manual_seed(10)) * 1024
    with torch.no_grad():  # transformers' positional-embedding module, in pixels and in [0, 1]
        assert_close(ours.shared_embedding(coords, (1024, 1024)),
                     theirs.shared_embedding(coords, (1024, 1024)), atol=2e-5)
        assert_close(ours.shared_embedding(coords / 1024), theirs.shared_embedding(coords / 1024),
                     atol=2e-5)
    assert ours.mask_embed.mask_input_channels == theirs.mask_embed.mask_input_channels
    assert type(ours.mask_embed.activation) is type(theirs.mask_embed.activation)


def test_swap_copies_state_both_ways(model):
    sam2 = copy.deepcopy(model).train()
    theirs = sam2.prompt_encoder
    theirs.point_embed.requires_grad_(False)  # a frozen part stays frozen
    theirs.mask_embed.layer_norm1.eval()       # a per-module flag is kept
    keys = {k: v.clone() for k, v in sam2.state_dict().items()
            if k.startswith(("prompt_encoder.", "shared_image_embedding."))}
    all_keys = list(sam2.state_dict())
    rng = torch.get_rng_state()
    assert replace_prompt_encoder(sam2, backend="torch") is sam2
    assert torch.equal(torch.get_rng_state(), rng)
    ours = sam2.prompt_encoder
    assert ours.training and not ours.mask_embed.layer_norm1.training
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    state = sam2.state_dict()
    assert list(state) == all_keys
    assert all(torch.equal(state[k], v) for k, v in keys.items())
    assert theirs not in list(sam2.modules())
    bumped = "prompt_encoder.point_embed.weight"
    checkpoint = {**state, bumped: keys[bumped] + 1.0}
    sam2.load_state_dict(checkpoint, strict=True)  # a transformers checkpoint loads as it is
    assert torch.equal(ours.point_embed.weight, keys["prompt_encoder.point_embed.weight"] + 1.0)
    assert replace_prompt_encoder(sam2, backend="auto").prompt_encoder is ours  # idempotent
    copied = copy.deepcopy(sam2)  # the grid's server follows the copy
    assert vars(copied)["get_image_wide_positional_embeddings"].model is copied
    with torch.no_grad():
        ours.not_a_point_embed.weight.add_(1.0)
    ours.to(torch.float64).eval()
    ours.input_image_size, ours.image_embedding_size, ours.mask_input_size = 512, (32, 32), (128, 128)
    restore_prompt_encoder(sam2)
    assert sam2.prompt_encoder is theirs and not theirs.training
    assert theirs.not_a_point_embed.weight.dtype == torch.float64
    assert torch.equal(theirs.not_a_point_embed.weight,
                       (keys["prompt_encoder.not_a_point_embed.weight"] + 1.0).double())
    assert (theirs.input_image_size, theirs.image_embedding_size, theirs.mask_input_size) == (
        512, (32, 32), (128, 128))
    assert "get_image_wide_positional_embeddings" not in vars(sam2)
    with pytest.raises(ValueError, match="nothing to restore"):
        restore_prompt_encoder(sam2)


def test_gradients_match(model, backend):
    """Training through ours: the same gradients for the learned embeddings and the points."""
    points, labels, boxes, _ = prompts(batch=1, prompts_per_image=2)["clicks+boxes"]
    points = points.nan_to_num(5.0)
    weight = torch.randn(1, 2, points.shape[2] + 3, 256, generator=torch.Generator().manual_seed(8))

    def grads(encoder):
        encoder.zero_grad()
        coords = points.clone().requires_grad_(True)
        sparse, _ = encoder(coords, labels, boxes, None)
        (sparse * weight).sum().backward()
        return [coords.grad, encoder.point_embed.weight.grad, encoder.not_a_point_embed.weight.grad]

    want = grads(model.prompt_encoder)
    with swapped_prompt_encoder(model, backend=backend):
        got = grads(model.prompt_encoder)
    model.prompt_encoder.zero_grad()
    for mine, theirs in zip(got, want):
        assert_close(mine, theirs, atol=1e-3, rtol=1e-5)


def test_dtypes_follow_transformers(model):
    """Output dtypes are transformers' (a bf16 module, autocast); values are computed in fp32."""
    points, labels, boxes, _ = prompts()["clicks+boxes"]
    with torch.no_grad():
        exact_points, _ = model.prompt_encoder(points, labels, None, None)
        exact_boxes, _ = model.prompt_encoder(None, None, boxes, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = [model.prompt_encoder(points, labels, None, None)[0].dtype,
                    model.prompt_encoder(None, None, boxes, None)[0].dtype]
            want_grid = model.get_image_wide_positional_embeddings().dtype
        half = copy.deepcopy(model.prompt_encoder).to(torch.bfloat16)
        want.append(half(points, labels, None, None)[0].dtype)
        with swapped_prompt_encoder(model, backend="torch"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got_points, _ = model.prompt_encoder(points, labels, None, None)
                got_boxes, _ = model.prompt_encoder(None, None, boxes, None)
                assert model.get_image_wide_positional_embeddings().dtype == want_grid == torch.bfloat16
        holder = nn.Module()
        holder.prompt_encoder = half
        replace_prompt_encoder(holder, backend="torch")
        got_half, _ = holder.prompt_encoder(points, labels, None, None)
    assert [got_points.dtype, got_boxes.dtype, got_half.dtype] == want
    assert want == [torch.float32, torch.bfloat16, torch.bfloat16]
    assert_close(got_points, exact_points, atol=2e-5)  # transformers' own is off by ~1e-2 here
    torch.testing.assert_close(got_boxes.float(), exact_boxes, atol=2e-2, rtol=2 ** -8)
    exact_half = exact_points.bfloat16().float()
    torch.testing.assert_close(got_half.float(), exact_half, atol=6e-2, rtol=2 ** -7)


def test_bad_inputs_are_refused_before_any_work(model, monkeypatch):
    points, labels, boxes, masks = prompts()["clicks+boxes"][:3] + (prompts()["mask only"][3],)
    with swapped_prompt_encoder(model, backend="torch"):
        ours = model.prompt_encoder
        monkeypatch.setattr("sam2_prompt.ops.sparse_embed", lambda *a: pytest.fail("op ran"))
        cases = [
            ((points, None, None, None), ValueError, "labels must also be provided"),
            ((points, labels.float(), None, None), TypeError, "input_labels must be an int32 or int64"),
            ((points, labels.to(torch.uint8), None, None), TypeError, "input_labels must be an int32"),
            ((points, labels[:, :, :2], None, None), ValueError, r"input_labels must be \[B, P, N\]"),
            ((points[0], labels[0], None, None), ValueError, r"input_points must be \[B, P, N, 2\]"),
            ((points, labels + 4, None, None), ValueError, "input_labels must be < 4"),
            ((None, None, boxes[:, 0], None), ValueError, r"input_boxes must be \[B, P, 4\]"),
            ((points, labels, boxes[:, :2], None), ValueError, "must have the .B, P. of input_points"),
            ((points, labels, None, masks.expand(-1, 2, -1, -1)), ValueError, "input_masks must be"),
            ((points.numpy(), labels, None, None), TypeError, "input_points must be a torch.Tensor"),
        ]
        for args, error, message in cases:
            with pytest.raises(error, match=message):
                ours(*args)


def test_refusals_name_the_type_and_what_was_looked_for(model):
    holder = nn.Module()
    holder.prompt_encoder = transformers.SamModel.__init__.__globals__["SamPromptEncoder"](
        transformers.SamConfig())
    with pytest.raises(TypeError, match=r"model.prompt_encoder \(SamPromptEncoder, from "
                                        r"transformers\) is not supported: .*Sam2PromptEncoder"):
        replace_prompt_encoder(holder)
    holder.prompt_encoder = copy.deepcopy(model.prompt_encoder)
    del holder.prompt_encoder.not_a_point_embed
    with pytest.raises(TypeError, match="it has no not_a_point_embed"):
        replace_prompt_encoder(holder)
    with pytest.raises(TypeError, match=r"model must be a SAM-2 model.*Sam2Model.*got Sam2Config"):
        replace_prompt_encoder(model.config)


def test_state_dict_converter_maps_meta_weights(upstream, model):
    """hf.state_dict_from_meta: Meta's encoder and ours-for-transformers agree on the same weights."""
    torch.manual_seed(0)
    meta = upstream[0](256, (64, 64), (1024, 1024), 16)
    randomize(meta, 9)
    ours = hf.Sam2PromptEncoder(model.config.prompt_encoder_config, backend="torch")
    ours.load_state_dict(hf.state_dict_from_meta(meta.state_dict()), strict=True)
    points, labels, _, _ = prompts(batch=1, prompts_per_image=4)["clicks+boxes"]
    masks = prompts()["mask only"][3]
    labels = labels.clamp(min=-1)
    with torch.no_grad():
        want_sparse, _ = meta((points[0], labels[0]), None, None)  # prompts as Meta's batch
        got_sparse, _ = ours(points, labels, None, None)
        want_dense = meta(None, None, masks[:1])[1]
        got_dense = ours(None, None, None, masks[:1])[1]
    assert_close(got_sparse[0], want_sparse, atol=2e-5)
    assert_close(got_dense, want_dense, atol=2e-5)


def test_bench_rows_agree_with_transformers():
    """sam2-prompt-bench's transformers rows: inputs in transformers' convention, each row
    checked against transformers' own encoder."""
    from sam2_prompt.bench import cases

    for case in (cases.make(3, 2, boxes=1), cases.make(3, 2, masks=True), cases.make(3, 0, boxes=1)):
        for backend in ("transformers", "transformers-torch"):
            assert cases.unavailable(case, backend, "cpu") is None
            assert cases.baseline(backend) == "transformers"
            name, want = cases.oracle(case, "cpu", backend)
            assert name == "transformers eager fp32"
            with torch.no_grad():
                forward = cases.build(case, backend, "cpu")
                got = cases.keep(forward(*cases.backend_inputs(case, backend, "cpu")))
            assert got[0].shape == (3, 1, cases.tokens(case, backend), 256)
            assert cases.check_agreement(case, backend, got, want) <= 2e-5
    assert "one box per prompt" in cases.unavailable(cases.make(2, 1, boxes=2), "transformers", "cpu")
    assert "CUDA" in cases.unavailable(cases.make(2, 1), "transformers-triton", "cpu")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_forward_matches_transformers(model):
    """torch.compile(fullgraph=True) of ours (the padding post-pass then masks on the device)."""
    points, labels, boxes, _ = prompts(batch=1, prompts_per_image=2)["clicks+boxes"]
    ours = hf.Sam2PromptEncoder.like(model.prompt_encoder, backend="torch")
    ours.load_state_dict(model.prompt_encoder.state_dict())
    compiled = torch.compile(ours.forward, fullgraph=True)
    with torch.no_grad():
        for args in ((points, labels, None, None), (points, labels, boxes, None)):
            assert_outputs(compiled(*args), model.prompt_encoder(*args))
