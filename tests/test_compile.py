"""torch.compile of the encoder: no graph breaks, few recompiles, the registered ops in the graphs,
the same results and gradients as eager (forward and backward trace with symbolic sizes, which
also proves they have no host synchronisation), caches and the eager bypass out of the trace."""

import copy

import pytest
import torch
from torch._dynamo.testing import AotEagerAndRecordGraphs, CompileCounter
from torch.fx.experimental.proxy_tensor import make_fx

from helpers import needs_compiled_triton, op_targets, random_boxes, random_points, twins

EMBED, EMB, IMAGE = 64, (16, 16), (256, 256)
MASK = (1, 4 * EMB[0], 4 * EMB[1])


@pytest.fixture
def encoder(upstream):
    torch._dynamo.reset()
    return twins(upstream[0], EMBED, EMB, IMAGE)[1].eval()


def prompts(batch, num_points, seed=0):
    coords, labels = random_points(batch, num_points, image=IMAGE, seed=seed)
    labels[0, 0] = -1  # a padding click among the others
    return (coords, labels), random_boxes(batch, image=IMAGE, seed=seed), torch.randn(batch, *MASK)


@pytest.mark.parametrize("inputs", ["points", "points+boxes+masks", "boxes"])
def test_no_graph_break(encoder, inputs):
    points, boxes, masks = prompts(2, 3)
    args = {"points": (points, None, None), "points+boxes+masks": (points, boxes, masks),
            "boxes": (None, boxes, None)}[inputs]
    explanation = torch._dynamo.explain(encoder.forward)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_fullgraph_at_most_two_graphs_for_1_to_16_points(encoder):
    counter = CompileCounter()
    compiled = torch.compile(encoder.forward, fullgraph=True, backend=counter)
    with torch.no_grad():
        for n in range(1, 17):
            points = random_points(2, n, image=IMAGE, seed=n)
            got, eager = compiled(points, None, None), encoder(points, None, None)
            torch.testing.assert_close(got[0], eager[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(got[1], eager[1])
    assert counter.frame_count <= 2, counter.frame_count


def test_forward_and_backward_trace_with_symbolic_point_counts(encoder):
    """One forward/backward graph pair for N = 5..10 (Dynamo specialises 0, 1 and, at first,
    sizes equal to other sizes: 2, 3, 4); the gradients of the coordinates, boxes and every
    weight equal eager's. Dynamo's graph holds the registered op; AOT autograd then traces into
    it (a triton_op: Inductor sees its implementation, here the reference, else the kernels)."""
    encoder.train()
    twin = copy.deepcopy(encoder)
    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(encoder.forward, fullgraph=True, dynamic=True, backend=backend)
    for n in range(5, 11):
        (coords, labels), boxes, _ = prompts(3, n, seed=n)
        grads = []
        for model, forward in ((encoder, compiled), (twin, twin.forward)):
            model.zero_grad(set_to_none=True)
            leaf_coords, leaf_boxes = coords.clone().requires_grad_(), boxes.clone().requires_grad_()
            sparse, dense = forward((leaf_coords, labels), leaf_boxes, None)
            (sparse.square().sum() + dense.mean()).backward()
            grads.append([leaf_coords.grad, leaf_boxes.grad]
                         + [p.grad for p in model.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) == 8  # coords, boxes, 4 + 1 + 1 embeddings
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # Counted after AOT autograd: Dynamo may restart its analysis of a frame (with masks it does:
    # LayerNorm2d's eps is a symbolic float that F.layer_norm needs concrete), counted twice by
    # a frame counter.
    assert (len(backend.fw_graphs), len(backend.bw_graphs)) == (1, 1)
    assert "sam2_prompt.sparse_embed.default" in op_targets(backend.graphs[-1])


def test_inductor_default_and_backward(encoder):
    compiled = torch.compile(encoder.forward, fullgraph=True)
    (coords, labels), boxes, masks = prompts(3, 4)
    coords_c = coords.clone().requires_grad_()
    sparse, dense = compiled((coords_c, labels), boxes, masks)
    coords_e = coords.clone().requires_grad_()
    sparse_e, dense_e = encoder((coords_e, labels), boxes, masks)
    torch.testing.assert_close(sparse, sparse_e, atol=1e-5, rtol=0)
    torch.testing.assert_close(dense, dense_e, atol=1e-5, rtol=1e-5)
    (sparse.square().sum() + dense.sum()).backward()
    (sparse_e.square().sum() + dense_e.sum()).backward()
    torch.testing.assert_close(coords_c.grad, coords_e.grad, atol=1e-4, rtol=1e-4)


def test_max_autotune_static_as_sam2_vos_predictor(encoder):
    # SAM2VideoPredictorVOS: torch.compile(mode="max-autotune", fullgraph=True, dynamic=False)
    compiled = torch.compile(encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False)
    points = random_points(1, 2, image=IMAGE)
    with torch.no_grad():
        got, eager = compiled(points, None, None), encoder(points, None, None)
    torch.testing.assert_close(got[0], eager[0], atol=1e-5, rtol=0)


def test_compiled_training_follows_the_weights(encoder):
    """Optimiser steps through the compiled forward equal eager ones: nothing derived from the
    weights (the module's caches) is baked into the graph, and tracing fills no cache."""
    encoder.train()
    twin = copy.deepcopy(encoder)
    compiled = torch.compile(encoder.forward, fullgraph=True, backend="aot_eager")
    runs = ((encoder, compiled), (twin, twin.forward))
    optimisers = [torch.optim.SGD(model.parameters(), lr=0.05) for model, _ in runs]
    for step in range(3):
        points, boxes, masks = prompts(2, 3, seed=step)
        for (model, forward), optimiser in zip(runs, optimisers):
            optimiser.zero_grad()
            sparse, dense = forward(points, boxes, masks if step else None)
            (sparse.square().mean() + dense.square().mean()).backward()
            optimiser.step()
    for (name, got), want in zip(encoder.named_parameters(), twin.parameters()):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
    assert not encoder._derived._entries and not encoder.pe_layer._derived._entries

    # Inference, then an in-place edit of a weight: the compiled call sees the new value.
    points = random_points(2, 3, image=IMAGE, labels=(1,))
    with torch.no_grad():
        before = compiled(points, None, None)[0]
        encoder.point_embeddings[1].weight.add_(1.0)
        after = compiled(points, None, None)[0]
        torch.testing.assert_close(after, encoder(points, None, None)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(after[:, :3], before[:, :3] + 1.0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tracing_mode", ["real", "symbolic"])
def test_make_fx_records_the_registered_op(encoder, tracing_mode):
    """The eager bypass of the dispatcher is for plain calls: make_fx (no Dynamo) records the op,
    so that a Triton launch cannot go missing from its graph."""
    coords, labels = random_points(2, 3, image=IMAGE)
    with torch.no_grad():
        graph = make_fx(lambda c, l: encoder((c, l), None, None)[0], tracing_mode=tracing_mode,
                        _allow_non_fake_inputs=True)(coords, labels)
    assert "sam2_prompt.sparse_embed.default" in op_targets(graph)
    coords, labels = random_points(2, 3 if tracing_mode == "real" else 7, image=IMAGE, seed=7)
    torch.testing.assert_close(graph(coords, labels), encoder((coords, labels), None, None)[0],
                               atol=1e-6, rtol=0)


@needs_compiled_triton
def test_triton_path_compiles_fullgraph_on_cuda(upstream):
    encoder = twins(upstream[0], EMBED, EMB, IMAGE, backend="triton")[1].cuda()
    compiled = torch.compile(encoder.forward, fullgraph=True)
    (coords, labels), boxes, masks = (
        tuple(t.cuda() for t in p) if isinstance(p, tuple) else p.cuda() for p in prompts(3, 5))
    grads = []
    for forward in (compiled, encoder.forward):
        leaf = coords.clone().requires_grad_()
        sparse, dense = forward((leaf, labels), boxes, masks)
        (sparse.square().sum() + dense.sum()).backward()
        grads.append((sparse.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-4)
