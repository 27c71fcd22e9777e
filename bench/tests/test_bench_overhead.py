"""What the torch.library wrappers cost a one-click call (B = 1, N = 1 and its padding token,
C = 256) on the PyTorch path, forward and backward:

- ``reference``: the implementation called directly (no dispatcher, records no autograd), with
  its folded Fourier weights and label table derived once beforehand; ``reference, folding``
  derives them in the call;
- ``ops.sparse_embed``: the public wrapper (skips the dispatcher for eager calls that record no
  autograd, else calls the registered op), given a ``DerivedCache`` as the encoder does (so the
  cost of validating the kept values by value against the weights is in it);
- ``registered op``: ``torch.ops.sam2_prompt.sparse_embed`` through the dispatcher (and its
  autograd wrapper when an input needs a gradient); it folds the constants in every call;
- ``encoder``: the whole ``PromptEncoder.forward`` for the same click, for scale.

One torch thread: these are microsecond calls, and on a shared CPU a second OpenMP thread makes a
tiny GEMM wait for a time slice (milliseconds) instead of measuring the wrappers.
"""

import pytest
import torch

from sam2_prompt import PromptEncoder, ops, reference
from sam2_prompt.cache import DerivedCache

GEN = torch.Generator().manual_seed(0)
EMBED, IMAGE = 256, 1024
CLICK = (torch.rand(1, 1, 2, generator=GEN) * IMAGE, torch.ones(1, 1, dtype=torch.int32))
GAUSSIAN = torch.randn(2, EMBED // 2, generator=GEN)
TABLE = torch.randn(4, EMBED, generator=GEN)
NOT_A_POINT = torch.randn(1, EMBED, generator=GEN)
NO_BOXES = torch.empty(1, 0, 4)
GRAD_OUT = torch.randn(1, 2, EMBED, generator=GEN)


def forward_calls(grad: bool):
    """name -> zero-argument forward call; the table and not_a_point need a gradient if ``grad``."""
    table = TABLE.clone().requires_grad_(grad)
    not_a_point = NOT_A_POINT.clone().requires_grad_(grad)
    args = (*CLICK, NO_BOXES, True, GAUSSIAN, table, not_a_point, IMAGE, IMAGE, torch.float32)
    torch.manual_seed(0)
    encoder = PromptEncoder(EMBED, (64, 64), (IMAGE, IMAGE), 16, backend="torch")
    encoder.requires_grad_(grad)
    sincos = reference.sincos_weights(GAUSSIAN, IMAGE, IMAGE, torch.float32)
    folded_table = reference.label_table(table.detach(), not_a_point.detach(), torch.float32)
    derived = DerivedCache()
    calls = {
        "ops.sparse_embed": lambda: ops.sparse_embed(*args, False, derived),
        "registered op": lambda: ops.sparse_embed_op(*args, False),
        "encoder": lambda: encoder(CLICK, None, None)[0],
    }
    if not grad:  # out= writes: the implementation alone cannot record autograd
        calls["reference"] = lambda: reference.sparse_embed(*args, sincos=sincos,
                                                            table=folded_table)
        calls["reference, folding"] = lambda: reference.sparse_embed(*args)
    return calls


def backward_calls():
    args = (GRAD_OUT, CLICK[0], CLICK[1], NO_BOXES, True, GAUSSIAN, IMAGE, IMAGE)
    return {
        "reference": lambda: reference.sparse_embed_backward(*args),
        "registered op": lambda: ops.sparse_embed_backward_op(*args, False),
    }


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize(
    "call", ["reference", "reference, folding", "ops.sparse_embed", "registered op", "encoder"])
def test_one_click_forward_overhead(benchmark, one_thread, call, grad):
    calls = forward_calls(grad)
    if call not in calls:
        pytest.skip("the implementation alone records no autograd graph")
    benchmark.group = f"one-click forward ({'grad' if grad else 'no_grad'})"
    with torch.set_grad_enabled(grad):
        out = benchmark(calls[call])
    assert out.shape == (1, 2, EMBED) and out.requires_grad == grad


@pytest.mark.parametrize("call", ["reference", "registered op"])
def test_one_click_backward_overhead(benchmark, one_thread, call):
    benchmark.group = "one-click backward op"
    grads = benchmark(backward_calls()[call])
    assert grads[2].shape == (4, EMBED)
