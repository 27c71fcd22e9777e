"""Sparse prompt tokens (points, a padding token, box corners) -> [B, N + pad + 2K, C], one launch.

Spec: ``sam2_prompt.reference.sparse_embed`` (same signature). A token at pixel (x, y) of an
image_h x image_w image is at t_f = u G[0, f] + v G[1, f] turns (u = 2 (x + 0.5) / W - 1, likewise
v); its row is [sin(2 pi t), cos(2 pi t)] (sin half first) plus
``point_table[label]`` for labels 0..3, exactly ``not_a_point`` for label -1, nothing for others.

fp32 formulation: pixel coordinates centred on the image, xc = x + (0.5 - W / 2), per-frequency
slopes a_f = 2 G[0, f] / W correctly rounded to fp32, t = fma(xc, a, yc * b). Centring halves the
terms (|xc a| <= 1.13 |G0|) and with them the rounding of t: measured max error 3.0e-6 against fp64
for coordinates in [-64, W + 64] (G ~ randn(2, 128); 12 sweeps of 4000 points), where folding the
shift into a constant term (t = x a + y b + c) reaches 5e-6.

Kernel shape: a program writes REPS blocks of BLOCK_T token rows x all C channels, straight-line
code; each thread owns 16 frequencies of a token as 16-byte vectors of its sin and cos halves (no
layout conversions: see the kernel), so that per-token index math, coordinate and label loads and
the row gather are amortised over 32 outputs.
"""

import torch
import triton
import triton.language as tl

from .sincos import cos_poly, reduce_half_turns, round_to, sin_over_r, xor_sign

PAD_LABEL = tl.constexpr(-1.0)


@triton.jit
def centred_slope(gauss, half_extent, inv_half_extent):
    """gauss [BLOCK_F] fp32 -> 2 G / extent correctly rounded: the fp32 product G * fl(2 / extent)
    is off by up to an ulp; its exact residual G - slope * extent / 2 (an fma) corrects it."""
    slope = gauss * inv_half_extent
    residual = tl.fma(-slope, half_extent, gauss)
    return tl.fma(residual, inv_half_extent, slope)


@triton.jit
def image_slopes(gauss_ptr, gauss_s0, gauss_s1, freq_tile, freq_ok, x_shift, y_shift, half_w,
                 half_h, inv_half_w, inv_half_h):
    """Per-frequency slopes 2 G / extent (correctly rounded) in the tile's shape, and the fp32
    centring shifts: turns = fma(x + x_shift, slope_x, (y + y_shift) * slope_y)."""
    g0 = tl.load(gauss_ptr + freq_tile * gauss_s1, mask=freq_ok, other=0.0).to(tl.float32)
    g1 = tl.load(gauss_ptr + gauss_s0 + freq_tile * gauss_s1, mask=freq_ok,
                 other=0.0).to(tl.float32)
    slope_x = centred_slope(g0, tl.cast(half_w, tl.float32), tl.cast(inv_half_w, tl.float32))
    slope_y = centred_slope(g1, tl.cast(half_h, tl.float32), tl.cast(inv_half_h, tl.float32))
    return slope_x, slope_y, tl.cast(x_shift, tl.float32), tl.cast(y_shift, tl.float32)


