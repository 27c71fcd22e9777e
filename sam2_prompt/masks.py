"""The mask prompt path (SAM-2's ``mask_downscaling``) as functions of plain tensors.

masks [B, 1, Hm, Wm] -> [B, C, H, W] with H = Hm // 4, W = Wm // 4 (SAM-2: Hm = 4 H_emb):

    conv 2x2 / 2 (1 -> c4) -> LayerNorm2d(c4, eps1) -> GELU -> conv 2x2 / 2 (c4 -> c)
    -> LayerNorm2d(c, eps2) -> GELU -> conv 1x1 (c -> C)

with c = mask_in_chans, c4 = c // 4, C = embed_dim; LayerNorm2d normalises over the channels of each
pixel with the biased variance, (x - mean) / sqrt(var + eps) * weight + bias; GELU is exact
(``nn.GELU()``, erf form). Output pixel (i, j) depends only on the 4x4 input patch at (4i, 4j);
rows and columns past 4H, 4W are ignored, as the strided convolutions ignore them.

Three implementations, one signature ``(masks, conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b,
ln2_w, ln2_b, conv3_w, conv3_b, eps1, eps2, out_dtype)``:

- :func:`mask_embed_reference`: the spec and test oracle, Meta's operations one by one,
  differentiable (reverse and forward AD, functorch) in every input;
- :func:`mask_embed_fast`: the CPU path for inference, the same arithmetic on chunks of pixels
  in preallocated workspaces, the output written once by one batched GEMM per chunk;
- ``sam2_prompt.kernels.mask.mask_embed_fwd``: one Triton launch.

Arithmetic is fp32 whatever the input dtypes (fp64 if any input or ``out_dtype`` is fp64), rounded
once to ``out_dtype`` (the module passes its weight dtype, what the conv stack returns).
Only the exact GELU is implemented: a module built with another activation (or
``nn.GELU(approximate="tanh")``) must not be routed here.
"""

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from . import ops
from .huge_pages import advise_huge_pages

# Below this many outputs (16 masks of SAM-2's size) the reference's few large ops are faster on a
# CPU than the fast path's chunks (measured: 1 mask 1.5 vs 2.6 ms, 8 masks 37 vs 42 ms, 16 masks
# 142 vs 82 ms; the allocator recycles the reference's temporaries while they are small).
FAST_PATH_MIN_OUTPUTS = 1 << 24
CHUNK_PIXELS = 8192  # output pixels per chunk of the fast path: workspaces ~ 0.5 MB each
MIN_CHUNK_PIXELS = 2048  # small batches: chunks of >= 1/16 of the pixels, but not smaller
_SHAPES = (  # (name, shape with symbols): c4, c, C are read from the weights
    ("conv1_w", ("c4", 1, 2, 2)), ("conv1_b", ("c4",)), ("ln1_w", ("c4",)), ("ln1_b", ("c4",)),
    ("conv2_w", ("c", "c4", 2, 2)), ("conv2_b", ("c",)), ("ln2_w", ("c",)), ("ln2_b", ("c",)),
    ("conv3_w", ("C", "c", 1, 1)), ("conv3_b", ("C",)),
)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_mask_inputs(masks: Tensor, weights: Sequence[Tensor], eps1, eps2,
                      out_dtype) -> Tuple[int, int, int, int, int, int]:
    """Validate before any work -> (B, H, W, c4, c, C); ``weights`` in signature order.

    ValueError/TypeError name the argument and the shapes."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if not masks.is_floating_point():
        raise TypeError(f"masks must have a floating dtype, got {masks.dtype}")
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be [B, 1, Hm, Wm], got {list(masks.shape)}")
    if masks.shape[2] < 4 or masks.shape[3] < 4:
        raise ValueError(f"masks must be at least 4x4 pixels ([B, 1, Hm >= 4, Wm >= 4]), "
                         f"got {list(masks.shape)}")
    if len(weights) != len(_SHAPES):
        raise TypeError(f"expected {len(_SHAPES)} weight tensors, got {len(weights)}")
    sizes = {}
    for (name, want), t in zip(_SHAPES, weights):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        if t.device != masks.device:
            raise ValueError(f"{name} is on {t.device} but masks are on {masks.device}")
        ok = t.dim() == len(want)
        for got, sym in zip(t.shape, want) if ok else ():
            if isinstance(sym, int):
                ok = ok and got == sym
            elif sizes.setdefault(sym, got) != got:
                ok = False
        if not ok:
            expect = _fmt(f"{s}={sizes[s]}" if s in sizes else s for s in want)
            raise ValueError(f"{name} must be {expect}, got {list(t.shape)}")
    c4, c, C = sizes["c4"], sizes["c"], sizes["C"]
    if min(c4, c, C) < 1:
        raise ValueError(f"channel counts must be >= 1, got c4={c4}, c={c}, C={C} "
                         f"(conv1_w {list(weights[0].shape)}, conv3_w {list(weights[8].shape)})")
    for name, eps in (("eps1", eps1), ("eps2", eps2)):
        finite = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps)
        if not finite or eps < 0:
            raise ValueError(f"{name} must be a finite float >= 0, got {eps!r}")
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise TypeError(f"out_dtype must be a floating torch.dtype, got {out_dtype!r}")
    return masks.shape[0], masks.shape[2] // 4, masks.shape[3] // 4, c4, c, C


def compute_dtype(out_dtype: torch.dtype, *tensors: Tensor) -> torch.dtype:
    """fp64 if the output or any input is fp64, else fp32."""
    wide = out_dtype == torch.float64 or any(t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """x: [B, c, H, W] -> LayerNorm over c per pixel, Meta's ``LayerNorm2d`` formula."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    return weight[:, None, None] * x + bias[:, None, None]


