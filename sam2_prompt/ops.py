"""The op layer: the one dispatch gate, the ``sam2_prompt::*`` torch.library ops and their autograd.

Every op has one implementation function that branches on ``use_triton`` (decided by the gate, a
plain bool in the schema): the Triton launchers from ``sam2_prompt.kernels`` or the pure-PyTorch
code in :mod:`sam2_prompt.reference`. With Triton installed the ops are ``torch.library.triton_op``
(Inductor sees the kernels); without it they are ``custom_op`` with the same function as fake.

The public wrappers (:func:`sparse_embed`, :func:`dense_pe`) decide per call how to run
(:func:`route`): plain eager calls that record no autograd call the implementation directly (on
the Triton path the launchers' eager entry: a cached binary launched by ``lean_launch``), the
registered op serves reverse-mode autograd (a fused backward on the Triton path) and tracing, and
what the op's autograd formula cannot serve (forward-mode AD, functorch transforms, a Gaussian
that needs a gradient) runs the differentiable reference (``reference.*_functional``).
Double backward differentiates the reference backward.

:func:`fake_cuda_launches` makes CPU tensors take the CUDA path with a no-op final launch: for
measuring and testing the host side of a launch without a GPU (``sam2-prompt-bench host``).
"""

import contextlib
import os
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch._C._functorch import TransformType
from torch.autograd import forward_ad

from . import reference

if TYPE_CHECKING:
    from .cache import DerivedCache

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "SAM2_PROMPT_BACKEND"
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ModuleNotFoundError:
    HAS_TRITON = False

try:  # the tracing wrapper, switched off for eager launches through `launch` hooks (direct)
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled
except ImportError:  # pragma: no cover - older torch
    _set_wrap_triton_enabled = None

# Device types whose tensors the compiled kernels launch on; fake_cuda_launches() adds "cpu".
_launch_device_types = ("cuda",)


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
    if device.type in _launch_device_types:
        return None
    if device.type == "cpu" and _interpreter_requested():
        return None
    return (
        f"the Triton kernels need CUDA tensors (got device {device}); on CPU they run only "
        "under the interpreter, with TRITON_INTERPRET=1 set before triton is imported"
    )


_DEVICE_TYPES = {}  # torch.device -> its type string (reading device.type builds a new string)


def _device_type(device: torch.device) -> str:
    if len(_DEVICE_TYPES) < 64:  # a handful of devices; bounded all the same
        _DEVICE_TYPES[device] = device.type
    return device.type


