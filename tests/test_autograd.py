"""Training: gradients equal Meta's on both paths; fp64 gradcheck; determinism; opcheck."""

import pytest
import torch

from helpers import random_boxes, random_points, twins
from sam2_prompt import ops

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
def test_gradients_equal_upstream(upstream, backend, with_masks):
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


@pytest.mark.parametrize("case", ["points+pad", "points+boxes", "no-points"])
def test_opcheck(case):
    gen = torch.Generator().manual_seed(0)
    n, k = {"points+pad": (3, 0), "points+boxes": (2, 2), "no-points": (0, 1)}[case]
    coords = (torch.rand(2, n, 2, generator=gen) * 64).requires_grad_()
    labels = torch.randint(-1, 4, (2, n), generator=gen)
    boxes = (torch.rand(2, k, 4, generator=gen) * 64).requires_grad_()
    gaussian = torch.randn(2, 8, generator=gen)
    table = torch.randn(4, 16, generator=gen, requires_grad=True)
    not_a_point = torch.randn(1, 16, generator=gen, requires_grad=True)
    args = (coords, labels, boxes, k == 0, gaussian, table, not_a_point, 64, 64, torch.float32, False)
    torch.library.opcheck(ops.sparse_embed_op, args)
    grad = torch.randn(2, n + (k == 0) + 2 * k, 16, generator=gen)
    torch.library.opcheck(ops.sparse_embed_backward_op,
                          (grad, coords.detach(), labels, boxes.detach(), k == 0, gaussian, 64, 64, False))
    torch.library.opcheck(ops.dense_pe_op, (gaussian, 5, 7, torch.float32, False))
