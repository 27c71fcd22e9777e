"""The pure-PyTorch spec of the prompt encoder's positional math: the CPU path and the test oracle.

The Triton kernels in ``sam2_prompt.kernels`` compute exactly these functions (same signatures).

Notation: a token has pixel coordinates ``(x, y)`` on an image of ``image_h x image_w`` pixels.
SAM-2 shifts to the pixel centre and normalises, ``u = 2 (x + 0.5) / W - 1`` (likewise ``v`` with H),
and projects with the Gaussian matrix ``G: [2, F]`` to ``t_f = u G[0, f] + v G[1, f]`` turns; the
positional encoding is ``[sin(2 pi t), cos(2 pi t)]`` (``C = 2F`` channels, sin half first).
Folded into one affine map per frequency: ``t_f = x a_f + y b_f + c_f`` (see :func:`fourier_affine`).

Labels: -1 -> exactly ``not_a_point`` (positional part discarded, even for NaN coordinates);
0..3 -> positional encoding + ``point_table[label]``; anything else -> the bare positional encoding.

Arithmetic is fp32 whatever the input dtypes (fp64 when ``out_dtype`` is fp64, for oracles and
gradcheck), and the result is rounded once to ``out_dtype``.
"""

import math

import torch

NUM_POINT_LABELS = 4  # positive, negative, box top-left, box bottom-right
PAD_LABEL = -1
TWO_PI = 2.0 * math.pi


