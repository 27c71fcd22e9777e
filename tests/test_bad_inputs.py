"""Bad input: a clear ValueError/TypeError naming the argument and shapes, before any computation."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import twins

C = torch.zeros(2, 3, 2)
L = torch.ones(2, 3, dtype=torch.int32)
BOX = torch.zeros(2, 4)
MASK = torch.zeros(2, 1, 256, 256)

CASES = [
    # (id, points, boxes, masks, error, fragments of the message)
    ("coords-2d", (torch.zeros(2, 2), L), None, None, ValueError, ["coords", "[B, N, 2]", "(2, 2)"]),
    ("coords-last-3", (torch.zeros(2, 3, 3), L), None, None, ValueError, ["coords", "(2, 3, 3)"]),
    ("labels-shape", (C, torch.ones(2, 4)), None, None, ValueError, ["labels", "(2, 4)", "(2, 3, 2)"]),
    ("labels-3d", (C, torch.ones(2, 3, 1)), None, None, ValueError, ["labels", "(2, 3, 1)"]),
    ("points-not-pair", C, None, None, TypeError, ["points", "(coords, labels)", "Tensor"]),
    ("points-triple", (C, L, L), None, None, TypeError, ["points", "length 3"]),
    ("coords-list", ([[1.0, 2.0]], L), None, None, TypeError, ["coords", "list"]),
    ("labels-numpy", (C, L.numpy()), None, None, TypeError, ["labels", "ndarray"]),
    ("coords-complex", (C.to(torch.complex64), L), None, None, TypeError, ["coords", "complex64"]),
    ("boxes-last-5", None, torch.zeros(2, 5), None, ValueError, ["boxes", "(2, 5)", "[B, 4]"]),
    ("boxes-4d", None, torch.zeros(2, 1, 1, 4), None, ValueError, ["boxes", "(2, 1, 1, 4)"]),
    ("boxes-not-tensor", None, [0, 0, 1, 1], None, TypeError, ["boxes", "list"]),
    ("boxes-complex", None, BOX.to(torch.complex64), None, TypeError, ["boxes", "complex"]),
    ("masks-size", None, None, torch.zeros(2, 1, 128, 128), ValueError, ["masks", "256", "(2, 1, 128, 128)"]),
    ("masks-channels", None, None, torch.zeros(2, 3, 256, 256), ValueError, ["masks", "(2, 3, 256, 256)"]),
    ("masks-3d", None, None, torch.zeros(1, 256, 256), ValueError, ["masks", "(1, 256, 256)"]),
    ("masks-int", None, None, MASK.long(), TypeError, ["masks", "floating", "int64"]),
    ("masks-not-tensor", None, None, 3.0, TypeError, ["masks", "float"]),
    ("batch-points-boxes", (C, L), torch.zeros(3, 4), None, ValueError, ["batch size", "points 2", "boxes 3"]),
    ("batch-points-masks", (C, L), None, torch.zeros(5, 1, 256, 256), ValueError, ["points 2", "masks 5"]),
    ("batch-boxes-masks", None, BOX, torch.zeros(1, 1, 256, 256), ValueError, ["boxes 2", "masks 1"]),
    ("device", (C.to("meta"), L), None, None, ValueError, ["coords", "meta", "cpu"]),
    ("device-masks", None, None, MASK.to("meta"), ValueError, ["masks", "meta"]),
]


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error_before_any_work(upstream, backend, case):
    _, points, boxes, masks, error, fragments = case
    _, ours = twins(upstream[0], backend=backend)
    with OpCounter() as counter, pytest.raises(error) as info:
        ours(points, boxes, masks)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert counter.ops == [], counter.ops  # nothing was computed before the error
    if backend == "triton":  # the fixture checks that a kernel ran: run one valid call
        with torch.no_grad():
            ours((C, L), None, None)


def test_embed_methods_validate_too(upstream):
    _, ours = twins(upstream[0])
    with pytest.raises(ValueError, match=r"coords must be \[B, N, 2\]"):
        ours._embed_points(torch.zeros(2, 2), L, pad=True)
    with pytest.raises(ValueError, match="boxes must be"):
        ours._embed_boxes(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="coords_input must be a torch.Tensor"):
        ours.pe_layer.forward_with_coords([1, 2], (8, 8))
    with pytest.raises(ValueError, match="embed_dim must be an even int"):
        type(ours)(255, (64, 64), (1024, 1024), 16)