def use_triton(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """The one dispatch gate. ``backend`` is a checked request: auto, torch or triton.

    auto: Triton on CUDA tensors when it imports, else PyTorch. triton: Triton or a clear error,
    never a silent fallback (on CPU it means the interpreter).
    """
    if backend == "torch":
        return False
    kind = _DEVICE_TYPES.get(device) or _device_type(device)
    if kind in _launch_device_types and dtype in TRITON_DTYPES and HAS_TRITON:  # every call on GPU
        return True
    if backend == "auto" or kind == "meta":  # meta: shapes only, the reference computes them
        return False
    reason = triton_unavailable_reason(device, dtype)
    if backend == "triton":
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
        return True
    return reason is None


# Tracers without Dynamo (make_fx, fake tensors) must see the op: a Triton launch bypassing the
# dispatcher would be missing from their graph, or run on fake tensors.
_PROXY_MODE = torch._C._TorchDispatchModeKey.PROXY
_FAKE_MODE = torch._C._TorchDispatchModeKey.FAKE

EAGER, OP, REFERENCE = "eager", "op", "reference"


_AD_TRANSFORMS = (TransformType.Grad, TransformType.Jvp, TransformType.Vmap)


_peek_interpreter_stack = torch._C._functorch.peek_interpreter_stack
_get_dispatch_mode = torch._C._get_dispatch_mode


def plain_eager() -> bool:
    """Eager code as written: not compiling, not tracing (make_fx, fake tensors), no functorch
    transform or forward-mode AD."""
    return route(None) == EAGER


def route(gaussian: Optional[Tensor], *tensors) -> str:
    """How an op call runs; ``tensors``: the inputs that may need a gradient besides the Gaussian
    (None where an op has no Gaussian; None tensors are absent inputs), each a tensor, None, or a
    tuple or list of them (passed as it is: unpacking costs every call, and it is read only when
    autograd is on).

    - ``REFERENCE``: the differentiable pure-PyTorch spec, for what the fused op's autograd formula
      does not serve: functorch transforms, forward-mode AD, a Gaussian that needs a gradient;
    - ``EAGER``: a plain eager call that records no autograd: the implementation is called directly,
      without the dispatcher and autograd wrappers (about 50 us on a CPU);
    - ``OP``: the registered op (reverse-mode autograd with the fused backward, tracing, export).

    One function, no helpers: it runs on every call, and each Python call costs a click's host
    path a fraction of a microsecond.
    """
    grad = torch.is_grad_enabled()
    if grad and gaussian is not None and gaussian.requires_grad:
        return REFERENCE
    # Dynamo handles transforms itself (and would misread the interpreter stack below)
    if torch.compiler.is_compiling():
        return OP
    # A functorch transform (grad, vmap, jvp, jacrev, ...; functionalize is not one: it keeps ops
    # as they are) or forward-mode AD.
    level = _peek_interpreter_stack()
    if (level is not None and level.key() in _AD_TRANSFORMS) or forward_ad._current_level >= 0:
        return REFERENCE
    # make_fx or a fake-tensor mode must see the op
    if (_get_dispatch_mode(_PROXY_MODE) is not None or _get_dispatch_mode(_FAKE_MODE) is not None
            or (grad and _any_requires_grad(tensors))):
        return OP
    return EAGER


def _any_requires_grad(tensors) -> bool:
    """Whether any of these tensors (None, or tuples and lists of them) requires a gradient."""
    for tensor in tensors:
        if isinstance(tensor, (tuple, list)):
            if _any_requires_grad(tensor):
                return True
        elif tensor is not None and tensor.requires_grad:
            return True
    return False


def _direct(impl, use_triton: bool, *args):
    """``impl(*args, use_triton)`` for a plain eager call whose launcher launches through its
    ``launch`` hook: with the tracing wrapper (``wrap_triton``) switched off around it."""
    if not (use_triton and _set_wrap_triton_enabled):
        return impl(*args, use_triton)
    with _set_wrap_triton_enabled(False):
        return impl(*args, use_triton)


_kernel_modules = None


def _kernels():
    """(kernels.sparse, kernels.dense), imported on first use (they import triton); looked up as
    module attributes at each call."""
    global _kernel_modules
    if _kernel_modules is None:
        from .kernels import dense, sparse

        _kernel_modules = sparse, dense
    return _kernel_modules


@contextlib.contextmanager
def fake_cuda_launches(capability: int = 90):
    """For the host benchmark and tests only: inside, CPU tensors take exactly the path CUDA
    tensors take (the gate chooses Triton for them, ``auto`` included; the eager branch calls the
    launchers' lean entry), and Triton's driver is ``kernels.fake_driver``'s: kernels compile for
    ``sm_<capability>``, the binder, caches and launch path are real, and the final launch is a
    no-op that counts (the yielded driver's ``launches``). Outputs are never written: they hold
    whatever ``torch.empty`` gave. TRITON_INTERPRET must be unset (the interpreter replaces the
    kernels). Not thread-safe: the gate's device list is process-wide while the block runs."""
    global _launch_device_types
    if _interpreter_requested():
        raise RuntimeError("fake_cuda_launches needs TRITON_INTERPRET unset (the interpreter "
                           "replaces @triton.jit kernels)")
    from .kernels.fake_driver import fake_cuda_driver

    saved = _launch_device_types
    with fake_cuda_driver(capability) as fake:
        _launch_device_types = saved + ("cpu",)
        try:
            yield fake
        finally:
            _launch_device_types = saved


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
        return _kernels()[0].sparse_embed_fwd(*args)
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
        grads = _kernels()[0].sparse_embed_bwd(*args)
    else:
        grads = reference.sparse_embed_backward(*args)
    # An op's outputs may not alias each other; these are small ([B, N, 2], [B, K, 4], [5, C]).
    return tuple(g.clone() for g in grads)


sparse_embed_op = _define("sam2_prompt::sparse_embed")(_sparse_embed)
sparse_embed_backward_op = _define("sam2_prompt::sparse_embed_backward")(_sparse_embed_backward)


def sparse_embed(
    point_coords: Tensor,
    point_labels: Tensor,
    boxes: Optional[Tensor],
    pad: bool,
    gaussian: Tensor,
    point_table: Union[Tensor, Sequence[Tensor]],
    not_a_point: Tensor,
    image_h: int,
    image_w: int,
    out_dtype: torch.dtype,
    use_triton: bool,
    derived: Optional["DerivedCache"] = None,
    *,
    prompts_checked: bool = False,
) -> Tensor:
    """The sparse op (``sam2_prompt::sparse_embed``); see :func:`_sparse_embed` for shapes.

    boxes: [B, K, 4], or None for no boxes (K = 0). point_table: [4, C], or its four [1, C] rows
    (SAM-2's four embeddings: stacked only where needed). derived: the caller's
    ``cache.DerivedCache``, where a plain eager call on the PyTorch path keeps the folded Fourier
    weights and the label rows (validated by value against the Gaussian and the embeddings: see
    ``sam2_prompt.cache``). prompts_checked: the caller validated the prompts as the modules do
    (shapes, real dtypes, on not_a_point's device), so a plain eager Triton call does not check
    them again (the weights are still checked)."""
    point_rows = (point_table,) if isinstance(point_table, Tensor) else point_table
    path = route(gaussian, point_coords, boxes, not_a_point, point_rows)
    if path == EAGER and use_triton:
        kernels = (_kernel_modules or _kernels())[0]  # (no call once imported: every click)
        if prompts_checked:  # the planned launch (rows read in place), or None: unusual weights
            out = kernels.launch_checked(point_coords, point_labels, boxes, pad, gaussian,
                                         point_rows, not_a_point, image_h, image_w, out_dtype)
            if out is not None:
                return out
        return kernels.sparse_embed_fwd(point_coords, point_labels, boxes, pad, gaussian,
                                        _stacked(point_rows), not_a_point, image_h, image_w,
                                        out_dtype, eager=True)
    if boxes is None:
        boxes = point_coords.new_empty((point_coords.shape[0], 0, 4))
    if path == EAGER and derived is not None:  # the PyTorch path
        dtype = reference.compute_dtype(out_dtype)

        def fold():
            return (reference.sincos_weights(gaussian, image_h, image_w, dtype),
                    reference.label_table(torch.cat(point_rows), not_a_point, dtype))

        sincos, table = derived.get(("sparse", image_h, image_w, dtype),
                                    (gaussian, not_a_point, *point_rows), fold)
        return reference.sparse_embed(
            point_coords, point_labels, boxes, pad, gaussian, None, not_a_point, image_h, image_w,
            out_dtype, sincos=sincos, table=table)
    args = (point_coords, point_labels, boxes, pad, gaussian, _stacked(point_rows), not_a_point,
            image_h, image_w, out_dtype)
    if path == REFERENCE:
        return reference.sparse_embed_functional(*args)
    if path == OP:
        return sparse_embed_op(*args, use_triton)
    return reference.sparse_embed(*args)


def _stacked(point_rows: Sequence[Tensor]) -> Tensor:
    """The point table [4, C]: the one tensor given, or the four [1, C] rows stacked."""
    return point_rows[0] if len(point_rows) == 1 else torch.cat(point_rows)


def _saveable(t: Tensor) -> Tensor:
    """Inference tensors (parameters made under torch.inference_mode) cannot be saved for
    backward: a copy can (upstream's ops save nothing for these inputs, so they work there)."""
    return t.clone() if t.is_inference() else t


def _sparse_setup_context(ctx, inputs, output):
    (point_coords, point_labels, boxes, pad, gaussian, point_table, not_a_point,
     image_h, image_w, _, use_triton) = inputs
    ctx.save_for_backward(*map(_saveable, (point_coords, point_labels, boxes, gaussian)))
    ctx.pad, ctx.image_h, ctx.image_w, ctx.use_triton = pad, image_h, image_w, use_triton
    ctx.table_dtype, ctx.not_a_point_dtype = point_table.dtype, not_a_point.dtype


def _sparse_backward(ctx, grad_out):
    point_coords, point_labels, boxes, gaussian = ctx.saved_tensors
    args = (grad_out.contiguous(), point_coords, point_labels, boxes, ctx.pad, gaussian,
            ctx.image_h, ctx.image_w)
    if torch.is_grad_enabled():  # backward(create_graph=True): differentiable, for double backward
        grad_coords, grad_boxes, grad_table, grad_nap = reference.sparse_embed_backward(*args)
    else:
        grad_coords, grad_boxes, grad_table, grad_nap = sparse_embed_backward_op(
            *args, ctx.use_triton)

    def cast(grad, like):
        return grad.to(like.dtype) if like.is_floating_point() else None

    # A Gaussian that needs a gradient never reaches the op (route: the reference serves it).
    return (
        cast(grad_coords, point_coords), None, cast(grad_boxes, boxes), None, None,
        grad_table.to(ctx.table_dtype), grad_nap.to(ctx.not_a_point_dtype),
        None, None, None, None,
    )


sparse_embed_op.register_autograd(_sparse_backward, setup_context=_sparse_setup_context)


def _dense_pe(gaussian: Tensor, h: int, w: int, out_dtype: torch.dtype, use_triton: bool) -> Tensor:
    """gaussian: [2, F] -> [C, h, w], the positional encoding of the grid of pixel centres."""
    if use_triton:
        return _kernels()[1].dense_pe(gaussian, h, w, out_dtype)
    return reference.dense_pe(gaussian, h, w, out_dtype)


dense_pe_op = _define("sam2_prompt::dense_pe")(_dense_pe)


def dense_pe(gaussian: Tensor, h: int, w: int, out_dtype: torch.dtype, use_triton: bool) -> Tensor:
    """The dense op (``sam2_prompt::dense_pe``): gaussian [2, F] -> [C, h, w]."""
    path = route(gaussian)
    if path == REFERENCE:
        return reference.dense_pe_functional(gaussian, h, w, out_dtype)
    if path == EAGER:
        if use_triton:
            return _kernels()[1].dense_pe(gaussian, h, w, out_dtype, eager=True)
        return reference.dense_pe(gaussian, h, w, out_dtype)
    return dense_pe_op(gaussian, h, w, out_dtype, use_triton)


def decompose_for_export(program: "torch.export.ExportedProgram") -> "torch.export.ExportedProgram":
    """Replace the sparse op in an exported program by plain aten ops (the functional reference),
    e.g. before ``torch.onnx.export(program)``: ONNX has no sam2_prompt ops."""
    return program.run_decompositions({
        torch.ops.sam2_prompt.sparse_embed.default:
            lambda *args: reference.sparse_embed_functional(*args[:-1]),
    })