def mask_embed_reference(masks: Tensor, conv1_w: Tensor, conv1_b: Tensor, ln1_w: Tensor,
                         ln1_b: Tensor, conv2_w: Tensor, conv2_b: Tensor, ln2_w: Tensor,
                         ln2_b: Tensor, conv3_w: Tensor, conv3_b: Tensor, eps1: float, eps2: float,
                         out_dtype: torch.dtype) -> Tensor:
    """The spec: masks [B, 1, Hm, Wm], conv1_w [c4, 1, 2, 2], conv1_b / ln1_w / ln1_b [c4],
    conv2_w [c, c4, 2, 2], conv2_b / ln2_w / ln2_b [c], conv3_w [C, c, 1, 1], conv3_b [C]
    -> [B, C, Hm // 4, Wm // 4] in out_dtype. Differentiable in every tensor input."""
    weights = (conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w, conv3_b)
    _, height, width, _, _, _ = check_mask_inputs(masks, weights, eps1, eps2, out_dtype)
    dtype = compute_dtype(out_dtype, masks, *weights)
    (conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w,
     conv3_b) = (w.to(dtype) for w in weights)
    x = masks[:, :, :4 * height, :4 * width].to(dtype)
    x = F.conv2d(x, conv1_w, conv1_b, stride=2)
    x = F.gelu(layer_norm_2d(x, ln1_w, ln1_b, eps1))
    x = F.conv2d(x, conv2_w, conv2_b, stride=2)
    x = F.gelu(layer_norm_2d(x, ln2_w, ln2_b, eps2))
    return F.conv2d(x, conv3_w, conv3_b).to(out_dtype)


def mask_embed_vjp(grad_out: Tensor, masks: Tensor, weights: Sequence[Tensor], eps1: float,
                   eps2: float, needs_grad: Sequence[bool], create_graph: bool = False) -> tuple:
    """The backward of every implementation: grad_out [B, C, H, W] -> gradients of (masks,
    *weights), None where ``needs_grad`` (11 flags) is False, each in its input's dtype.

    The reference's own autograd on a recomputed forward (fp32, or fp64 for fp64 inputs): the
    gradients are Meta's (tested). With create_graph=True, inputs that require grad are used as
    they are, so the gradients stay differentiable in them and in grad_out (double backward). A
    fused backward would save little: the weight gradients need the whole grad_out read and the
    intermediates recomputed, and mask prompts are usually detached in SAM-2's training loop."""
    inputs = [t if create_graph and t.requires_grad else t.detach().requires_grad_(flag)
              for t, flag in zip((masks, *weights), needs_grad)]
    wanted = [t for t, flag in zip(inputs, needs_grad) if flag]
    if not wanted:
        return (None,) * len(inputs)
    with torch.enable_grad():
        out = mask_embed_reference(inputs[0], *inputs[1:], eps1, eps2, grad_out.dtype)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=create_graph,
                                         allow_unused=True))
    result = []
    for t, flag in zip(inputs, needs_grad):
        grad = next(grads) if flag else None
        result.append(torch.zeros_like(t) if grad is None and flag else grad)
    return tuple(result)


