"""Where we are better than upstream, each shown against upstream or an fp64 oracle."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import EMBED, MASK_CHANS, assert_close, random_boxes, random_points, twins
from sam2_prompt import PromptEncoder


def fp64_oracle(ours, *args):
    """Our module's own parameters, in fp64 on the PyTorch path: the exact answer."""
    exact = PromptEncoder(ours.embed_dim, ours.image_embedding_size, ours.input_image_size,
                          MASK_CHANS, backend="torch").double()
    exact.load_state_dict(ours.state_dict())
    with torch.no_grad():
        return exact(*args), exact.get_dense_pe()


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16])
def test_autocast_keeps_positions_in_fp32(upstream, backend, cast):
    theirs, ours = twins(upstream[0], backend=backend)
    points = random_points(64, 4, margin=64)
    (sparse64, _), dense64 = fp64_oracle(ours, points, None, None)
    with torch.no_grad(), torch.autocast("cpu", dtype=cast):
        their_sparse, _ = theirs(points, None, None)
        our_sparse, _ = ours(points, None, None)
        our_dense = ours.get_dense_pe()
    assert our_sparse.dtype == their_sparse.dtype == torch.float32
    their_err = (their_sparse.double() - sparse64).abs().max().item()
    our_err = (our_sparse.double() - sparse64).abs().max().item()
    assert their_err > 0.01, their_err  # upstream projects in the autocast dtype
    assert our_err <= 1e-5, our_err
    # The dense grid comes out in the autocast dtype, as upstream's, but rounded once from fp32.
    assert our_dense.dtype == cast
    ulp = 2.0 ** -7 if cast == torch.bfloat16 else 2.0 ** -10
    assert_close(our_dense, dense64.to(cast), atol=1e-5, rtol=ulp)


def test_module_cast_to_bfloat16_works(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    theirs, ours = theirs.to(torch.bfloat16), ours.to(torch.bfloat16)
    points = random_points(8, 3)
    with pytest.raises(RuntimeError):
        with torch.no_grad():
            theirs(points, None, None)
    with torch.no_grad():
        sparse, dense = ours(points, random_boxes(8), None)
        grid = ours.get_dense_pe()
    assert sparse.dtype == dense.dtype == grid.dtype == torch.bfloat16
    (sparse64, _), grid64 = fp64_oracle(ours, points, random_boxes(8), None)
    assert_close(sparse, sparse64.to(torch.bfloat16), atol=1e-5, rtol=2.0 ** -7)
    assert_close(grid, grid64.to(torch.bfloat16), atol=1e-5, rtol=2.0 ** -7)


def test_dense_pe_is_cached_on_cpu_and_served_as_a_copy(upstream):
    """The PyTorch path keeps the grid (validated by value: see test_cache.py) and returns a new
    tensor each call, as upstream's recomputation does."""
    theirs, ours = twins(upstream[0])
    first = ours.get_dense_pe()
    second = ours.get_dense_pe()
    assert len(ours.pe_layer._derived) == 1
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, second)
    assert_close(second, theirs.get_dense_pe())
    ours.double()  # upstream's grid raises for an fp64 module (an fp32 grid times fp64 weights)
    assert ours.get_dense_pe().dtype == torch.float64
    assert_close(ours.get_dense_pe(), theirs.get_dense_pe().double(), atol=2e-5)


def test_explicit_triton_refuses_fp64_grid(upstream):
    """An explicit "triton" never falls back silently: the kernels compute fp32/bf16/fp16."""
    _, ours = twins(upstream[0], backend="triton")
    with pytest.raises(RuntimeError, match="fp32/bf16/fp16"):
        ours.double().get_dense_pe()


def test_several_boxes_per_prompt(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    boxes = random_boxes(3, boxes=4)
    points = random_points(3, 2)
    with torch.no_grad():
        sparse, _ = ours(points, boxes, None)
        expected = [theirs._embed_points(*points, pad=False)]
        expected += [theirs._embed_boxes(boxes[:, k]) for k in range(4)]
    assert sparse.shape == (3, 2 + 8, EMBED)
    assert_close(sparse, torch.cat(expected, dim=1))
    with torch.no_grad():
        only_boxes, _ = ours(None, boxes, None)
    assert_close(only_boxes, sparse[:, 2:])


class AllocationRecorder(TorchDispatchMode):
    """Records the bytes of every tensor an aten op creates (views excluded: they share storage)."""

    def __init__(self):
        super().__init__()
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.storages[storage.data_ptr()] = storage.nbytes()
        return out


def test_sparse_output_written_once_into_one_allocation(upstream):
    theirs, ours = twins(upstream[0])
    points = random_points(512, 4)
    for model in (ours, theirs):
        with torch.no_grad(), AllocationRecorder() as rec:
            sparse, _ = model(points, None, None)
        out_bytes = sparse.numel() * sparse.element_size()
        big = [n for n in rec.storages.values() if n >= out_bytes // 2]
        total = sum(rec.storages.values())
        if model is ours:
            assert len(big) == 1, big  # the output itself: no output-sized temporaries
            assert total <= 1.5 * out_bytes, total / out_bytes
        else:
            assert total > 5 * out_bytes  # upstream: chains of cat/where over the full output
