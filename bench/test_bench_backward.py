"""Forward + backward through the encoder (fine-tuning), the CLI's small cases by backend."""

import pytest
import torch

from sam2_prompt.bench import cases as bench_cases
from sam2_prompt.bench.test_bench_forward import DEVICE, SMALL


@pytest.mark.parametrize("backend", ["upstream", "torch", "triton"])
@pytest.mark.parametrize("case", [c for c in SMALL if c.points], ids=lambda c: c.name)
def test_forward_backward(benchmark, case, backend):
    fn = bench_cases.build(case, backend, DEVICE)
    if fn is None:
        pytest.skip(f"{backend} cannot run here ({DEVICE}, or Meta's sam2 not installed)")
    (coords, labels), boxes, masks = case.inputs(DEVICE)
    coords = coords.requires_grad_()
    benchmark.group = f"forward+backward {case.name}"
    benchmark.extra_info.update(case.as_dict())

    def step():
        sparse, dense = fn((coords, labels), boxes, masks)
        (sparse.sum() + dense.sum()).backward()
        return coords.grad

    assert benchmark(step).shape == coords.shape