def fusable_activations(*activations) -> bool:
    """Whether the mask path's activation modules (``mask_downscaling[2]`` and ``[5]``) are what
    the fused implementations compute: exactly ``nn.GELU`` with approximate="none" (not a
    subclass, not the tanh form). Anything else must run the module's own layers."""
    from torch import nn

    return all(type(act) is nn.GELU and act.approximate == "none" for act in activations)


# ----------------------------------------------------------------------------- the fast CPU path
class LayerNormFold(NamedTuple):
    """A LayerNorm over groups of k rows of a GEMM's output, its centring folded into the GEMM.

    rows = a @ [columns; 1] (the bias is a's last column) gives the channels already centred per
    group (the mean is linear); var = sums @ rows^2 (sums: [groups, groups k] holding 1 / k), and
    the LayerNorm is rows * rsqrt(var + eps) * weight + bias. The weight is applied after the
    scaling, not folded into a: folding it would divide by it (no data-dependent branch for weights
    near 0, no host synchronisation)."""
    a: Tensor  # [groups k, inputs + 1]
    sums: Tensor  # [groups, groups k]
    bias: Tensor  # [1, k, 1]
    weight: Tensor  # [1, k, 1]


def fold_layer_norm(a: Tensor, b: Tensor, groups: int, weight: Tensor,
                    bias: Tensor) -> LayerNormFold:
    """a: [groups k, inputs], b: [groups k] (rows (group, channel)), weight, bias: [k]."""
    k = weight.shape[0]
    a = a.reshape(groups, k, -1)
    b = b.reshape(groups, k, 1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    eye = torch.eye(groups, dtype=a.dtype, device=a.device)
    sums = (eye[:, :, None] / k).expand(groups, groups, k).reshape(groups, groups * k)
    return LayerNormFold(torch.cat([a, b], dim=2).reshape(groups * k, -1), sums,
                         bias.view(1, k, 1), weight.view(1, k, 1))


def fold_weights(weights: Sequence[Tensor], dtype: torch.dtype):
    """The convolutions as matrices on channel-major pixel columns, LayerNorms folded in.

    -> (stage1: LayerNormFold, stage2: LayerNormFold, a3 [C, c + 1]):

    - a 4x4 patch is a column of 16 pixels (dy, dx); conv1 gives the 2x2 sub-pixels (a, b) x c4
      channels, rows (a, b, k), normalised per sub-pixel (4 groups of c4);
    - conv2 on those rows gives c rows, normalised together;
    - conv3 with its bias as a last column (the pixel columns carry a row of ones).
    Recomputed per call (tens of microseconds): nothing weight-derived is kept between calls."""
    (conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w,
     conv3_b) = (w.to(dtype) for w in weights)
    c4, c, C = conv1_w.shape[0], conv2_w.shape[0], conv3_w.shape[0]
    eye = torch.eye(2, dtype=dtype, device=conv1_w.device)
    # rows (a, b, k), columns (dy, dx) = (2 a' + y, 2 b' + x): nonzero where a' = a and b' = b
    a1 = torch.einsum("ac,bd,kyx->abkcydx", eye, eye, conv1_w[:, 0]).reshape(4 * c4, 16)
    stage1 = fold_layer_norm(a1, conv1_b.repeat(4), 4, ln1_w, ln1_b)
    a2 = conv2_w.permute(0, 2, 3, 1).reshape(c, 4 * c4)  # columns (a, b, k) as a1's rows
    stage2 = fold_layer_norm(a2, conv2_b, 1, ln2_w, ln2_b)
    a3 = torch.cat([conv3_w.reshape(C, c), conv3_b.reshape(C, 1)], dim=1)
    return stage1, stage2, a3


def _normalise_gelu_(x: Tensor, fold: LayerNormFold, eps: float, squares: Tensor,
                     norms: Tensor) -> None:
    """In place on x: [groups k, n], a folded GEMM's output (see LayerNormFold): the LayerNorm's
    scaling and affine, then exact GELU. squares: [groups k, n], norms: [groups, n] workspaces."""
    groups = fold.sums.shape[0]
    grouped = x.view(groups, x.shape[0] // groups, x.shape[1])
    torch.mul(x, x, out=squares)
    torch.mm(fold.sums, squares, out=norms)  # the variances
    rstd = norms.add_(eps).rsqrt_().unsqueeze(1)
    torch.addcmul(fold.bias, grouped.mul_(rstd), fold.weight, out=grouped)
    torch._C._nn.gelu_(x)


def _workspace(flat: Tensor, rows: int, cols: int) -> Tensor:
    return flat[:rows * cols].view(rows, cols)


def mask_embed_fast(masks: Tensor, conv1_w: Tensor, conv1_b: Tensor, ln1_w: Tensor,
                    ln1_b: Tensor, conv2_w: Tensor, conv2_b: Tensor, ln2_w: Tensor,
                    ln2_b: Tensor, conv3_w: Tensor, conv3_b: Tensor, eps1: float, eps2: float,
                    out_dtype: torch.dtype, chunk_pixels: Optional[int] = None) -> Tensor:
    """Inference path, same signature and result as :func:`mask_embed_reference` (within fp32
    rounding): -> a fresh contiguous [B, C, H, W] in out_dtype.

    Pixels are processed in chunks of about ``chunk_pixels`` (whole masks, or rows of one mask)
    as channel-major columns in workspaces allocated once per call: patches [16, n] -> conv1 (one
    GEMM, LayerNorm centring folded in) -> LayerNorm + GELU in place -> conv2 (likewise)
    -> LayerNorm + GELU in place -> conv3, one batched GEMM written straight into the output
    (on CPUs; other devices take all pixels as one chunk). Memory: the output plus ~(4 c4 + c + 6 + max(17, 4 c4, c)) x n elements. It
    records no autograd (``out=`` operations: PyTorch raises if an input requires grad under
    grad mode); gradients and transforms go to the reference.
    """
    weights = (conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w, conv3_b)
    batch, height, width, c4, c, C = check_mask_inputs(masks, weights, eps1, eps2, out_dtype)
    dtype = compute_dtype(out_dtype, masks, *weights)
    out = torch.empty((batch, C, height, width), dtype=out_dtype, device=masks.device)
    if out.numel() == 0:
        return out
    advise_huge_pages(out)
    stage1, stage2, a3 = fold_weights(weights, dtype)

    plane = height * width
    # workspaces ~ (4 c4 + c + 6 + max(17, 4 c4, c)) / C of the output's size per chunk pixel:
    # chunks of at most 1/16 of the pixels keep them a few percent of it
    if chunk_pixels is not None:
        target = max(int(chunk_pixels), 1)
    elif masks.device.type == "cpu":
        target = min(CHUNK_PIXELS, max(MIN_CHUNK_PIXELS, batch * plane // 16))
    else:  # accelerators: one chunk, ~20 launches
        target = batch * plane
    masks_per_chunk = min(max(target // plane, 1), batch)
    rows_per_chunk = height if masks_per_chunk > 1 else max(min(target // width, height), 1)
    capacity = masks_per_chunk * rows_per_chunk * width
    kw = {"dtype": dtype, "device": masks.device}
    patches_ws = torch.empty(max(17, 4 * c4, c) * capacity, **kw)  # later the squares
    x1_ws = torch.empty((4 * c4 + 1) * capacity, **kw)
    x2_ws = torch.empty((c + 1) * capacity, **kw)
    norms_ws = torch.empty(4 * capacity, **kw)
    staging = None if out_dtype == dtype else torch.empty(C * capacity, **kw)
    out_planes = out.view(batch, C, plane)
    mask_rows = masks[:, 0]  # [B, Hm, Wm], any strides

    for b0 in range(0, batch, masks_per_chunk):
        group = min(masks_per_chunk, batch - b0)
        for r0 in range(0, height, rows_per_chunk):
            rows = min(rows_per_chunk, height - r0)
            n = group * rows * width
            src = mask_rows[b0:b0 + group, 4 * r0:4 * (r0 + rows), :4 * width]
            src = src.unflatten(2, (width, 4)).unflatten(1, (rows, 4))  # [g, rows, dy, W, dx]
            # each GEMM's input columns end with a row of ones: its bias is a column of its matrix
            patches = _workspace(patches_ws, 17, n)
            patches[:16].view(4, 4, group, rows, width).copy_(src.permute(2, 4, 0, 1, 3))
            patches[16].fill_(1.0)
            x1 = _workspace(x1_ws, 4 * c4 + 1, n)
            torch.mm(stage1.a, patches, out=x1[:4 * c4])
            _normalise_gelu_(x1[:4 * c4], stage1, eps1, _workspace(patches_ws, 4 * c4, n),
                             _workspace(norms_ws, 4, n))
            x1[4 * c4].fill_(1.0)
            x2 = _workspace(x2_ws, c + 1, n)
            torch.mm(stage2.a, x1, out=x2[:c])
            _normalise_gelu_(x2[:c], stage2, eps2, _workspace(patches_ws, c, n),
                             _workspace(norms_ws, 1, n))
            x2[c].fill_(1.0)
            cols = rows * width
            # conv3: one batched GEMM, [g, C, c + 1] @ [g, c + 1, cols] -> the output's planes
            target_view = out_planes[b0:b0 + group, :, r0 * width:r0 * width + cols]
            pixels = x2.view(c + 1, group, cols).transpose(0, 1)
            weight = a3.expand(group, C, c + 1)
            if staging is None:
                torch.bmm(weight, pixels, out=target_view)
            else:
                target_view.copy_(torch.bmm(weight, pixels,
                                            out=staging[:group * C * cols].view(group, C, cols)))
    return out


# ----------------------------------------------------------------------------- the op
def _mask_embed(masks: Tensor, conv1_w: Tensor, conv1_b: Tensor, ln1_w: Tensor, ln1_b: Tensor,
                conv2_w: Tensor, conv2_b: Tensor, ln2_w: Tensor, ln2_b: Tensor, conv3_w: Tensor,
                conv3_b: Tensor, eps1: float, eps2: float, out_dtype: torch.dtype,
                use_triton: bool) -> Tensor:
    """``sam2_prompt::mask_embed``: the fused kernel (one launch) or the fast PyTorch path."""
    args = (masks, conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w,
            conv3_b, eps1, eps2, out_dtype)
    if use_triton:
        from .kernels.mask import mask_embed_fwd

        return mask_embed_fwd(*args)
    if is_fake(masks) or masks.device.type == "meta":
        # traced (compile, export: fake tensors, symbolic batch): the reference's convolutions
        # keep every size symbolic, where the fast path's chunk loop would fix the batch
        return mask_embed_reference(*args)
    outputs = masks.shape[0] * conv3_w.shape[0] * (masks.shape[2] // 4) * (masks.shape[3] // 4)
    if outputs < FAST_PATH_MIN_OUTPUTS:
        return mask_embed_reference(*args)
    return mask_embed_fast(*args)


mask_embed_op = ops._define("sam2_prompt::mask_embed")(_mask_embed)


def _mask_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*map(ops._saveable, inputs[:11]))
    ctx.eps = inputs[11:13]


def _mask_backward(ctx, grad_out):
    masks, *weights = ctx.saved_tensors
    # backward(create_graph=True) runs with grad mode on: the gradients stay differentiable
    grads = mask_embed_vjp(grad_out, masks, weights, *ctx.eps, ctx.needs_input_grad[:11],
                           create_graph=torch.is_grad_enabled())
    return (*grads, None, None, None, None)


mask_embed_op.register_autograd(_mask_backward, setup_context=_mask_setup_context)


def mask_embed(masks: Tensor, conv1_w: Tensor, conv1_b: Tensor, ln1_w: Tensor, ln1_b: Tensor,
               conv2_w: Tensor, conv2_b: Tensor, ln2_w: Tensor, ln2_b: Tensor, conv3_w: Tensor,
               conv3_b: Tensor, eps1: float, eps2: float, out_dtype: torch.dtype,
               use_triton: bool) -> Tensor:
    """The mask op: masks [B, 1, Hm, Wm] and the mask layers' weights -> [B, C, Hm // 4, Wm // 4]
    (shapes: :func:`mask_embed_reference`). ``ops.route`` decides how: a plain eager call runs the
    implementation directly, autograd and tracing the registered op (its backward recomputes the
    reference), functorch transforms and forward-mode AD the differentiable reference."""
    args = (masks, conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w,
            conv3_b, eps1, eps2, out_dtype)
    path = ops.route(None, args[:11])
    if path == ops.REFERENCE:
        return mask_embed_reference(*args)
    if path == ops.EAGER:
        return ops._direct(_mask_embed, use_triton, *args)
    return mask_embed_op(*args, use_triton)
