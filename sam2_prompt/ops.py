"""The op layer: the one dispatch gate, the ``sam2_prompt::*`` torch.library ops and their autograd.

Every op has one implementation function that branches on ``use_triton`` (decided by the gate, a
plain bool in the schema): the Triton launchers from ``sam2_prompt.kernels`` or the pure-PyTorch
code in :mod:`sam2_prompt.reference`. With Triton installed the ops are ``torch.library.triton_op``
(Inductor sees the kernels); without it they are ``custom_op`` with the same function as fake.
"""

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import reference

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "SAM2_PROMPT_BACKEND"
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ModuleNotFoundError:
    HAS_TRITON = False

try:  # Launch kernels directly rather than through the tracing wrapper (what triton_op does eagerly).
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled
except ImportError:  # pragma: no cover - older torch
    _set_wrap_triton_enabled = None


def check_backend(backend: Optional[str]) -> str:
    """None -> the ``SAM2_PROMPT_BACKEND`` environment variable (default ``auto``)."""
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
        where = f"environment variable {BACKEND_ENV}"
    else:
        where = "backend"
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS} or None, got {backend!r}")
    return backend.lower()


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why the Triton kernels cannot run for this device and output dtype (None if they can)."""
    if not HAS_TRITON:
        return "Triton is not installed (pip install 'sam2-prompt[triton]')"
    if dtype not in TRITON_DTYPES:
        return f"the Triton kernels compute fp32/bf16/fp16 outputs, not {dtype}"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpreter_requested():
        return None
    return (
        f"the Triton kernels need CUDA tensors (got device {device}); on CPU they run only "
        "under the interpreter, with TRITON_INTERPRET=1 set before triton is imported"
    )


def use_triton(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """The one dispatch gate. ``backend`` is a checked request: auto, torch or triton.

    auto: Triton on CUDA tensors when it imports, else PyTorch. triton: Triton or a clear error,
    never a silent fallback (on CPU it means the interpreter).
    """
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return False
    reason = triton_unavailable_reason(device, dtype)
    if backend == "triton":
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
        return True
    return reason is None


# Tracers without Dynamo (make_fx, fake tensors) must see the op: a Triton launch bypassing the
# dispatcher would be missing from their graph, or run on fake tensors.
_TRACING_MODES = (torch._C._TorchDispatchModeKey.PROXY, torch._C._TorchDispatchModeKey.FAKE)


def eager_inference(*tensors: Tensor) -> bool:
    """True for a plain eager call that records no autograd: the op's dispatcher and autograd
    wrappers (about 50 us on a CPU) are skipped and its implementation called directly."""
    if torch.compiler.is_compiling() or any(
        torch._C._get_dispatch_mode(mode) is not None for mode in _TRACING_MODES
    ):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _direct(impl, use_triton: bool, *args):
    if not (use_triton and _set_wrap_triton_enabled):
        return impl(*args, use_triton)
    with _set_wrap_triton_enabled(False):
        return impl(*args, use_triton)


def _define(name: str):
    """``triton_op`` when Triton imports (compile/export see the kernels), else ``custom_op``."""

    def register(fn):
        if HAS_TRITON:
            return torch.library.triton_op(name, mutates_args=())(fn)
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.register_fake(fn)
        return op

    return register


def _sparse_embed(
    point_coords: Tensor,
    point_labels: Tensor,
    boxes: Tensor,
    pad: bool,
    gaussian: Tensor,
    point_table: Tensor,
    not_a_point: Tensor,
    image_h: int,
    image_w: int,
    out_dtype: torch.dtype,
    use_triton: bool,
) -> Tensor:
    """point_coords: [B, N, 2], point_labels: [B, N], boxes: [B, K, 4], gaussian: [2, F],
    point_table: [4, C], not_a_point: [1, C] -> [B, N + pad + 2K, C] (see reference.sparse_embed)."""
    args = (point_coords, point_labels, boxes, pad, gaussian, point_table, not_a_point,
            image_h, image_w, out_dtype)
    if use_triton:
        from .kernels.sparse import sparse_embed_fwd

        return sparse_embed_fwd(*args)
    return reference.sparse_embed(*args)


def _sparse_embed_backward(
    grad_out: Tensor,
    point_coords: Tensor,
    point_labels: Tensor,
    boxes: Tensor,
    pad: bool,
    gaussian: Tensor,
    image_h: int,
    image_w: int,
    use_triton: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad_out: [B, T, C] -> grads of point_coords [B, N, 2], boxes [B, K, 4],
    point_table [4, C], not_a_point [1, C] (fp32; fp64 for an fp64 grad_out)."""
    args = (grad_out, point_coords, point_labels, boxes, pad, gaussian, image_h, image_w)
    if use_triton:
        from .kernels.sparse import sparse_embed_bwd

        grads = sparse_embed_bwd(*args)
    else:
        grads = reference.sparse_embed_backward(*args)
    # An op's outputs may not alias each other; these are small ([B, N, 2], [B, K, 4], [5, C]).
    return tuple(g.clone() for g in grads)


