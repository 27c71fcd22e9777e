"""torch.compile and torch.export of the encoder: no graph breaks, few recompiles, same results."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from helpers import random_boxes, random_points, twins

EMBED, EMB, IMAGE = 64, (16, 16), (256, 256)


@pytest.fixture
def encoder(upstream):
    torch._dynamo.reset()
    return twins(upstream[0], EMBED, EMB, IMAGE)[1].eval()


def test_fullgraph_no_break_and_at_most_two_graphs_for_1_to_16_points(encoder):
    counter = CompileCounter()
    compiled = torch.compile(encoder.forward, fullgraph=True, backend=counter)
    with torch.no_grad():
        for n in range(1, 17):
            points = random_points(2, n, image=IMAGE, seed=n)
            got, eager = compiled(points, None, None), encoder(points, None, None)
            torch.testing.assert_close(got[0], eager[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(got[1], eager[1])
    assert counter.frame_count <= 2, counter.frame_count


def test_inductor_default_and_backward(encoder):
    compiled = torch.compile(encoder.forward, fullgraph=True)
    coords, labels = random_points(3, 4, image=IMAGE)
    boxes = random_boxes(3, image=IMAGE)
    masks = torch.randn(3, 1, 64, 64)
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


class Sparse(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, coords, labels):
        return self.encoder((coords, labels), None, None)[0]


def test_export_with_a_dynamic_point_count(encoder):
    points = torch.export.Dim("points", min=1, max=64)
    coords, labels = random_points(2, 3, image=IMAGE)
    program = torch.export.export(Sparse(encoder), (coords, labels),
                                  dynamic_shapes=({1: points}, {1: points}))
    for n in (1, 5, 16):
        coords, labels = random_points(2, n, image=IMAGE, seed=n)
        torch.testing.assert_close(program.module()(coords, labels),
                                   encoder((coords, labels), None, None)[0], atol=1e-6, rtol=0)


def test_onnx_export_runs_in_onnxruntime(encoder):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from sam2_prompt.ops import decompose_for_export

    points = torch.export.Dim("points", min=1, max=64)
    coords, labels = random_points(2, 3, image=IMAGE)
    program = torch.export.export(Sparse(encoder), (coords, labels),
                                  dynamic_shapes=({1: points}, {1: points}))
    onnx_program = torch.onnx.export(decompose_for_export(program), dynamo=True)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    for n in (1, 5, 16):
        coords, labels = random_points(2, n, image=IMAGE, seed=n)
        (got,) = session.run(None, {names[0]: coords.numpy(), names[1]: labels.numpy()})
        with torch.no_grad():
            want = encoder((coords, labels), None, None)[0]
        torch.testing.assert_close(torch.from_numpy(got), want, atol=2e-5, rtol=0)
