"""Shared fixtures: Meta's SAM-2 as the oracle, both backends, NaN-filled fresh allocations.

TRITON_INTERPRET=1 must be set before triton is imported, so it is set here, first: the Triton
path then runs on CPU tensors whenever a test asks for backend="triton". Tests that compile
kernels ahead of time run in a subprocess without it.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from sam2_prompt import ops  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _import_upstream():
    try:
        from sam2.modeling.position_encoding import PositionEmbeddingRandom
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"Meta's sam2==1.1.0 is required in CI and failed to import: {err}")
        pytest.skip(f"Meta's sam2 (the oracle) is not installed: {err}")
    return PromptEncoder, PositionEmbeddingRandom


@pytest.fixture(scope="session")
def upstream():
    """Meta's (PromptEncoder, PositionEmbeddingRandom) classes."""
    return _import_upstream()


def kernels_available() -> bool:
    return ops.HAS_TRITON and ops.triton_unavailable_reason(torch.device("cpu"), torch.float32) is None


BACKENDS = [
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            not kernels_available() and not IN_CI, reason="Triton (interpreter) unavailable"
        ),
    ),
]


class LaunchCounter:
    """Counts calls of the Triton launchers, to prove the kernels really ran."""

    def __init__(self):
        self.calls = {}

    def wrap(self, module, name):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return original(*args, **kwargs)

        return counted


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each test using it runs on the PyTorch path and on the Triton path (interpreter, CPU)."""
    if request.param == "triton":
        from sam2_prompt.kernels import dense, mask, sparse

        counter = LaunchCounter()
        for module, name in ((sparse, "sparse_embed_fwd"), (sparse, "launch_checked"),
                             (sparse, "sparse_embed_bwd"),
                             (dense, "dense_pe"), (mask, "mask_embed_fwd")):
            monkeypatch.setattr(module, name, counter.wrap(module, name))
        request.node.launch_counter = counter
        yield "triton"
        assert counter.calls, "backend='triton' was requested but no Triton kernel ran"
    else:
        yield "torch"


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Fresh floating outputs start as NaN, so an element a path forgets to write shows up."""
    original = torch.empty

    def empty_nan(*args, **kwargs):
        if kwargs.get("device") is None:  # a wrapper hides the call from `with torch.device(...)`
            kwargs["device"] = torch.get_default_device()
        out = original(*args, **kwargs)
        if out.is_floating_point() and not isinstance(out, torch._subclasses.FakeTensor):
            out.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch, "empty", empty_nan)
    yield