sparse_embed_op = _define("sam2_prompt::sparse_embed")(_sparse_embed)
sparse_embed_backward_op = _define("sam2_prompt::sparse_embed_backward")(_sparse_embed_backward)


def sparse_embed(
    point_coords: Tensor,
    point_labels: Tensor,
    boxes: Tensor,
    pad: bool,
    gaussian: Tensor,
    point_table: Tensor,
    not_a_point: Tensor,
    image_h: int,
    image_w: int,
    out_dtype: torch.dtype,
    use_triton: bool,
    constants: Optional[tuple] = None,
) -> Tensor:
    """The sparse op (``sam2_prompt::sparse_embed``); see :func:`_sparse_embed` for shapes.

    constants: the PyTorch path's ``reference.sparse_constants``, if the caller caches them
    (eager only)."""
    args = (point_coords, point_labels, boxes, pad, gaussian, point_table, not_a_point,
            image_h, image_w, out_dtype)
    if eager_inference(point_coords, boxes, point_table, not_a_point):
        if not use_triton:
            return reference.sparse_embed(*args, constants=constants)
        return _direct(_sparse_embed, use_triton, *args)
    return sparse_embed_op(*args, use_triton)


def _sparse_setup_context(ctx, inputs, output):
    (point_coords, point_labels, boxes, pad, gaussian, point_table, not_a_point,
     image_h, image_w, _, use_triton) = inputs
    ctx.save_for_backward(point_coords, point_labels, boxes, gaussian)
    ctx.pad, ctx.image_h, ctx.image_w, ctx.use_triton = pad, image_h, image_w, use_triton
    ctx.table_dtype, ctx.not_a_point_dtype = point_table.dtype, not_a_point.dtype


def _sparse_backward(ctx, grad_out):
    point_coords, point_labels, boxes, gaussian = ctx.saved_tensors
    grad_coords, grad_boxes, grad_table, grad_nap = sparse_embed_backward_op(
        grad_out.contiguous(), point_coords, point_labels, boxes, ctx.pad, gaussian,
        ctx.image_h, ctx.image_w, ctx.use_triton,
    )

    def cast(grad, like):
        return grad.to(like.dtype) if like.is_floating_point() else None

    # The Gaussian matrix is a buffer (no gradient), as upstream's.
    return (
        cast(grad_coords, point_coords), None, cast(grad_boxes, boxes), None, None,
        grad_table.to(ctx.table_dtype), grad_nap.to(ctx.not_a_point_dtype),
        None, None, None, None,
    )


sparse_embed_op.register_autograd(_sparse_backward, setup_context=_sparse_setup_context)


def _dense_pe(gaussian: Tensor, h: int, w: int, out_dtype: torch.dtype, use_triton: bool) -> Tensor:
    """gaussian: [2, F] -> [C, h, w], the positional encoding of the grid of pixel centres."""
    if use_triton:
        from .kernels.dense import dense_pe as dense_pe_triton

        return dense_pe_triton(gaussian, h, w, out_dtype)
    return reference.dense_pe(gaussian, h, w, out_dtype)


dense_pe_op = _define("sam2_prompt::dense_pe")(_dense_pe)


def dense_pe(gaussian: Tensor, h: int, w: int, out_dtype: torch.dtype, use_triton: bool) -> Tensor:
    """The dense op (``sam2_prompt::dense_pe``): gaussian [2, F] -> [C, h, w]."""
    if eager_inference(gaussian):
        return _direct(_dense_pe, use_triton, gaussian, h, w, out_dtype)
    return dense_pe_op(gaussian, h, w, out_dtype, use_triton)


def decompose_for_export(program: "torch.export.ExportedProgram") -> "torch.export.ExportedProgram":
    """Replace the sparse op in an exported program by plain aten ops (the functional reference),
    e.g. before ``torch.onnx.export(program)``: ONNX has no sam2_prompt ops."""
    return program.run_decompositions({
        torch.ops.sam2_prompt.sparse_embed.default:
            lambda *args: reference.sparse_embed_functional(*args[:-1]),
    })
