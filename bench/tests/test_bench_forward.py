"""Forward under no_grad, per case and backend (the grid comes from bench/conftest.py)."""

import torch


def test_forward(benchmark, case, backend, encoder):
    benchmark.group = f"forward {case.name}"
    benchmark.extra_info.update(case.as_dict(), backend=backend, device=encoder.device,
                                max_abs_diff=encoder.max_abs_diff)

    def call():
        with torch.no_grad():
            out = encoder.forward(*encoder.args)
        encoder.sync()
        return out

    sparse, dense = benchmark(call)
    assert sparse.shape == (case.batch, case.tokens, case.embed_dim)
