"""Autograd as complete as Meta's: a Gaussian that needs a gradient (learnable Fourier features),
forward-mode AD, torch.func transforms (grad, jacrev, vmap, jvp) and double backward, each against
Meta's module with the same weights. Where the fused op's formula cannot serve, the op layer routes
to the differentiable reference (``ops.route``): results are Meta's, never zeros or a missing
gradient (cases 7 and 8 of the correctness issue)."""

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad

from helpers import assert_close, random_boxes, random_points, twins

EMBED, EMB, IMAGE = 32, (8, 8), (128, 128)
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture
def pair(upstream, backend):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    yield theirs, ours
    if backend == "triton":  # transforms route around the kernels: show the backend runs at all
        with torch.no_grad():
            ours(random_points(1, 1, image=IMAGE), None, None)


def prompts():
    coords, _ = random_points(2, 3, image=IMAGE, margin=4)
    labels = torch.tensor([[1, 0, 1], [3, 1, -1]], dtype=torch.int32)
    return coords, labels, random_boxes(2, image=IMAGE)


def sparse_of(model, labels, boxes):
    return lambda coords: model((coords, labels), boxes, None)[0]


def test_jvp_with_respect_to_coordinates(pair):
    """Case 7: torch.func.jvp returned all-zero tangents."""
    coords, labels, boxes = prompts()
    tangent = torch.randn_like(coords)
    (theirs_out, theirs_tan), (ours_out, ours_tan) = (
        torch.func.jvp(sparse_of(model, labels, boxes), (coords,), (tangent,)) for model in pair)
    assert theirs_tan.abs().max() > 0.1
    assert_close(ours_out, theirs_out, atol=2e-5)
    assert_close(ours_tan, theirs_tan, **TOL)


def test_forward_ad_dual_numbers(pair):
    coords, labels, boxes = prompts()
    tangent = torch.randn_like(coords)
    tangents = []
    for model in pair:
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(coords, tangent)
            tangents.append(forward_ad.unpack_dual(model((dual, labels), boxes, None)[0]).tangent)
    assert tangents[0].abs().max() > 0.1
    assert_close(tangents[1], tangents[0], **TOL)


def test_func_grad_jacrev_and_vmap(pair):
    coords, labels, boxes = prompts()
    weights = torch.randn(2, 3 + 2, EMBED)

    def loss_of(model):
        return lambda c: (sparse_of(model, labels, boxes)(c) * weights).sum()

    grads = [torch.func.grad(loss_of(model))(coords) for model in pair]
    assert grads[0].abs().max() > 0.1
    assert_close(grads[1], grads[0], **TOL)
    jacobians = [torch.func.jacrev(sparse_of(model, labels, boxes))(coords) for model in pair]
    assert_close(jacobians[1], jacobians[0], **TOL)
    stacked = torch.stack([coords, coords.flip(0), coords + 7.0])
    mapped = [torch.func.vmap(sparse_of(model, labels, boxes))(stacked) for model in pair]
    assert_close(mapped[1], mapped[0], atol=2e-5)


def test_double_backward(pair):
    """create_graph=True: the gradient's own gradient (a Hessian-vector product in the coordinates,
    and the mixed derivative reaching the learned embeddings)."""
    coords, labels, boxes = prompts()
    weights = torch.randn(2, 3 + 2, EMBED)
    direction = torch.randn_like(coords)
    results = []
    for model in pair:
        model.zero_grad()
        leaf = coords.clone().requires_grad_()
        loss = (model((leaf, labels), boxes, None)[0] ** 2 * weights).sum()
        (grad,) = torch.autograd.grad(loss, leaf, create_graph=True)
        (grad * direction).sum().backward()
        results.append((grad.detach(), leaf.grad, model.point_embeddings[1].weight.grad))
    for mine, want in zip(results[1], results[0]):
        assert want.abs().max() > 0.01
        assert_close(mine, want, **TOL)


@pytest.mark.parametrize("kind", ["buffer.requires_grad_()", "nn.Parameter"])
def test_trainable_gaussian_gets_a_gradient(pair, kind):
    """Case 8: a Gaussian that requires grad got no gradient on the sparse path."""
    coords, labels, boxes = prompts()
    masks = torch.randn(2, 1, 32, 32)
    grads = []
    for model in pair:
        layer = model.pe_layer
        if kind == "nn.Parameter":
            value = layer._buffers.pop("positional_encoding_gaussian_matrix")
            layer.positional_encoding_gaussian_matrix = nn.Parameter(value.clone())
        else:
            layer.positional_encoding_gaussian_matrix.requires_grad_()
        sparse, dense = model((coords, labels), boxes, masks)
        loss = (sparse * torch.linspace(-1, 1, EMBED)).sum() + dense.sum()
        loss = loss + (model.get_dense_pe() * torch.linspace(0, 1, EMBED)[:, None, None]).sum()
        loss.backward()
        grads.append(layer.positional_encoding_gaussian_matrix.grad)
    assert grads[0].abs().max() > 0.1
    assert_close(grads[1], grads[0], atol=1e-3, rtol=1e-4)


def test_trainable_gaussian_training_step_matches(pair):
    """A few optimizer steps of learnable Fourier features with everything else trained too."""
    coords, labels, boxes = prompts()
    states = []
    for model in pair:
        model.pe_layer.positional_encoding_gaussian_matrix.requires_grad_()
        params = [*model.parameters(), model.pe_layer.positional_encoding_gaussian_matrix]
        optimizer = torch.optim.SGD(params, lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            sparse, _ = model((coords, labels), boxes, None)
            (sparse.square().mean() + model.get_dense_pe().mean()).backward()
            optimizer.step()
        states.append(model.state_dict())
    for key, want in states[0].items():
        assert_close(states[1][key], want, atol=1e-4)
