"""torch.export of the encoder with symbolic point counts and batch sizes (which also proves the
forward has no host synchronisation: a data-dependent branch, .item() or boolean indexing cannot
export with symbolic sizes), save/load of the program, and ONNX through onnxruntime."""

import io

import pytest
import torch

from helpers import needs_compiled_triton, op_targets, random_boxes, random_points, twins

EMBED, EMB, IMAGE = 64, (16, 16), (256, 256)
MASK = (1, 4 * EMB[0], 4 * EMB[1])


@pytest.fixture
def encoder(upstream):
    return twins(upstream[0], EMBED, EMB, IMAGE)[1].eval()


class Sparse(torch.nn.Module):
    """SAM-2's usual call: clicks only (the encoder appends the padding token)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, coords, labels):
        return self.encoder((coords, labels), None, None)[0]


class Everything(Sparse):
    def forward(self, coords, labels, boxes, masks):
        return self.encoder((coords, labels), boxes, masks)


def export_sparse(encoder):
    points = torch.export.Dim("points", min=1, max=64)
    coords, labels = random_points(2, 3, image=IMAGE)
    return torch.export.export(Sparse(encoder), (coords, labels),
                               dynamic_shapes=({1: points}, {1: points}))


def test_export_with_a_dynamic_point_count(encoder):
    program = export_sparse(encoder)
    assert "sam2_prompt.sparse_embed.default" in op_targets(program)
    for n in (1, 5, 16, 64):
        coords, labels = random_points(2, n, image=IMAGE, seed=n)
        torch.testing.assert_close(program.module()(coords, labels),
                                   encoder((coords, labels), None, None)[0], atol=1e-6, rtol=0)


def test_export_points_boxes_masks_with_dynamic_batch_and_points(encoder):
    batch = torch.export.Dim("batch", min=1, max=1024)
    points = torch.export.Dim("points", min=1, max=64)
    coords, labels = random_points(3, 4, image=IMAGE)
    example = (coords, labels, random_boxes(3, image=IMAGE), torch.randn(3, *MASK))
    program = torch.export.export(
        Everything(encoder), example,
        dynamic_shapes=({0: batch, 1: points}, {0: batch, 1: points}, {0: batch}, {0: batch}))
    for b, n in ((1, 1), (2, 7), (5, 2)):
        coords, labels = random_points(b, n, image=IMAGE, seed=b + n)
        args = (coords, labels, random_boxes(b, image=IMAGE, seed=n), torch.randn(b, *MASK))
        got, want = program.module()(*args), encoder((coords, labels), args[2], args[3])
        torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_exported_program_saves_and_loads(encoder):
    buffer = io.BytesIO()
    torch.export.save(export_sparse(encoder), buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)  # the sam2_prompt ops are registered by the import
    coords, labels = random_points(2, 9, image=IMAGE, seed=9)
    torch.testing.assert_close(loaded.module()(coords, labels),
                               encoder((coords, labels), None, None)[0], atol=1e-6, rtol=0)


@needs_compiled_triton
def test_export_triton_path_on_cuda(upstream):
    encoder = twins(upstream[0], EMBED, EMB, IMAGE, backend="triton")[1].eval().cuda()
    program = export_sparse(encoder)
    for n in (1, 5, 16):
        coords, labels = (t.cuda() for t in random_points(2, n, image=IMAGE, seed=n))
        torch.testing.assert_close(program.module()(coords, labels),
                                   encoder((coords, labels), None, None)[0], atol=1e-6, rtol=0)


def test_onnx_export_runs_in_onnxruntime(encoder):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from sam2_prompt.ops import decompose_for_export

    # ONNX has no sam2_prompt ops: the sparse op is taken apart into aten ops first.
    onnx_program = torch.onnx.export(decompose_for_export(export_sparse(encoder)), dynamo=True)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    for n in (1, 5, 16):
        coords, labels = random_points(2, n, image=IMAGE, seed=n)
        (got,) = session.run(None, {names[0]: coords.numpy(), names[1]: labels.numpy()})
        with torch.no_grad():
            want = encoder((coords, labels), None, None)[0]
        torch.testing.assert_close(torch.from_numpy(got), want, atol=2e-5, rtol=0)