def compute_dtype(out_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if out_dtype == torch.float64 else torch.float32


def fourier_affine(gaussian: torch.Tensor, image_h: int, image_w: int, dtype: torch.dtype):
    """Fold the pixel-centre shift, normalisation and projection into turns per pixel.

    gaussian: [2, F] -> fourier [3, F] with rows (a, b, c): a token at pixel (x, y) is at
    ``t = x a + y b + c`` turns, i.e. a = 2 G0 / W, b = 2 G1 / H, c = (1/W - 1) G0 + (1/H - 1) G1,
    folded in fp64 and rounded once to ``dtype``.
    """
    g = gaussian.double()
    folded = torch.stack([
        g[0] * (2.0 / image_w),
        g[1] * (2.0 / image_h),
        torch.add(g[0] * (1.0 / image_w - 1.0), g[1], alpha=1.0 / image_h - 1.0),
    ])
    return _as(folded, dtype)


def sincos_weights(gaussian: torch.Tensor, image_h: int, image_w: int, dtype: torch.dtype):
    """gaussian: [2, F] -> [3, C] radians per pixel (rows x, y, offset) for both halves: the cos
    half's offset is shifted by pi/2, so sin of (x, y, 1) @ weights is [sin, cos] in one pass."""
    turns = fourier_affine(gaussian, image_h, image_w, torch.float64)
    quarter_turn = torch.cat([torch.zeros_like(turns[:2]), torch.full_like(turns[2:], 0.25)])
    return _as(TWO_PI * torch.cat([turns, turns + quarter_turn], dim=1), dtype)


def unit_pe(unit_coords: torch.Tensor, gaussian: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Encode coordinates already normalised to [0, 1]: unit_coords [..., 2] -> [..., C]."""
    dtype = compute_dtype(out_dtype)
    turns = (2.0 * unit_coords.to(dtype) - 1.0) @ gaussian.to(dtype)
    angles = TWO_PI * turns
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(out_dtype)


def gather_tokens(point_coords, point_labels, boxes, pad: bool, dtype: torch.dtype):
    """Lay out the tokens of each prompt: points, one padding token if ``pad``, two corners per box.

    point_coords: [B, N, 2], point_labels: [B, N], boxes: [B, K, 4]
    -> coords [B, T, 3] as homogeneous (x, y, 1) in ``dtype``, labels [B, T] (compared by value, so
    signed labels keep the caller's dtype; unsigned and bool labels, which cannot hold the padding
    label -1, become ``dtype``, as upstream's concatenation with a float padding label does);
    T = N + pad + 2K. Functional (no in-place writes: fine under vmap and autograd); small tensors
    (3 or 1 values per token), so these copies are cheap. The padding token's coordinates are
    arbitrary: its label discards them.
    """
    batch = point_labels.shape[0]
    labels = point_labels if point_labels.dtype.is_signed else point_labels.to(dtype)
    coords = _as(point_coords, dtype)
    num_boxes = boxes.shape[1]
    if num_boxes == 0:  # SAM-2's usual call: points and a padding token at (1, 1), two small pads
        return (torch.constant_pad_nd(coords, (0, 1, 0, int(pad)), 1.0),
                torch.constant_pad_nd(labels, (0, int(pad)), PAD_LABEL))
    corners = _as(boxes, dtype).reshape(batch, 2 * num_boxes, 2)
    coords = torch.cat([torch.constant_pad_nd(coords, (0, 0, 0, int(pad)), 0.0), corners], dim=1)
    # labels 2, 3 per box, made on the device (no host-to-device copy: CUDA graphs capture it)
    corner_labels = torch.arange(2, 4, device=corners.device, dtype=dtype).repeat(num_boxes)
    labels = torch.cat([torch.constant_pad_nd(labels.to(dtype), (0, int(pad)), PAD_LABEL),
                        corner_labels.expand(batch, 2 * num_boxes)], dim=1)
    return torch.constant_pad_nd(coords, (0, 1), 1.0), labels


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def label_table(point_table: torch.Tensor, not_a_point: torch.Tensor, dtype: torch.dtype):
    """-> (rows [5, C]: what labels -1, 0, 1, 2, 3 add, i.e. not_a_point then point_table;
    ids [5]: -1, 0, 1, 2, 3), in ``dtype``."""
    rows = _as(torch.cat([not_a_point, point_table]), dtype)
    return rows, torch.arange(PAD_LABEL, NUM_POINT_LABELS, device=rows.device, dtype=dtype)


def _label_one_hot(point_coords, point_labels, boxes, pad, ids, dtype):
    """-> (coords [B*T, 3], one_hot [B*T, 5] over labels ``ids`` = -1..3) with label -1 tokens
    moved to the origin of (x, y, 1): every angle is then 0 and its sin 0, so they get exactly
    not_a_point, whatever their coordinates (NaN too)."""
    coords, labels = gather_tokens(point_coords, point_labels, boxes, pad, dtype)
    one_hot = labels.reshape(-1, 1) == ids
    return coords.reshape(-1, 3).masked_fill(one_hot[:, :1], 0.0), one_hot


def sparse_embed(
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    boxes: torch.Tensor,
    pad: bool,
    gaussian: torch.Tensor,
    point_table: torch.Tensor,
    not_a_point: torch.Tensor,
    image_h: int,
    image_w: int,
    out_dtype: torch.dtype,
    sincos=None,
    table=None,
) -> torch.Tensor:
    """Sparse prompt embedding, written once into a preallocated output (the CPU fast path).

    point_coords: [B, N, 2], point_labels: [B, N], boxes: [B, K, 4] (x0, y0, x1, y1),
    gaussian: [2, F], point_table: [4, C], not_a_point: [1, C]  ->  [B, N + pad + 2K, C]
    sincos, table: what :func:`sincos_weights` and :func:`label_table` give (in the compute dtype)
    if the caller keeps them; ``point_table`` may then be None.
    Writes into its output (``out=``, in place): no autograd; :func:`sparse_embed_functional` is
    the differentiable form of the same arithmetic.
    """
    dtype = compute_dtype(out_dtype)
    batch, num_points = point_labels.shape
    tokens = num_points + int(pad) + 2 * boxes.shape[1]
    channels = not_a_point.shape[1]
    out = not_a_point.new_empty((batch * tokens, channels), dtype=dtype)
    if out.numel() > 0:
        if sincos is None:
            sincos = sincos_weights(gaussian, image_h, image_w, dtype)
        rows, ids = label_table(point_table, not_a_point, dtype) if table is None else table
        coords, one_hot = _label_one_hot(point_coords, point_labels, boxes, pad, ids, dtype)
        torch.mm(coords, sincos, out=out)  # angles, cos half shifted by pi/2
        out.sin_()
        # Each row gets its label's table row (none for labels outside -1..3): a small GEMM.
        out.addmm_(one_hot.to(dtype), rows)
    out = out.view(batch, tokens, channels)
    return out if out_dtype == dtype else out.to(out_dtype)


def sparse_embed_functional(
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    boxes: torch.Tensor,
    pad: bool,
    gaussian: torch.Tensor,
    point_table: torch.Tensor,
    not_a_point: torch.Tensor,
    image_h: int,
    image_w: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """:func:`sparse_embed`'s arithmetic without in-place writes: differentiable in every input
    (the Gaussian included; forward and reverse mode, double backward, functorch transforms) and
    taken apart into aten ops by exporters such as ONNX. Same shapes and results."""
    dtype = compute_dtype(out_dtype)
    batch, num_points = point_labels.shape
    tokens = num_points + int(pad) + 2 * boxes.shape[1]
    rows, ids = label_table(point_table, not_a_point, dtype)
    coords, one_hot = _label_one_hot(point_coords, point_labels, boxes, pad, ids, dtype)
    angles = coords @ sincos_weights(gaussian, image_h, image_w, dtype)
    out = torch.sin(angles) + one_hot.to(dtype) @ rows
    return out.reshape(batch, tokens, point_table.shape[1]).to(out_dtype)


def sparse_embed_backward(
    grad_out: torch.Tensor,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    boxes: torch.Tensor,
    pad: bool,
    gaussian: torch.Tensor,
    image_h: int,
    image_w: int,
):
    """Gradients of :func:`sparse_embed` (sin and cos recomputed).

    grad_out: [B, T, C] -> (grad_point_coords [B, N, 2], grad_boxes [B, K, 4],
    grad_point_table [4, C], grad_not_a_point [1, C]), in fp32 (fp64 for an fp64 grad_out).
    """
    dtype = compute_dtype(grad_out.dtype)
    coords, labels = gather_tokens(point_coords, point_labels, boxes, pad, dtype)
    batch, tokens = labels.shape
    num_points, num_boxes = point_coords.shape[1], boxes.shape[1]
    channels = grad_out.shape[-1]
    freqs = channels // 2
    grad = grad_out.to(dtype).reshape(batch * tokens, channels)
    flat_labels = labels.reshape(-1)
    keep = flat_labels != PAD_LABEL

    # Table rows: a fixed-order reduction over tokens (deterministic).
    label_ids = torch.arange(NUM_POINT_LABELS, device=grad.device, dtype=dtype)
    one_hot = (flat_labels[:, None] == label_ids).to(dtype)
    grad_point_table = one_hot.t() @ grad
    grad_not_a_point = ((~keep).to(dtype)[None, :] @ grad).reshape(1, channels)

    # Coordinates: d/dx of [sin(angle), cos(angle)], angle = (x, y, 1) @ weight; padding rows
    # (whose coordinates may be NaN) contribute nothing.
    fourier = fourier_affine(gaussian, image_h, image_w, dtype)
    safe_coords = torch.where(keep[:, None], coords.reshape(-1, 3), 0.0)
    angles = (safe_coords @ fourier) * TWO_PI
    grad_angle = grad[:, :freqs] * angles.cos() - grad[:, freqs:] * angles.sin()
    grad_angle = torch.where(keep[:, None], grad_angle * TWO_PI, 0.0)
    grad_coords = (grad_angle @ fourier[:2].t()).reshape(batch, tokens, 2)

    pad_rows = 1 if pad else 0
    grad_point_coords = grad_coords[:, :num_points]
    grad_boxes = grad_coords[:, num_points + pad_rows :].reshape(batch, num_boxes, 4)
    return grad_point_coords, grad_boxes, grad_point_table, grad_not_a_point


def dense_pe(gaussian: torch.Tensor, h: int, w: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Positional encoding of the (h, w) grid of pixel centres (``PositionEmbeddingRandom.forward``).

    gaussian: [2, F] -> [C, h, w], contiguous.
    """
    dtype = compute_dtype(out_dtype)
    freqs = gaussian.shape[1]
    device = gaussian.device
    out = torch.empty(2 * freqs, h, w, device=device, dtype=dtype)
    if out.numel() > 0:
        # Grid pixel (i, j) sits at (x, y) = (j, i) in pixels of a (h, w) image.
        per_x, per_y, offset = (TWO_PI * fourier_affine(gaussian, h, w, torch.float64)).to(dtype)[:, :, None]
        cols = torch.arange(w, device=device, dtype=dtype)
        rows = torch.arange(h, device=device, dtype=dtype)
        cos_half = out[freqs:]
        # angle[f, i, j] = per_x[f] j + per_y[f] i + offset[f]: a broadcast add of two outer products.
        row_part = torch.addcmul(offset, per_y, rows[None, :])
        col_part = per_x * cols[None, :]
        torch.add(row_part[:, :, None], col_part[:, None, :], out=cos_half)
        torch.sin(cos_half, out=out[:freqs])
        cos_half.cos_()
    return out if out_dtype == dtype else out.to(out_dtype)


def dense_pe_functional(gaussian: torch.Tensor, h: int, w: int, out_dtype: torch.dtype) -> torch.Tensor:
    """:func:`dense_pe`'s arithmetic without ``out=`` writes: differentiable in the Gaussian
    (learnable Fourier features, forward mode, functorch transforms). gaussian: [2, F] -> [C, h, w]."""
    dtype = compute_dtype(out_dtype)
    device = gaussian.device
    per_x, per_y, offset = (TWO_PI * fourier_affine(gaussian, h, w, torch.float64)).to(dtype)[:, :, None]
    cols = torch.arange(w, device=device, dtype=dtype)
    rows = torch.arange(h, device=device, dtype=dtype)
    angles = torch.addcmul(offset, per_y, rows[None, :])[:, :, None] + (per_x * cols[None, :])[:, None, :]
    return torch.cat([angles.sin(), angles.cos()]).to(out_dtype)