@triton.jit
def load_tokens(
    row, rows, tokens, num_points, pad,
    coords_ptr, coords_sb, coords_sn, coords_sd, labels_ptr, labels_sb, labels_sn,
    boxes_ptr, boxes_sb, boxes_sk, boxes_sd,
):
    """Token rows (int32, any shape) -> (x, y, label) in fp32 and the row's (prompt, token).

    Row b * T + t is point t < N, the padding token t == N if pad, then box corners: corner_id
    = t - N - pad, box corner_id // 2, (x0, y0) if corner_id is even else (x1, y1), label 2 or 3.
    Rows past the end read nothing and come out as padding (label -1)."""
    live = row < rows
    prompt = row // tokens
    token = row - prompt * tokens
    prompt64 = prompt.to(tl.int64)
    token64 = token.to(tl.int64)
    is_point = live & (token < num_points)
    corner_id = token - num_points - pad  # >= 0 for box corners
    is_corner = live & (corner_id >= 0)
    corner = corner_id & 1

    point_at = prompt64 * coords_sb + token64 * coords_sn
    px = tl.load(coords_ptr + point_at, mask=is_point, other=0).to(tl.float32)
    py = tl.load(coords_ptr + point_at + coords_sd, mask=is_point, other=0).to(tl.float32)
    label = tl.load(labels_ptr + prompt64 * labels_sb + token64 * labels_sn,
                    mask=is_point, other=0).to(tl.float32)
    corner_at = (prompt64 * boxes_sb + (corner_id >> 1).to(tl.int64) * boxes_sk
                 + (2 * corner).to(tl.int64) * boxes_sd)
    bx = tl.load(boxes_ptr + corner_at, mask=is_corner, other=0).to(tl.float32)
    by = tl.load(boxes_ptr + corner_at + boxes_sd, mask=is_corner, other=0).to(tl.float32)
    x = tl.where(is_point, px, bx)
    y = tl.where(is_point, py, by)
    label = tl.where(is_point, label, tl.where(is_corner, (2 + corner).to(tl.float32), PAD_LABEL))
    return x, y, label, prompt, token


@triton.jit
def label_rows(label):
    """fp32 labels -> (is_pad, in_table, table_row): -1 is padding, 0..3 index the point table
    (2.0 counts as 2), anything else (4, -2, 0.5, NaN) has no row; table_row is 0 then."""
    is_pad = label == PAD_LABEL
    # min / max drop NaN, so the int conversion never sees NaN or out-of-range values
    table_row = tl.minimum(tl.maximum(label, 0.0), 3.0).to(tl.int32)
    in_table = table_row.to(tl.float32) == label
    return is_pad, in_table, table_row


