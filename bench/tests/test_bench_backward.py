"""Forward + backward through the encoder (fine-tuning), per case and backend: the gradient of
the point coordinates (and, through the module, of its embeddings)."""

import pytest


def test_forward_backward(benchmark, case, backend, encoder):
    if not case.points:
        pytest.skip("no point coordinates to differentiate")
    (coords, labels), boxes, masks = encoder.args
    coords = coords.detach().clone().requires_grad_()
    benchmark.group = f"forward+backward {case.name}"
    benchmark.extra_info.update(case.as_dict(), backend=backend, device=encoder.device)

    def step():
        coords.grad = None
        sparse, dense = encoder.forward((coords, labels), boxes, masks)
        (sparse.float().sum() + dense.float().sum()).backward()
        encoder.sync()
        return coords.grad

    assert benchmark(step).shape == coords.shape
