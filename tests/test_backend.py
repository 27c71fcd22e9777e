"""Backend selection: constructor argument, settable attribute, environment variable, the gate."""

import pytest
import torch

from helpers import random_points
from sam2_prompt import PromptEncoder, ops


def make(**kwargs):
    return PromptEncoder(64, (16, 16), (256, 256), 16, **kwargs)


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("SAM2_PROMPT_BACKEND", "torch")
    assert make().backend == "torch"
    monkeypatch.setenv("SAM2_PROMPT_BACKEND", "TRITON")
    assert make().backend == "triton"
    assert make(backend="torch").backend == "torch"  # the argument wins
    monkeypatch.setenv("SAM2_PROMPT_BACKEND", "cuda")
    with pytest.raises(ValueError, match="SAM2_PROMPT_BACKEND"):
        make()


def test_auto_uses_pytorch_on_cpu_and_setter_validates(monkeypatch):
    monkeypatch.delenv("SAM2_PROMPT_BACKEND", raising=False)
    encoder = make()
    assert encoder.backend == "torch"  # auto on CPU tensors
    encoder.backend = "triton"
    assert encoder.backend == encoder.pe_layer.backend == "triton"
    encoder.backend = "auto"
    assert encoder.backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        encoder.backend = "fast"


def test_explicit_triton_that_cannot_run_raises(monkeypatch):
    encoder = make(backend="triton")
    points = random_points(1, 2, image=(256, 256))
    monkeypatch.setattr(ops, "_interpreter_requested", lambda: False)
    with pytest.raises(RuntimeError, match="backend='triton' cannot run: .*CUDA"):
        encoder(points, None, None)
    monkeypatch.setattr(ops, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        encoder(points, None, None)


def test_explicit_triton_refuses_fp64():
    encoder = make(backend="triton").double()
    with pytest.raises(RuntimeError, match="fp32/bf16/fp16"):
        encoder(random_points(1, 2, image=(256, 256)), None, None)


def test_gate():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ops.use_triton("torch", cuda, torch.float32) is False
    assert ops.use_triton("auto", cpu, torch.float32) is False
    assert ops.use_triton("auto", cuda, torch.float64) is False
    assert ops.use_triton("auto", cuda, torch.float32) is ops.HAS_TRITON
