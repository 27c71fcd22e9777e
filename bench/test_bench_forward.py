"""The CLI's cases through pytest-benchmark, one group per case so --benchmark-compare between
commits lines up: ``pytest bench/`` (add --bench-large for B >= 16384, --benchmark-disable for a
quick smoke run). Backward cases go in a sibling file with the same cases."""

import pytest
import torch

from sam2_prompt.bench import cases as bench_cases

SMALL = [c for c in bench_cases.QUICK if c.batch <= 1024]
LARGE = [bench_cases.Case("b16384-n4", 16384, 4), bench_cases.Case("b65536-n4", 65536, 4),
         bench_cases.Case("b16384-n16", 16384, 16)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend", ["upstream", "torch", "triton"])
@pytest.mark.parametrize("case", SMALL + LARGE, ids=lambda c: c.name)
def test_forward(benchmark, request, case, backend):
    if case in LARGE and not request.config.getoption("--bench-large"):
        pytest.skip("large case: pass --bench-large")
    fn = bench_cases.build(case, backend, DEVICE)
    if fn is None:
        pytest.skip(f"{backend} cannot run here ({DEVICE}, or Meta's sam2 not installed)")
    args = case.inputs(DEVICE)
    benchmark.group = f"forward {case.name}"
    benchmark.extra_info.update(case.as_dict())

    def call():
        with torch.no_grad():
            out = fn(*args)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    sparse, _ = benchmark(call)
    assert sparse.shape == (case.batch, case.tokens, case.embed_dim)