@triton.jit(do_not_specialize=[
    "coords_sb", "coords_sn", "coords_sd", "labels_sb", "labels_sn", "boxes_sb", "boxes_sk",
    "boxes_sd", "rows", "tokens", "num_points", "pad",
])
def _sparse_embed_fwd_kernel(
    out_ptr,  # [B * T, C] contiguous, OUT_DTYPE
    coords_ptr, coords_sb, coords_sn, coords_sd,  # point_coords [B, N, 2], any dtype and strides
    labels_ptr, labels_sb, labels_sn,  # point_labels [B, N]
    boxes_ptr, boxes_sb, boxes_sk, boxes_sd,  # boxes [B, K, 4]
    gauss_ptr, gauss_s0, gauss_s1,  # gaussian [2, F]
    table_ptr, table_s0,  # point_table [4, C], unit column stride
    nap_ptr,  # not_a_point [1, C], unit column stride, same dtype as the table
    rows, tokens, num_points, pad,  # rows = B * T, tokens = T = N + pad + 2 K
    x_shift, y_shift, half_w, half_h, inv_half_w, inv_half_h,  # fp32 image constants
    C: tl.constexpr, SPAN: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_T: tl.constexpr,
    REPS: tl.constexpr, ROWS_ALIGNED: tl.constexpr, OUT_DTYPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # Tiles are [CHUNKS, BLOCK_T, SPAN]: frequency f = chunk * SPAN + lane_f. Threads spread over
    # (token, lane_f) only, so every thread owns all CHUNKS chunks of its tokens: the per-token work
    # (index math, loads, label logic) is amortised over 2 * CHUNKS * (SPAN / threads) outputs.
    F: tl.constexpr = C // 2
    pid = tl.program_id(0)
    freq = (tl.arange(0, CHUNKS) * SPAN)[:, None, None] + tl.arange(0, SPAN)[None, None, :]
    freq_ok = freq < F
    # Loaded in the full tile shape so that the loads (and everything downstream) take the
    # layout of the output stores: 16-byte vectors along the frequencies, no layout conversions.
    freq_tile = freq + tl.zeros([1, BLOCK_T, 1], dtype=tl.int32)
    slope_x, slope_y, x_shift, y_shift = image_slopes(
        gauss_ptr, gauss_s0, gauss_s1, freq_tile, freq_ok, x_shift, y_shift, half_w, half_h,
        inv_half_w, inv_half_h)

    for rep in tl.static_range(REPS):
        row = (pid * REPS + rep) * BLOCK_T + tl.arange(0, BLOCK_T)[None, :, None]  # int32
        x, y, label, prompt, token = load_tokens(
            row, rows, tokens, num_points, pad, coords_ptr, coords_sb, coords_sn, coords_sd,
            labels_ptr, labels_sb, labels_sn, boxes_ptr, boxes_sb, boxes_sk, boxes_sd)
        is_pad, in_table, table_row = label_rows(label)
        # Label -1 (padding included): the positional part must vanish exactly, even for NaN
        # coordinates. Centred coordinates (0, 0) give t = 0, r = 0, so the sin part r * P is +0;
        # the cos polynomial's constant term is 0 instead of 1 there.
        xc = tl.where(is_pad, 0.0, x + x_shift)
        yc = tl.where(is_pad, 0.0, y + y_shift)
        cos_at_zero = tl.where(is_pad, 0.0, 1.0)
        row_ptr = tl.where(is_pad, nap_ptr, table_ptr + table_row * table_s0)
        if ROWS_ALIGNED:  # both rows start 16-byte aligned (checked by the launcher): vector loads
            row_ptr = tl.multiple_of(row_ptr, [16, 16, 16])
        row_ok = (in_table | is_pad) & freq_ok

        turns = tl.fma(xc, slope_x, yc * slope_y)
        r, flip = reduce_half_turns(turns)
        r2 = r * r
        row_sin = tl.load(row_ptr + freq, mask=row_ok, other=0.0).to(tl.float32)
        row_cos = tl.load(row_ptr + F + freq, mask=row_ok, other=0.0).to(tl.float32)
        out_sin = tl.fma(xor_sign(r, flip), sin_over_r(r2), row_sin)
        out_cos = xor_sign(cos_poly(r2, cos_at_zero), flip) + row_cos

        out_at = out_ptr + row.to(tl.int64) * C + freq
        out_ok = (row < rows) & freq_ok
        tl.store(out_at, round_to(out_sin, OUT_DTYPE, INTERPRET), mask=out_ok)
        tl.store(out_at + F, round_to(out_cos, OUT_DTYPE, INTERPRET), mask=out_ok)


@triton.jit
def _class_sum(acc, is_class, grad):
    return acc + tl.where(is_class, grad, 0.0)


@triton.jit(do_not_specialize=[
    "grad_sb", "grad_st", "coords_sb", "coords_sn", "coords_sd", "labels_sb", "labels_sn",
    "boxes_sb", "boxes_sk", "boxes_sd", "rows", "tokens", "num_points", "num_boxes", "pad",
    "num_blocks",
])
def _sparse_embed_bwd_kernel(
    grad_ptr, grad_sb, grad_st,  # grad_out [B, T, C], unit channel stride, any float dtype
    coords_ptr, coords_sb, coords_sn, coords_sd,  # point_coords [B, N, 2]
    labels_ptr, labels_sb, labels_sn,  # point_labels [B, N]
    boxes_ptr, boxes_sb, boxes_sk, boxes_sd,  # boxes [B, K, 4]
    gauss_ptr, gauss_s0, gauss_s1,  # gaussian [2, F]
    grad_coords_ptr,  # [B, N, 2] fp32 contiguous
    grad_boxes_ptr,  # [B, K, 4] fp32 contiguous
    table_part_ptr,  # [P, 4, C] fp32: per-program sums of grad rows with labels 0..3
    nap_part_ptr,  # [P, 1, C] fp32: per-program sums of grad rows with label -1
    rows, tokens, num_points, num_boxes, pad, num_blocks,
    x_shift, y_shift, half_w, half_h, inv_half_w, inv_half_h,
    C: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # Program p walks token blocks p, p + P, p + 2P, ... (a fixed partition: deterministic).
    # d out[sin_f] / dt_f = 2 pi cos, d out[cos_f] / dt_f = -2 pi sin, dt_f / dx = a_f.
    F: tl.constexpr = C // 2
    TWO_PI: tl.constexpr = 6.283185307179586
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    freq = tl.arange(0, BLOCK_F)[None, :]
    freq_ok = freq < F
    freq_tile = freq + tl.zeros([BLOCK_T, 1], dtype=tl.int32)
    slope_x, slope_y, x_shift, y_shift = image_slopes(
        gauss_ptr, gauss_s0, gauss_s1, freq_tile, freq_ok, x_shift, y_shift, half_w, half_h,
        inv_half_w, inv_half_h)

    zero = tl.zeros([BLOCK_T, BLOCK_F], dtype=tl.float32)
    sin0, sin1, sin2, sin3, sin_pad = zero, zero, zero, zero, zero
    cos0, cos1, cos2, cos3, cos_pad = zero, zero, zero, zero, zero
    for block in range(pid, num_blocks, num_programs):
        row = block * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
        live = row < rows
        x, y, label, prompt, token = load_tokens(
            row, rows, tokens, num_points, pad, coords_ptr, coords_sb, coords_sn, coords_sd,
            labels_ptr, labels_sb, labels_sn, boxes_ptr, boxes_sb, boxes_sk, boxes_sd)
        is_pad, in_table, table_row = label_rows(label)
        grad_at = grad_ptr + prompt.to(tl.int64) * grad_sb + token.to(tl.int64) * grad_st + freq
        grad_ok = live & freq_ok
        grad_sin = tl.load(grad_at, mask=grad_ok, other=0.0).to(tl.float32)
        grad_cos = tl.load(grad_at + F, mask=grad_ok, other=0.0).to(tl.float32)

        # Table rows and not_a_point: sums of grad rows per label class (fixed order).
        sin0 = _class_sum(sin0, in_table & (table_row == 0), grad_sin)
        cos0 = _class_sum(cos0, in_table & (table_row == 0), grad_cos)
        sin1 = _class_sum(sin1, in_table & (table_row == 1), grad_sin)
        cos1 = _class_sum(cos1, in_table & (table_row == 1), grad_cos)
        sin2 = _class_sum(sin2, in_table & (table_row == 2), grad_sin)
        cos2 = _class_sum(cos2, in_table & (table_row == 2), grad_cos)
        sin3 = _class_sum(sin3, in_table & (table_row == 3), grad_sin)
        cos3 = _class_sum(cos3, in_table & (table_row == 3), grad_cos)
        sin_pad = _class_sum(sin_pad, is_pad & live, grad_sin)
        cos_pad = _class_sum(cos_pad, is_pad & live, grad_cos)

        # Coordinates (sin and cos recomputed as in the forward; padding rows contribute 0).
        xc = tl.where(is_pad, 0.0, x + x_shift)
        yc = tl.where(is_pad, 0.0, y + y_shift)
        r, flip = reduce_half_turns(tl.fma(xc, slope_x, yc * slope_y))
        r2 = r * r
        sin_t = xor_sign(r, flip) * sin_over_r(r2)
        cos_t = xor_sign(cos_poly(r2, 1.0), flip)
        grad_turns = tl.where(freq_ok, tl.fma(grad_sin, cos_t, -(grad_cos * sin_t)), 0.0)
        grad_x = tl.where(is_pad, 0.0, TWO_PI * tl.sum(grad_turns * slope_x, axis=1)[:, None])
        grad_y = tl.where(is_pad, 0.0, TWO_PI * tl.sum(grad_turns * slope_y, axis=1)[:, None])

        is_point = live & (token < num_points)
        corner_id = token - num_points - pad
        is_corner = live & (corner_id >= 0)
        point_at = (prompt.to(tl.int64) * num_points + token) * 2
        tl.store(grad_coords_ptr + point_at, grad_x, mask=is_point)
        tl.store(grad_coords_ptr + point_at + 1, grad_y, mask=is_point)
        corner_at = (prompt.to(tl.int64) * num_boxes + (corner_id >> 1)) * 4 + 2 * (corner_id & 1)
        tl.store(grad_boxes_ptr + corner_at, grad_x, mask=is_corner)
        tl.store(grad_boxes_ptr + corner_at + 1, grad_y, mask=is_corner)

    part = tl.arange(0, BLOCK_F)
    ok = part < F
    table_at = table_part_ptr + pid.to(tl.int64) * (4 * C) + part
    tl.store(table_at + 0 * C, tl.sum(sin0, axis=0), mask=ok)
    tl.store(table_at + 0 * C + F, tl.sum(cos0, axis=0), mask=ok)
    tl.store(table_at + 1 * C, tl.sum(sin1, axis=0), mask=ok)
    tl.store(table_at + 1 * C + F, tl.sum(cos1, axis=0), mask=ok)
    tl.store(table_at + 2 * C, tl.sum(sin2, axis=0), mask=ok)
    tl.store(table_at + 2 * C + F, tl.sum(cos2, axis=0), mask=ok)
    tl.store(table_at + 3 * C, tl.sum(sin3, axis=0), mask=ok)
    tl.store(table_at + 3 * C + F, tl.sum(cos3, axis=0), mask=ok)
    nap_at = nap_part_ptr + pid.to(tl.int64) * C + part
    tl.store(nap_at, tl.sum(sin_pad, axis=0), mask=ok)
    tl.store(nap_at + F, tl.sum(cos_pad, axis=0), mask=ok)


@triton.jit(do_not_specialize=["num_partials"])
def _sum_partials_kernel(
    table_part_ptr, nap_part_ptr,  # [P, 4 * C] and [P, C] fp32 contiguous
    table_out_ptr, nap_out_ptr,  # [4 * C] and [C] fp32
    num_partials, C: tl.constexpr, BLOCK: tl.constexpr,
):
    # A fixed-order (sequential in p) sum: the table gradients are bitwise reproducible.
    col = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_table = col < 4 * C
    in_nap = (col >= 4 * C) & (col < 5 * C)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(num_partials):
        acc += tl.load(table_part_ptr + p * (4 * C) + col, mask=in_table, other=0.0)
        acc += tl.load(nap_part_ptr + p * C + (col - 4 * C), mask=in_nap, other=0.0)
    tl.store(table_out_ptr + col, acc, mask=in_table)
    tl.store(nap_out_ptr + (col - 4 * C), acc, mask=in_nap)


# ----------------------------------------------------------------------------- launch helpers
_OUT_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_MAX_ROWS = 2**31 - 2**20  # token rows are int32 inside the kernels (offsets are int64)
NUM_WARPS = 4
REPS = 4  # token blocks per program: amortises the per-program Gaussian loads and slopes


def interpreting(kernel) -> bool:
    """True when TRITON_INTERPRET=1 turned ``kernel`` into an interpreted function."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def launch(kernel, grid, *args, **kwargs):
    """Every launch goes through ``wrap_triton``: make_fx / torch.compile see the kernel."""
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def tile_config(embed_dim: int, out_bytes: int, num_warps: int = NUM_WARPS):
    """(SPAN, CHUNKS, BLOCK_T) for a [CHUNKS, BLOCK_T, SPAN] tile keyed on C and the output width.

    Each thread owns 16 frequencies of a token (fewer if C < 32) as CHUNKS vectors of 16 bytes of
    output: enough outputs to amortise the per-token index math and loads, few enough registers."""
    pow2 = triton.next_power_of_2(embed_dim // 2)
    freqs_per_thread = min(16, pow2)
    vec = min(16 // out_bytes, freqs_per_thread)
    chunks = freqs_per_thread // vec
    span = pow2 // chunks
    threads_f = span // vec
    block_t = max(1, 32 * num_warps // threads_f)
    return span, chunks, block_t


def _row_aligned(t: torch.Tensor, rows_stride_too: bool) -> bool:
    """A [R, C] row table whose rows start 16-byte aligned, judged from strides and the storage
    offset (allocations are aligned; this also works on the fake tensors of make_fx)."""
    size = t.element_size()
    ok = t.stride(1) == 1 and (t.storage_offset() * size) % 16 == 0
    return ok and (not rows_stride_too or (t.stride(0) * size) % 16 == 0)


def _check_tensor(name, t, dims, floating_only=False):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(dims) or any(d is not None and s != d for s, d in zip(t.shape, dims)):
        want = "[" + ", ".join("*" if d is None else str(d) for d in dims) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")
    if t.dtype == torch.bool or t.is_complex() or (floating_only and not t.is_floating_point()):
        kind = "a floating" if floating_only else "a real (int or float)"
        raise TypeError(f"{name} must have {kind} dtype, got {t.dtype}")


def _check_image(image_h, image_w):
    for name, v in (("image_h", image_h), ("image_w", image_w)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def image_constants(image_h: int, image_w: int):
    """Python floats (x_shift, y_shift, half_w, half_h, inv_half_w, inv_half_h): xc = x + x_shift
    centres pixel coordinates, slope = G * inv_half (corrected to G / half in the kernels)."""
    return (0.5 - image_w / 2.0, 0.5 - image_h / 2.0, image_w / 2.0, image_h / 2.0,
            2.0 / image_w, 2.0 / image_h)


def _check_sparse_inputs(point_coords, point_labels, boxes, pad, gaussian, image_h, image_w):
    _check_tensor("gaussian", gaussian, (2, None), floating_only=True)
    freqs = gaussian.shape[1]
    if freqs < 1:
        raise ValueError(f"gaussian must be [2, F] with F >= 1, got {list(gaussian.shape)}")
    _check_tensor("point_coords", point_coords, (None, None, 2))
    batch, num_points = point_coords.shape[:2]
    _check_tensor("point_labels", point_labels, (batch, num_points))
    _check_tensor("boxes", boxes, (batch, None, 4))
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be a bool, got {type(pad).__name__}")
    _check_image(image_h, image_w)
    devices = {t.device for t in (point_coords, point_labels, boxes, gaussian)}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    tokens = num_points + int(pad) + 2 * boxes.shape[1]
    if batch * tokens >= _MAX_ROWS:
        raise ValueError(f"B * T = {batch} * {tokens} token rows exceeds the kernels' limit "
                         f"{_MAX_ROWS}")
    return batch, num_points, boxes.shape[1], tokens, freqs


def sparse_embed_fwd(
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
    """Sparse prompt embedding in one launch.

    point_coords: [B, N, 2], point_labels: [B, N], boxes: [B, K, 4] (x0, y0, x1, y1), any real
    dtypes and strides; gaussian: [2, F]; point_table: [4, C]; not_a_point: [1, C] (C = 2F)
    -> [B, N + pad + 2K, C] in out_dtype (fp32, bf16 or fp16), computed in fp32, rounded once.
    """
    batch, num_points, _, tokens, freqs = _check_sparse_inputs(
        point_coords, point_labels, boxes, pad, gaussian, image_h, image_w)
    channels = 2 * freqs
    _check_tensor("point_table", point_table, (4, channels), floating_only=True)
    _check_tensor("not_a_point", not_a_point, (1, channels), floating_only=True)
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {list(_OUT_DTYPES)}, got {out_dtype}")
    if point_table.device != gaussian.device or not_a_point.device != gaussian.device:
        raise ValueError("point_table and not_a_point must be on the gaussian's device "
                         f"{gaussian.device}, got {point_table.device} and {not_a_point.device}")
    # The row gather reads the table and not_a_point through one pointer: same dtype, unit column
    # stride (tiny [<=5, C] copies only when a caller passes something unusual).
    if not_a_point.dtype != point_table.dtype:
        not_a_point = not_a_point.to(point_table.dtype)
    if point_table.stride(1) != 1:
        point_table = point_table.contiguous()
    if not_a_point.stride(1) != 1:
        not_a_point = not_a_point.contiguous()

    out = torch.empty(batch, tokens, channels, device=gaussian.device, dtype=out_dtype)
    rows = batch * tokens
    if rows == 0:
        return out
    span, chunks, block_t = tile_config(channels, out.element_size())
    grid = (triton.cdiv(rows, block_t * REPS),)
    launch(
        _sparse_embed_fwd_kernel, grid,
        out, point_coords, *point_coords.stride(), point_labels, *point_labels.stride(),
        boxes, *boxes.stride(), gaussian, *gaussian.stride(), point_table, point_table.stride(0),
        not_a_point, rows, tokens, num_points, int(pad), *image_constants(image_h, image_w),
        C=channels, SPAN=span, CHUNKS=chunks, BLOCK_T=block_t, REPS=REPS,
        ROWS_ALIGNED=_row_aligned(point_table, True) and _row_aligned(not_a_point, False),
        OUT_DTYPE=_OUT_DTYPES[out_dtype], INTERPRET=interpreting(_sparse_embed_fwd_kernel),
        num_warps=NUM_WARPS,
    )
    return out


BWD_BLOCK_T = 8
BWD_BLOCKS_PER_PROGRAM = 8  # up to 64 tokens: one program, no second (summing) launch
BWD_MAX_PROGRAMS = 256  # fixes the partition of token blocks over programs, hence the sum order
SUM_BLOCK = 256


def sparse_embed_bwd(
    grad_out: torch.Tensor,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    boxes: torch.Tensor,
    pad: bool,
    gaussian: torch.Tensor,
    image_h: int,
    image_w: int,
):
    """Gradients of :func:`sparse_embed_fwd` (sin and cos recomputed), bitwise deterministic.

    grad_out: [B, T, C] (any float dtype and strides) -> (grad_point_coords [B, N, 2],
    grad_boxes [B, K, 4], grad_point_table [4, C], grad_not_a_point [1, C]), all fp32.
    Labels -1 (padding included) get zero coordinate gradients, even for NaN coordinates. The
    table rows are summed per program in a fixed partition of the tokens, then (more than one
    program) over programs in order by a second small kernel: no atomics.
    """
    batch, num_points, num_boxes, tokens, freqs = _check_sparse_inputs(
        point_coords, point_labels, boxes, pad, gaussian, image_h, image_w)
    channels = 2 * freqs
    _check_tensor("grad_out", grad_out, (batch, tokens, channels), floating_only=True)
    if grad_out.device != gaussian.device:
        raise ValueError(f"grad_out must be on {gaussian.device}, got {grad_out.device}")
    if grad_out.stride(2) != 1:
        grad_out = grad_out.contiguous()
    device = gaussian.device
    grad_coords = torch.empty(batch, num_points, 2, device=device, dtype=torch.float32)
    grad_boxes = torch.empty(batch, num_boxes, 4, device=device, dtype=torch.float32)
    rows = batch * tokens
    if rows == 0:
        return (grad_coords, grad_boxes, torch.zeros(4, channels, device=device),
                torch.zeros(1, channels, device=device))
    grad_table = torch.empty(4, channels, device=device, dtype=torch.float32)
    grad_nap = torch.empty(1, channels, device=device, dtype=torch.float32)
    num_blocks = triton.cdiv(rows, BWD_BLOCK_T)
    num_programs = min(triton.cdiv(num_blocks, BWD_BLOCKS_PER_PROGRAM), BWD_MAX_PROGRAMS)
    if num_programs == 1:
        table_part, nap_part = grad_table, grad_nap
    else:
        table_part = torch.empty(num_programs, 4, channels, device=device, dtype=torch.float32)
        nap_part = torch.empty(num_programs, 1, channels, device=device, dtype=torch.float32)
    launch(
        _sparse_embed_bwd_kernel, (num_programs,),
        grad_out, grad_out.stride(0), grad_out.stride(1),
        point_coords, *point_coords.stride(), point_labels, *point_labels.stride(),
        boxes, *boxes.stride(), gaussian, *gaussian.stride(), grad_coords, grad_boxes,
        table_part, nap_part, rows, tokens, num_points, num_boxes, int(pad), num_blocks,
        *image_constants(image_h, image_w),
        C=channels, BLOCK_F=triton.next_power_of_2(freqs), BLOCK_T=BWD_BLOCK_T, num_warps=NUM_WARPS,
    )
    if num_programs > 1:
        launch(_sum_partials_kernel, (triton.cdiv(5 * channels, SUM_BLOCK),), table_part, nap_part,
               grad_table, grad_nap, num_programs, C=channels, BLOCK=SUM_BLOCK,
               num_warps=NUM_WARPS)
    return grad_coords, grad_boxes, grad_table, grad_nap
