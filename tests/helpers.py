"""Shared by the tests: twin encoders (Meta's and ours with identical weights), prompts, and
what the Triton tests need (a child process without the interpreter, the tracing skip)."""

import os

import pytest
import torch

from sam2_prompt import PromptEncoder

EMBED = 256
EMB_SIZE = (64, 64)
IMAGE = (1024, 1024)
MASK_CHANS = 16


def twins(upstream_cls, embed_dim=EMBED, emb_size=EMB_SIZE, image=IMAGE, backend="torch", seed=0):
    """Meta's encoder and ours, built from the same seed, with non-trivial learned embeddings."""
    torch.manual_seed(seed)
    theirs = upstream_cls(embed_dim, emb_size, image, MASK_CHANS)
    torch.manual_seed(seed)
    ours = PromptEncoder(embed_dim, emb_size, image, MASK_CHANS, backend=backend)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


SAM2_TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"  # Meta's smallest model: the end-to-end tests'


def sam2_tiny():
    """Meta's SAM2Base (sam2.1 hiera-t, random weights, eval, CPU) with learned prompt embeddings
    that are not all alike (N(0, 1))."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SAM2_TINY, ckpt_path=None, device="cpu", mode="eval")
    with torch.no_grad():
        for param in model.sam_prompt_encoder.parameters():
            param.normal_()
    return model


def random_points(batch, num, image=IMAGE, labels=(-1, 0, 1, 2, 3), seed=0, margin=0.0):
    gen = torch.Generator().manual_seed(seed)
    h, w = image
    lo = torch.tensor([-margin, -margin])
    span = torch.tensor([w + 2 * margin, h + 2 * margin])
    coords = torch.rand(batch, num, 2, generator=gen) * span + lo
    choice = torch.randint(0, len(labels), (batch, num), generator=gen)
    return coords, torch.tensor(labels, dtype=torch.int32)[choice]


def random_boxes(batch, image=IMAGE, seed=1, boxes=None):
    gen = torch.Generator().manual_seed(seed)
    h, w = image
    shape = (batch, 4) if boxes is None else (batch, boxes, 4)
    return torch.rand(*shape, generator=gen) * torch.tensor([w, h, w, h])


def assert_close(actual, expected, atol=2e-5, rtol=0.0):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)


def op_targets(traced) -> set:
    """The ops a traced graph calls (``traced``: a GraphModule or an ExportedProgram)."""
    return {str(node.target) for node in traced.graph.nodes if node.op == "call_function"}


def env_without_interpreter() -> dict:
    """os.environ less TRITON_INTERPRET (conftest.py sets it): for a child process that compiles
    real kernels."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


# Tracing the Triton path (compile, export, opcheck: fake tensors) needs compiled kernels on CUDA.
needs_compiled_triton = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") != "0",
    reason="the Triton path traces only with compiled kernels on CUDA: under TRITON_INTERPRET=1 "
           "wrap_triton hands back the interpreted function, which cannot run on fake tensors")
