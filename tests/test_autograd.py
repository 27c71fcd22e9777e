"""Training: gradients equal Meta's on both paths (the Triton path under the interpreter, its fused
backward kernel included); fp64 gradcheck of the op and of the module; determinism; opcheck of
the sam2_prompt ops."""


import pytest
import torch

from helpers import needs_compiled_triton, random_boxes, random_points, twins
from sam2_prompt import PromptEncoder, ops

EMBED, EMB, IMAGE = 64, (16, 16), (256, 256)


def weighted_loss(sparse, dense):
    gen = torch.Generator().manual_seed(5)
    return (sparse * torch.randn(sparse.shape, generator=gen)).sum() + \
        (dense * torch.randn(dense.shape, generator=gen)).sum()


def gradients(model, points, boxes, masks):
    model.zero_grad(set_to_none=True)
    coords = points[0].detach().clone().requires_grad_()
    box = boxes.detach().clone().requires_grad_() if boxes is not None else None
    weighted_loss(*model((coords, points[1]), box, masks)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads["coords"] = coords.grad.clone()
    if box is not None:
        grads["boxes"] = box.grad.clone()
    return grads


@pytest.mark.parametrize("with_masks", [True, False])
def test_gradients_equal_upstream(upstream, backend, with_masks, request):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    coords, labels = random_points(3, 5, image=IMAGE, margin=16)
    labels[0, 1] = -1  # a padding point among the clicks
    boxes = random_boxes(3, image=IMAGE)
    masks = torch.randn(3, 1, 64, 64) if with_masks else None
    expected = gradients(theirs, (coords, labels), boxes, masks)
    actual = gradients(ours, (coords, labels), boxes, masks)
    assert set(actual) == set(expected)
    assert ("no_mask_embed.weight" in actual) != with_masks
    for name, want in expected.items():
        err = ((actual[name] - want).norm() / want.norm().clamp_min(1e-12)).item()
        assert err <= 1e-4, (name, err)
    if backend == "triton":  # the fused backward kernel, not a fallback, made these gradients
        assert request.node.launch_counter.calls.get("sparse_embed_bwd") == 1


def test_gradients_are_deterministic(upstream, backend):
    _, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    points = random_points(40, 6, image=IMAGE)
    first = gradients(ours, points, random_boxes(40, image=IMAGE), None)
    second = gradients(ours, points, random_boxes(40, image=IMAGE), None)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_gradcheck_fp64(upstream):
    _, ours = twins(upstream[0], 8, (4, 4), (32, 48))
    ours = ours.double()
    coords, labels = random_points(2, 3, image=(32, 48))
    labels[1, 2] = -1
    boxes = random_boxes(2, image=(32, 48), boxes=2).double()
    gaussian = ours.pe_layer.positional_encoding_gaussian_matrix

    def sparse(coords, boxes, table, not_a_point):
        return ops.sparse_embed(coords, labels, boxes, True, gaussian, table, not_a_point,
                                32, 48, torch.float64, False)

    table = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    not_a_point = torch.randn(1, 8, dtype=torch.float64, requires_grad=True)
    inputs = (coords.double().requires_grad_(), boxes.requires_grad_(), table, not_a_point)
    assert torch.autograd.gradcheck(sparse, inputs)


@pytest.mark.parametrize("prompt", ["points", "points+boxes+masks"])
def test_gradcheck_fp64_through_the_module(prompt):
    """Every weight, the coordinates and the boxes, through forward (the no_mask_embed or the
    mask_downscaling branch, the padding token or the box corners), module in fp64."""
    torch.manual_seed(0)
    encoder = PromptEncoder(8, (2, 2), (32, 48), 8, backend="torch").double()
    params = dict(encoder.named_parameters())
    coords, labels = random_points(2, 3, image=(32, 48))
    labels[1, 2] = -1
    coords, boxes, masks = coords.double(), None, None
    if prompt == "points+boxes+masks":
        boxes = random_boxes(2, image=(32, 48), boxes=2).double()
        masks = torch.randn(2, 1, 8, 8, dtype=torch.float64)

    def check(output, names):
        """Slow-mode gradcheck of one output with respect to the named prompts and weights (fast
        mode's single random projection over all inputs can hide a 1% error in one of them)."""
        def forward(*values):
            given = dict(zip(names, values))
            weights = {name: given[name] for name in names if name in params}
            prompts = (given.get("coords", coords), labels), given.get("boxes", boxes), masks
            return torch.func.functional_call(encoder, weights, prompts)[output]

        every = {"coords": coords, "boxes": boxes, **params}
        leaves = tuple(every[name].detach().clone().requires_grad_() for name in names)
        assert torch.autograd.gradcheck(forward, leaves)

    check(0, ["coords", *(["boxes"] if boxes is not None else []), "not_a_point_embed.weight",
              *(f"point_embeddings.{i}.weight" for i in range(4))])
    check(1, [name for name in params if name.startswith("mask_downscaling")]
          if masks is not None else ["no_mask_embed.weight"])


def opcheck_inputs(case):
    """(forward args, backward args) for the PyTorch path: points only with pad, points and
    boxes, no points (N = 0) with boxes."""
    gen = torch.Generator().manual_seed(0)
    n, k = {"points+pad": (3, 0), "points+boxes": (2, 2), "no-points": (0, 1)}[case]
    coords = (torch.rand(2, n, 2, generator=gen) * 64).requires_grad_()
    labels = torch.randint(-1, 4, (2, n), generator=gen)
    boxes = (torch.rand(2, k, 4, generator=gen) * 64).requires_grad_()
    gaussian = torch.randn(2, 8, generator=gen)
    table = torch.randn(4, 16, generator=gen, requires_grad=True)
    not_a_point = torch.randn(1, 16, generator=gen, requires_grad=True)
    pad = k == 0
    forward = (coords, labels, boxes, pad, gaussian, table, not_a_point, 64, 64, torch.float32, False)
    grad = torch.randn(2, n + pad + 2 * k, 16, generator=gen)
    backward = (grad, coords.detach(), labels, boxes.detach(), pad, gaussian, 64, 64, False)
    return forward, backward


CASES = ["points+pad", "points+boxes", "no-points"]


@pytest.mark.parametrize("case", CASES)
def test_opcheck_sparse(case):
    assert ops.sparse_embed_op._qualname == "sam2_prompt::sparse_embed"
    forward, backward = opcheck_inputs(case)
    torch.library.opcheck(ops.sparse_embed_op, forward)
    torch.library.opcheck(ops.sparse_embed_backward_op, backward)


def test_opcheck_dense():
    gaussian = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    torch.library.opcheck(ops.dense_pe_op, (gaussian, 5, 7, torch.float32, False))


@needs_compiled_triton  # opcheck's fake-tensor and AOT tests trace the Triton path
@pytest.mark.parametrize("case", CASES)
def test_opcheck_triton_on_cuda(case):
    def on_cuda(args):
        args = [a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor)
                else a for a in args]
        return tuple(args[:-1]) + (True,)

    forward, backward = opcheck_inputs(case)
    torch.library.opcheck(ops.sparse_embed_op, on_cuda(forward))
    torch.library.opcheck(ops.sparse_embed_backward_op, on_cuda(backward))
    torch.library.opcheck(ops.dense_pe_op, (forward[4].cuda(), 5, 7, torch.float32, True))
