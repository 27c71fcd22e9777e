"""What the torch.library wrappers cost a one-click call (B = 1, N = 1) on the PyTorch path:
the implementation called directly, the public op wrapper (which skips the dispatcher for eager
calls that record no autograd), and the registered op through the dispatcher."""

import pytest
import torch

from sam2_prompt import ops, reference

GEN = torch.Generator().manual_seed(0)
ARGS = (torch.rand(1, 1, 2, generator=GEN) * 1024, torch.ones(1, 1, dtype=torch.int32),
        torch.empty(1, 0, 4), True, torch.randn(2, 128, generator=GEN),
        torch.randn(4, 256, generator=GEN), torch.randn(1, 256, generator=GEN), 1024, 1024,
        torch.float32)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("call", ["reference", "ops.sparse_embed", "registered op"])
def test_one_click_overhead(benchmark, call, grad):
    table = ARGS[5].clone().requires_grad_(grad)
    args = ARGS[:5] + (table,) + ARGS[6:]
    fn = {"reference": lambda: reference.sparse_embed(*args),
          "ops.sparse_embed": lambda: ops.sparse_embed(*args, False),
          "registered op": lambda: ops.sparse_embed_op(*args, False)}[call]
    if call == "reference" and grad:
        pytest.skip("the implementation alone records no autograd graph")
    benchmark.group = f"one-click op overhead ({'grad' if grad else 'no_grad'})"
    with torch.set_grad_enabled(grad):
        out = benchmark(fn)
    assert out.shape == (1, 2, 256)
