"""Every input and module state Meta's encoder handles, ours handles with Meta's result: unsigned
and bool labels, empty batches of every prompt kind, boxes as corner pairs, parameters made under
inference mode, parametrizations, a Gaussian that is a Parameter, the meta device (any backend)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, parametrizations

from helpers import assert_close, random_boxes, random_points, twins
from sam2_prompt import PromptEncoder, replace_prompt_encoder

EMBED, EMB, IMAGE = 32, (8, 8), (128, 128)


def run_both(theirs, ours, *args):
    with torch.no_grad():
        return theirs(*args), ours(*args)


def assert_same_outputs(theirs_out, ours_out):
    for mine, want in zip(ours_out, theirs_out):
        assert_close(mine, want, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.int16, torch.float64])
@pytest.mark.parametrize("with_boxes", [False, True], ids=["padding", "boxes"])
def test_label_dtypes(upstream, backend, dtype, with_boxes):
    """Case 6: with uint8 labels the padding token was label 255 on the PyTorch path."""
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    coords, _ = random_points(3, 4, image=IMAGE)
    labels = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0], [3, 2, 1, 0]]).to(dtype)
    boxes = random_boxes(3, image=IMAGE) if with_boxes else None
    assert_same_outputs(*run_both(theirs, ours, (coords, labels), boxes, None))


@pytest.mark.parametrize("prompt", ["points", "boxes", "corner pairs", "points+boxes", "masks",
                                    "points+masks", "no points"])
def test_empty_batches(upstream, backend, prompt):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    points = (torch.zeros(0, 3, 2), torch.zeros(0, 3, dtype=torch.int32))
    args = {
        "points": (points, None, None),
        "boxes": (None, torch.zeros(0, 4), None),
        "corner pairs": (None, torch.zeros(0, 2, 2), None),
        "points+boxes": (points, torch.zeros(0, 4), None),
        "masks": (None, None, torch.zeros(0, 1, 32, 32)),
        "points+masks": (points, None, torch.zeros(0, 1, 32, 32)),
        "no points": ((torch.zeros(0, 0, 2), torch.zeros(0, 0)), None, None),
    }[prompt]
    (s1, d1), (s2, d2) = run_both(theirs, ours, *args)
    assert (s2.shape, d2.shape, s2.dtype, d2.dtype) == (s1.shape, d1.shape, s1.dtype, d1.dtype)
    if backend == "triton":  # an empty batch launches nothing: show that the backend runs at all
        with torch.no_grad():
            ours(random_points(1, 1, image=IMAGE), None, None)


def test_boxes_as_corner_pairs(upstream, backend):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    corners = random_boxes(3, image=IMAGE).reshape(3, 2, 2)
    points = random_points(3, 2, image=IMAGE)
    for args in ((None, corners, None), (points, corners, None)):
        assert_same_outputs(*run_both(theirs, ours, *args))
    assert_close(ours._embed_boxes(corners), theirs._embed_boxes(corners))


def _built_in_inference_mode(cls):
    with torch.inference_mode():
        torch.manual_seed(0)
        return cls(EMBED, EMB, IMAGE, 16)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "grad"])
def test_parameters_made_under_inference_mode(upstream, backend, mode):
    """SAM-2's video predictor runs its whole API under inference_mode; the module may be built,
    loaded or swapped there, then used anywhere."""
    theirs, ours = _built_in_inference_mode(upstream[0]), _built_in_inference_mode(PromptEncoder)
    ours.backend = backend
    assert ours.not_a_point_embed.weight.is_inference()
    points = random_points(2, 3, image=IMAGE)
    context = {"inference_mode": torch.inference_mode(), "no_grad": torch.no_grad(),
               "grad": torch.enable_grad()}[mode]
    for _ in range(2):  # twice: whatever a first call keeps must serve the second
        with context:
            for args in ((points, None, None), (None, random_boxes(2, image=IMAGE), None),
                         (points, random_boxes(2, image=IMAGE), None)):
                assert_same_outputs(theirs(*args), ours(*args))
            assert_close(ours.get_dense_pe(), theirs.get_dense_pe())
    if mode == "grad":  # the learned embeddings still train
        ours(points, None, None)[0].sum().backward()
        theirs(points, None, None)[0].sum().backward()
        assert_close(ours.not_a_point_embed.weight.grad, theirs.not_a_point_embed.weight.grad)


def test_load_state_dict_assign_and_swap_under_inference_mode(upstream, backend):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    holder = nn.Module()
    with torch.inference_mode():
        torch.manual_seed(3)
        holder.sam_prompt_encoder = upstream[0](EMBED, EMB, IMAGE, 16)
        holder.sam_prompt_encoder.load_state_dict(theirs.state_dict(), assign=True)
        ours.load_state_dict(theirs.state_dict(), assign=True)
        replace_prompt_encoder(holder, backend=backend)
    points = random_points(2, 3, image=IMAGE)
    for model in (ours, holder.sam_prompt_encoder):
        with torch.inference_mode():
            assert_same_outputs(theirs(points, None, None), model(points, None, None))
        assert_same_outputs(theirs(points, None, None), model(points, None, None))  # grad mode
        assert_close(model.get_dense_pe(), theirs.get_dense_pe())


@pytest.mark.parametrize("how", ["weight_norm", "register_parametrization", "legacy weight_norm"])
def test_parametrized_embeddings_forward_and_train(upstream, backend, how):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    for model in (theirs, ours):
        for module in (model.point_embeddings[1], model.not_a_point_embed):
            if how == "weight_norm":
                parametrizations.weight_norm(module, dim=1)
            elif how == "legacy weight_norm":
                nn.utils.weight_norm(module, dim=1)
            else:
                parametrize.register_parametrization(module, "weight", _Scaled())
    points = random_points(2, 3, image=IMAGE)
    assert_same_outputs(*run_both(theirs, ours, points, random_boxes(2, image=IMAGE), None))
    grads = []
    for model in (theirs, ours):
        model.zero_grad()
        model(points, None, None)[0].square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], atol=1e-4)


class _Scaled(nn.Module):
    def forward(self, weight):
        return 1.5 * weight


def test_gaussian_as_a_parameter(upstream, backend):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    for model in (theirs, ours):
        value = model.pe_layer.positional_encoding_gaussian_matrix
        del model.pe_layer._buffers["positional_encoding_gaussian_matrix"]
        model.pe_layer.positional_encoding_gaussian_matrix = nn.Parameter(value.clone())
    points = random_points(2, 3, image=IMAGE)
    assert_same_outputs(*run_both(theirs, ours, points, random_boxes(2, image=IMAGE), None))
    assert_close(ours.get_dense_pe(), theirs.get_dense_pe().detach())
    if backend == "triton":  # under no_grad the kernels serve it
        assert ours.backend == "triton"


@pytest.mark.parametrize("backend_name", ["auto", "torch", "triton"])
def test_meta_device(upstream, backend_name):
    """Shapes and dtypes without data (nothing to launch, whatever the backend)."""
    with torch.device("meta"):
        theirs = upstream[0](EMBED, EMB, IMAGE, 16)
        ours = PromptEncoder(EMBED, EMB, IMAGE, 16, backend=backend_name)
        points = (torch.zeros(2, 3, 2), torch.zeros(2, 3, dtype=torch.int32))
        boxes, masks = torch.zeros(2, 4), torch.zeros(2, 1, 32, 32)
    for args in ((points, None, None), (None, boxes, None), (points, boxes, masks),
                 (None, None, masks)):
        for mine, want in zip(ours(*args), theirs(*args)):
            assert mine.device.type == "meta"
            assert (mine.shape, mine.dtype) == (want.shape, want.dtype)
    grid, want = ours.get_dense_pe(), theirs.get_dense_pe()
    assert (grid.device.type, grid.shape, grid.dtype) == ("meta", want.shape, want.dtype)
    ours.to_empty(device="cpu")  # then materialised and loaded, as with deferred init
    reference = PromptEncoder(EMBED, EMB, IMAGE, 16, backend=backend_name)
    ours.load_state_dict(reference.state_dict())
    assert_close(ours.get_dense_pe(), reference.get_dense_pe())
