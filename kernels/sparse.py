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
code; each thread owns 8 to 24 frequencies of one token (see tile_config) as 16-byte vectors of
its sin and cos halves, so that the per-token index math, coordinate and label loads and the row
gather are amortised over 16 to 48 outputs, with no layout conversions (tiles of words have their
own layout: Triton recomputes the few per-token values they need rather than converting).
Tokens are split into (prompt, token) by a multiply-high with a magic number (divisor_magic),
offsets are int32 unless an input or the output can reach 2^31 elements (WIDE), integer labels
are compared as integers, and bf16 table rows are read as 32-bit words, widened by one integer op
per value with the row's keep-or-drop mask folded in (no masked loads).
"""

import functools
import operator
from typing import Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from . import lean_launch
from .sincos import cos_poly, reduce_half_turns, round_to, sin_over_r, xor_sign


@triton.jit
def centred_slope(gauss, half_extent, inv_half_extent):
    """gauss [BLOCK_F] fp32 -> 2 G / extent correctly rounded: the fp32 product G * fl(2 / extent)
    is off by up to an ulp; its exact residual G - slope * extent / 2 (an fma) corrects it."""
    slope = gauss * inv_half_extent
    residual = tl.fma(-slope, half_extent, gauss)
    return tl.fma(residual, inv_half_extent, slope)


@triton.jit
def chunk_freqs(FIRST: tl.constexpr, CHUNKS: tl.constexpr, SPAN: tl.constexpr):
    """[CHUNKS, 1, SPAN] int32: frequency (FIRST + chunk) * SPAN + lane of each tile element."""
    chunk = FIRST + tl.arange(0, CHUNKS)
    return (chunk * SPAN)[:, None, None] + tl.arange(0, SPAN)[None, None, :]


@triton.jit
def load_fp32(base, lo_keep, hi_keep, ok, FIRST: tl.constexpr, CHUNKS: tl.constexpr,
              SPAN: tl.constexpr, BLOCK_T: tl.constexpr, WORDS: tl.constexpr,
              MASKED: tl.constexpr):
    """Row values at base + frequency (the tile of chunk_freqs) -> fp32 [CHUNKS, BLOCK_T, SPAN],
    zero where the row is dropped. base: a pointer or [1, BLOCK_T, 1] pointers.

    WORDS (bf16 rows, 4-byte aligned, pairs (2k, 2k + 1) in one thread): each 32-bit word holds two
    neighbours, widened by one integer op each: lo = w * lo_keep, hi = w & hi_keep, where
    (lo_keep, hi_keep) = (0x10000, 0xFFFF0000) keeps the row and (0, 0) drops it, so the load needs
    no mask (base always points at a real row). Otherwise a masked load (``ok``) and a convert.
    MASKED: the tile runs past the row (frequencies >= F are masked off by ``ok``)."""
    if WORDS:
        word = chunk_freqs(FIRST, CHUNKS, SPAN // 2) + tl.zeros([1, BLOCK_T, 1], dtype=tl.int32)
        words = base.to(tl.pointer_type(tl.uint32), bitcast=True) + word
        if MASKED:
            w = tl.load(words, mask=ok, other=0)
        else:
            w = tl.load(words)
        lo = (w * lo_keep).to(tl.float32, bitcast=True)
        hi = (w & hi_keep).to(tl.float32, bitcast=True)
        return tl.join(lo, hi).reshape([CHUNKS, BLOCK_T, SPAN])
    else:
        freq = chunk_freqs(FIRST, CHUNKS, SPAN) + tl.zeros([1, BLOCK_T, 1], dtype=tl.int32)
        return tl.load(base + freq, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def chunk_slopes(gauss_ptr, gauss_s0, gauss_s1, F: tl.constexpr, FIRST: tl.constexpr,
                 CHUNKS: tl.constexpr, SPAN: tl.constexpr, BLOCK_T: tl.constexpr,
                 WORDS: tl.constexpr, MASKED: tl.constexpr, half_w, half_h, inv_half_w,
                 inv_half_h):
    """Per-frequency slopes 2 G / extent (correctly rounded) of chunks FIRST.., in the full
    [CHUNKS, BLOCK_T, SPAN] tile: loads (and everything downstream) take the stores' layout."""
    if WORDS:  # unit column stride, both rows 4-byte aligned (checked by the launcher)
        ok = chunk_freqs(FIRST, CHUNKS, SPAN // 2) < F // 2
        lo_keep = tl.full([1, 1, 1], 0x10000, tl.uint32)
        g0 = load_fp32(gauss_ptr, lo_keep, 0 - lo_keep, ok, FIRST, CHUNKS, SPAN, BLOCK_T, WORDS,
                       MASKED)
        g1 = load_fp32(gauss_ptr + gauss_s0, lo_keep, 0 - lo_keep, ok, FIRST, CHUNKS, SPAN,
                       BLOCK_T, WORDS, MASKED)
    else:
        freq = chunk_freqs(FIRST, CHUNKS, SPAN) + tl.zeros([1, BLOCK_T, 1], dtype=tl.int32)
        if MASKED:
            g0 = tl.load(gauss_ptr + freq * gauss_s1, mask=freq < F, other=0.0)
            g1 = tl.load(gauss_ptr + gauss_s0 + freq * gauss_s1, mask=freq < F, other=0.0)
        else:
            g0 = tl.load(gauss_ptr + freq * gauss_s1)
            g1 = tl.load(gauss_ptr + gauss_s0 + freq * gauss_s1)
        g0 = g0.to(tl.float32)
        g1 = g1.to(tl.float32)
    slope_x = centred_slope(g0, tl.cast(half_w, tl.float32), tl.cast(inv_half_w, tl.float32))
    slope_y = centred_slope(g1, tl.cast(half_h, tl.float32), tl.cast(inv_half_h, tl.float32))
    return slope_x, slope_y


@triton.jit
def split_rows(row, tokens, tokens_magic, tokens_shift, FAST_DIV: tl.constexpr,
               WIDE: tl.constexpr):
    """row: int32 token rows (< 2^31) -> (prompt, token) = divmod(row, T), int64 if WIDE else
    int32. FAST_DIV: a multiply-high by the launcher's magic number (divisor_magic), else a
    division (T symbolic when traced with dynamic shapes)."""
    if FAST_DIV:
        twice = (row * 2).to(tl.uint32, bitcast=True)  # row < 2^31: exact
        prompt = (tl.umulhi(twice, tokens_magic.to(tl.uint32, bitcast=True))
                  >> tokens_shift.to(tl.uint32))
        prompt = prompt.to(tl.int32, bitcast=True)
    else:
        prompt = row // tokens
    token = row - prompt * tokens
    if WIDE:
        return prompt.to(tl.int64), token.to(tl.int64)
    else:
        return prompt, token


@triton.jit
def load_tokens(
    row, rows, tokens, tokens_magic, tokens_shift, num_points, pad,
    coords_ptr, coords_sb, coords_sn, coords_sd, labels_ptr, labels_sb, labels_sn,
    boxes_ptr, boxes_sb, boxes_sk, boxes_sd, FAST_DIV: tl.constexpr, WIDE: tl.constexpr,
):
    """Token rows (int32, any shape) -> (x, y) in fp32, (is_pad, in_table, table_row), (prompt,
    token) and (is_point, is_corner, corner_id).

    Row b * T + t is point t < N, the padding token t == N if pad, then box corners: corner_id
    = t - N - pad, box corner_id // 2, (x0, y0) if corner_id is even else (x1, y1), label 2 or 3.
    Rows past the end read nothing and come out as padding (label -1). table_row is in 0..3 for
    every token (the row of labels 0..3 and corners, else 0), so a row gather never leaves the
    table."""
    live = row < rows
    prompt, token = split_rows(row, tokens, tokens_magic, tokens_shift, FAST_DIV, WIDE)
    is_point = live & (token < num_points)
    corner_id = token - num_points - pad  # >= 0 for box corners
    is_corner = live & (corner_id >= 0)
    corner = (corner_id & 1).to(tl.int32)

    # Each offset is summed in its own width, then widened once: one wide multiply-add per address
    point_at = (prompt * coords_sb + token * coords_sn).to(tl.int64)
    px = tl.load(coords_ptr + point_at, mask=is_point, other=0).to(tl.float32)
    py = tl.load(coords_ptr + point_at + coords_sd, mask=is_point, other=0).to(tl.float32)
    corner_at = (prompt * boxes_sb + (corner_id >> 1) * boxes_sk
                 + (2 * corner) * boxes_sd).to(tl.int64)
    bx = tl.load(boxes_ptr + corner_at, mask=is_corner, other=0).to(tl.float32)
    by = tl.load(boxes_ptr + corner_at + boxes_sd, mask=is_corner, other=0).to(tl.float32)
    x = tl.where(is_point, px, bx)
    y = tl.where(is_point, py, by)

    label_at = (prompt * labels_sb + token * labels_sn).to(tl.int64)
    label = tl.load(labels_ptr + label_at, mask=is_point, other=0)
    if label.dtype.is_floating():
        # -1 is padding, 0..3 index the point table (2.0 counts as 2), anything else (4, -2, 0.5,
        # NaN) has no row. min / max drop NaN, so the int conversion never sees NaN.
        label = label.to(tl.float32)
        point_row = tl.minimum(tl.maximum(label, 0.0), 3.0).to(tl.int32)
        point_in_table = point_row.to(tl.float32) == label
        point_pad = label == -1.0
    else:  # integers: compared exactly, in 64 bits for 64-bit labels
        if label.dtype.primitive_bitwidth == 64:
            label = label.to(tl.int64, bitcast=True)
            point_in_table = label.to(tl.uint64, bitcast=True) < 4
        else:
            label = label.to(tl.int32)
            point_in_table = label.to(tl.uint32, bitcast=True) < 4
        point_row = label.to(tl.int32) & 3
        point_pad = label == -1
    is_pad = tl.where(is_point, point_pad, ~is_corner)
    in_table = tl.where(is_point, point_in_table, is_corner)
    table_row = tl.where(is_point, point_row, 2 + corner)
    return x, y, is_pad, in_table, table_row, prompt, token, is_point, is_corner, corner_id


@triton.jit
def encode_chunks(out_row, row_ptr, lo_keep, hi_keep, row_ok, live, xc, yc, cos_at_zero,
                  slope_x, slope_y, F: tl.constexpr, FIRST: tl.constexpr, CHUNKS: tl.constexpr,
                  SPAN: tl.constexpr, BLOCK_T: tl.constexpr, WORDS: tl.constexpr,
                  MASKED: tl.constexpr, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """One token block's outputs at chunks FIRST .. FIRST + CHUNKS - 1: [sin | cos](2 pi t) + row,
    written at out_row + frequency (sin half) and + F (cos half)."""
    freq = chunk_freqs(FIRST, CHUNKS, SPAN)
    freq_ok = freq < F
    if WORDS:
        word_ok = chunk_freqs(FIRST, CHUNKS, SPAN // 2) < F // 2
        row_sin = load_fp32(row_ptr, lo_keep, hi_keep, word_ok, FIRST, CHUNKS, SPAN, BLOCK_T,
                            WORDS, MASKED)
        row_cos = load_fp32(row_ptr + F, lo_keep, hi_keep, word_ok, FIRST, CHUNKS, SPAN,
                            BLOCK_T, WORDS, MASKED)
    else:
        ok = row_ok & freq_ok if MASKED else row_ok
        row_sin = load_fp32(row_ptr, lo_keep, hi_keep, ok, FIRST, CHUNKS, SPAN, BLOCK_T, WORDS,
                            MASKED)
        row_cos = load_fp32(row_ptr + F, lo_keep, hi_keep, ok, FIRST, CHUNKS, SPAN, BLOCK_T,
                            WORDS, MASKED)
    r, flip = reduce_half_turns(tl.fma(xc, slope_x, yc * slope_y))
    r2 = r * r
    out_sin = tl.fma(xor_sign(r, flip), sin_over_r(r2), row_sin)
    out_cos = xor_sign(cos_poly(r2, cos_at_zero), flip) + row_cos
    out_ok = live & freq_ok if MASKED else live
    tl.store(out_row + freq, round_to(out_sin, OUT_DTYPE, INTERPRET), mask=out_ok)
    tl.store(out_row + F + freq, round_to(out_cos, OUT_DTYPE, INTERPRET), mask=out_ok)


@triton.jit(do_not_specialize=[
    "coords_sb", "coords_sn", "coords_sd", "labels_sb", "labels_sn", "boxes_sb", "boxes_sk",
    "boxes_sd", "row1_at", "row2_at", "row3_at", "rows", "tokens", "tokens_magic",
    "tokens_shift", "num_points", "pad",
], do_not_specialize_on_alignment=["coords_ptr", "labels_ptr", "boxes_ptr"])
def _sparse_embed_fwd_kernel(
    out_ptr,  # [B * T, C] contiguous, OUT_DTYPE
    coords_ptr, coords_sb, coords_sn, coords_sd,  # point_coords [B, N, 2], any dtype and strides
    labels_ptr, labels_sb, labels_sn,  # point_labels [B, N]
    boxes_ptr, boxes_sb, boxes_sk, boxes_sd,  # boxes [B, K, 4]
    gauss_ptr, gauss_s0, gauss_s1,  # gaussian [2, F]
    table_ptr, row1_at, row2_at, row3_at,  # point_table rows: row k at table_ptr + row<k>_at
    nap_ptr,  # not_a_point [1, C]; rows with unit column stride, all of one dtype
    rows, tokens, tokens_magic, tokens_shift, num_points, pad,  # rows = B * T, T = N + pad + 2 K
    x_shift, y_shift, half_w, half_h, inv_half_w, inv_half_h,  # fp32 image constants
    C: tl.constexpr, SPAN: tl.constexpr, CHUNKS: tl.constexpr, CHUNKS_B: tl.constexpr,
    BLOCK_T: tl.constexpr, REPS: tl.constexpr, ALIGNED: tl.constexpr, FAST_DIV: tl.constexpr,
    WIDE: tl.constexpr,
    OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
):
    # Tiles are [CHUNKS, BLOCK_T, SPAN] (then [CHUNKS_B, BLOCK_T, SPAN] if CHUNKS_B > 0: chunk
    # counts such as 3 = 2 + 1 stay powers of two): frequency f = chunk * SPAN + lane_f. Threads
    # spread over (token, lane_f) only, so every thread owns all chunks of its token: the
    # per-token work (index math, loads, label logic) is amortised over all its outputs.
    F: tl.constexpr = C // 2
    MASKED: tl.constexpr = (CHUNKS + CHUNKS_B) * SPAN != F
    # bf16 rows as 32-bit words: 4-byte aligned rows (ALIGNED) and even frequency pairs
    WORDS: tl.constexpr = (ALIGNED and table_ptr.dtype.element_ty == tl.bfloat16
                           and (F % 2 == 0) and (SPAN % 2 == 0))
    GAUSS_WORDS: tl.constexpr = (ALIGNED and gauss_ptr.dtype.element_ty == tl.bfloat16
                                 and (F % 2 == 0) and (SPAN % 2 == 0))
    pid = tl.program_id(0)
    slope_x, slope_y = chunk_slopes(gauss_ptr, gauss_s0, gauss_s1, F, 0, CHUNKS, SPAN, BLOCK_T,
                                    GAUSS_WORDS, MASKED, half_w, half_h, inv_half_w, inv_half_h)
    if CHUNKS_B > 0:
        slope_xb, slope_yb = chunk_slopes(gauss_ptr, gauss_s0, gauss_s1, F, CHUNKS, CHUNKS_B,
                                          SPAN, BLOCK_T, GAUSS_WORDS, MASKED, half_w, half_h,
                                          inv_half_w, inv_half_h)
    x_shift = tl.cast(x_shift, tl.float32)
    y_shift = tl.cast(y_shift, tl.float32)

    first_row = pid * (REPS * BLOCK_T) + tl.arange(0, BLOCK_T)[None, :, None]  # int32
    if WIDE:
        out_rows = out_ptr + first_row.to(tl.int64) * C
    else:
        out_rows = out_ptr + (first_row * C).to(tl.int64)
    for rep in tl.static_range(REPS):
        row = first_row + rep * BLOCK_T
        live = row < rows
        x, y, is_pad, in_table, table_row, _, _, _, _, _ = load_tokens(
            row, rows, tokens, tokens_magic, tokens_shift, num_points, pad, coords_ptr,
            coords_sb, coords_sn, coords_sd, labels_ptr, labels_sb, labels_sn, boxes_ptr,
            boxes_sb, boxes_sk, boxes_sd, FAST_DIV, WIDE)
        # Label -1 (padding included): the positional part must vanish exactly, even for NaN
        # coordinates. Centred coordinates (0, 0) give t = 0, r = 0, so the sin part r * P is +0;
        # the cos polynomial's constant term is 0 instead of 1 there.
        xc = tl.where(is_pad, 0.0, x + x_shift)
        yc = tl.where(is_pad, 0.0, y + y_shift)
        cos_at_zero = tl.where(is_pad, 0.0, 1.0)
        row_at = tl.where(table_row == 1, row1_at, 0)
        row_at = tl.where(table_row == 2, row2_at, row_at)
        row_at = tl.where(table_row == 3, row3_at, row_at)
        row_ptr = tl.where(is_pad, nap_ptr, table_ptr + row_at)
        if ALIGNED:  # every row starts 16-byte aligned (checked by the launcher): vector loads
            row_ptr = tl.multiple_of(row_ptr, [16, 16, 16])
        row_ok = in_table | is_pad
        lo_keep = row_ok.to(tl.uint32) << 16  # 0x10000 keeps a bf16 word's low half, 0 drops it
        hi_keep = 0 - lo_keep  # 0xFFFF0000 or 0
        out_row = out_rows + rep * BLOCK_T * C  # a constant offset: immediates in the stores
        encode_chunks(out_row, row_ptr, lo_keep, hi_keep, row_ok, live, xc, yc, cos_at_zero,
                      slope_x, slope_y, F, 0, CHUNKS, SPAN, BLOCK_T, WORDS, MASKED, OUT_DTYPE,
                      INTERPRET)
        if CHUNKS_B > 0:
            encode_chunks(out_row, row_ptr, lo_keep, hi_keep, row_ok, live, xc, yc, cos_at_zero,
                          slope_xb, slope_yb, F, CHUNKS, CHUNKS_B, SPAN, BLOCK_T, WORDS, MASKED,
                          OUT_DTYPE, INTERPRET)


@triton.jit
def class_sums(sums, grad, is_class0, is_class1, is_class2, is_class3, is_pad):
    """Adds ``grad`` to the sum of its token's class (table rows 0..3, padding); selects, not
    0/1 weights, so an inf or NaN gradient stays in its own class."""
    sum0, sum1, sum2, sum3, sum_pad = sums
    return (tl.where(is_class0, sum0 + grad, sum0), tl.where(is_class1, sum1 + grad, sum1),
            tl.where(is_class2, sum2 + grad, sum2), tl.where(is_class3, sum3 + grad, sum3),
            tl.where(is_pad, sum_pad + grad, sum_pad))


@triton.jit
def grad_chunks(sin_sums, cos_sums, grad_row, live, xc, yc, is_class0, is_class1, is_class2,
                is_class3, is_pad, slope_x, slope_y, F: tl.constexpr, FIRST: tl.constexpr,
                CHUNKS: tl.constexpr, SPAN: tl.constexpr, MASKED: tl.constexpr):
    """One token block's gradient at chunks FIRST.. -> (class sums of the sin and cos halves,
    d loss / d x and d y of each token over these frequencies, [1, BLOCK_T, 1], without 2 pi)."""
    freq = chunk_freqs(FIRST, CHUNKS, SPAN)
    ok = live & (freq < F) if MASKED else live
    grad_sin = tl.load(grad_row + freq, mask=ok, other=0.0).to(tl.float32)
    grad_cos = tl.load(grad_row + F + freq, mask=ok, other=0.0).to(tl.float32)
    sin_sums = class_sums(sin_sums, grad_sin, is_class0, is_class1, is_class2, is_class3, is_pad)
    cos_sums = class_sums(cos_sums, grad_cos, is_class0, is_class1, is_class2, is_class3, is_pad)
    # d out[sin_f] / dt_f = 2 pi cos, d out[cos_f] / dt_f = -2 pi sin, dt_f / dx = slope_x
    r, flip = reduce_half_turns(tl.fma(xc, slope_x, yc * slope_y))
    r2 = r * r
    sin_t = xor_sign(r, flip) * sin_over_r(r2)
    cos_t = xor_sign(cos_poly(r2, 1.0), flip)
    grad_turns = tl.fma(grad_sin, cos_t, -(grad_cos * sin_t))
    grad_x = tl.sum(tl.sum(grad_turns * slope_x, axis=2, keep_dims=True), axis=0, keep_dims=True)
    grad_y = tl.sum(tl.sum(grad_turns * slope_y, axis=2, keep_dims=True), axis=0, keep_dims=True)
    return sin_sums, cos_sums, grad_x, grad_y


@triton.jit
def store_class_sums(table_at, nap_at, sin_sums, cos_sums, C: tl.constexpr, FIRST: tl.constexpr,
                     CHUNKS: tl.constexpr, SPAN: tl.constexpr):
    """A program's class sums (over its tokens) -> rows 0..3 of table_at [4, C], nap_at [1, C]."""
    F: tl.constexpr = C // 2
    freq = chunk_freqs(FIRST, CHUNKS, SPAN)
    ok = freq < F
    sums = (sin_sums, cos_sums)
    for half in tl.static_range(2):
        sum0, sum1, sum2, sum3, sum_pad = sums[half]
        at = freq + half * F
        tl.store(table_at + at, tl.sum(sum0, axis=1, keep_dims=True), mask=ok)
        tl.store(table_at + C + at, tl.sum(sum1, axis=1, keep_dims=True), mask=ok)
        tl.store(table_at + 2 * C + at, tl.sum(sum2, axis=1, keep_dims=True), mask=ok)
        tl.store(table_at + 3 * C + at, tl.sum(sum3, axis=1, keep_dims=True), mask=ok)
        tl.store(nap_at + at, tl.sum(sum_pad, axis=1, keep_dims=True), mask=ok)


@triton.jit(do_not_specialize=[
    "coords_sb", "coords_sn", "coords_sd", "labels_sb", "labels_sn", "boxes_sb", "boxes_sk",
    "boxes_sd", "rows", "tokens", "tokens_magic", "tokens_shift", "num_points", "num_boxes",
    "pad", "num_blocks",
], do_not_specialize_on_alignment=["coords_ptr", "labels_ptr", "boxes_ptr"])
def _sparse_embed_bwd_kernel(
    grad_ptr,  # grad_out [B * T, C] contiguous, any float dtype
    coords_ptr, coords_sb, coords_sn, coords_sd,  # point_coords [B, N, 2]
    labels_ptr, labels_sb, labels_sn,  # point_labels [B, N]
    boxes_ptr, boxes_sb, boxes_sk, boxes_sd,  # boxes [B, K, 4]
    gauss_ptr, gauss_s0, gauss_s1,  # gaussian [2, F]
    grad_coords_ptr,  # [B, N, 2] fp32 contiguous
    grad_boxes_ptr,  # [B, K, 4] fp32 contiguous
    table_part_ptr,  # [P, 4, C] fp32: per-program sums of grad rows with labels 0..3
    nap_part_ptr,  # [P, 1, C] fp32: per-program sums of grad rows with label -1
    rows, tokens, tokens_magic, tokens_shift, num_points, num_boxes, pad, num_blocks,
    x_shift, y_shift, half_w, half_h, inv_half_w, inv_half_h,
    C: tl.constexpr, SPAN: tl.constexpr, CHUNKS: tl.constexpr, CHUNKS_B: tl.constexpr,
    BLOCK_T: tl.constexpr, FAST_DIV: tl.constexpr, WIDE: tl.constexpr,
):
    # Tiles as in the forward kernel: [CHUNKS (+ CHUNKS_B), BLOCK_T, SPAN], a thread owns a few
    # frequencies of one token, so the per-token sums over frequencies stay within a warp.
    # Program p walks token blocks p, p + P, p + 2P, ... (a fixed partition: deterministic).
    F: tl.constexpr = C // 2
    MASKED: tl.constexpr = (CHUNKS + CHUNKS_B) * SPAN != F
    TWO_PI: tl.constexpr = 6.283185307179586
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    slope_x, slope_y = chunk_slopes(gauss_ptr, gauss_s0, gauss_s1, F, 0, CHUNKS, SPAN, BLOCK_T,
                                    False, MASKED, half_w, half_h, inv_half_w, inv_half_h)
    zero = tl.zeros([CHUNKS, BLOCK_T, SPAN], dtype=tl.float32)
    sin_sums = (zero, zero, zero, zero, zero)
    cos_sums = (zero, zero, zero, zero, zero)
    if CHUNKS_B > 0:
        slope_xb, slope_yb = chunk_slopes(gauss_ptr, gauss_s0, gauss_s1, F, CHUNKS, CHUNKS_B,
                                          SPAN, BLOCK_T, False, MASKED, half_w, half_h,
                                          inv_half_w, inv_half_h)
        zero_b = tl.zeros([CHUNKS_B, BLOCK_T, SPAN], dtype=tl.float32)
        sin_sums_b = (zero_b, zero_b, zero_b, zero_b, zero_b)
        cos_sums_b = (zero_b, zero_b, zero_b, zero_b, zero_b)
    x_shift = tl.cast(x_shift, tl.float32)
    y_shift = tl.cast(y_shift, tl.float32)

    for block in range(pid, num_blocks, num_programs):
        row = block * BLOCK_T + tl.arange(0, BLOCK_T)[None, :, None]
        live = row < rows
        x, y, is_pad, in_table, table_row, prompt, token, is_point, is_corner, corner_id = \
            load_tokens(row, rows, tokens, tokens_magic, tokens_shift, num_points, pad,
                        coords_ptr, coords_sb, coords_sn, coords_sd, labels_ptr, labels_sb,
                        labels_sn, boxes_ptr, boxes_sb, boxes_sk, boxes_sd, FAST_DIV, WIDE)
        is_class0 = in_table & (table_row == 0)
        is_class1 = in_table & (table_row == 1)
        is_class2 = in_table & (table_row == 2)
        is_class3 = in_table & (table_row == 3)
        is_pad_row = is_pad & live
        # padding rows (whose coordinates may be NaN) get no coordinate gradient: see below
        xc = tl.where(is_pad, 0.0, x + x_shift)
        yc = tl.where(is_pad, 0.0, y + y_shift)
        if WIDE:
            grad_row = grad_ptr + row.to(tl.int64) * C
        else:
            grad_row = grad_ptr + (row * C).to(tl.int64)
        sin_sums, cos_sums, grad_x, grad_y = grad_chunks(
            sin_sums, cos_sums, grad_row, live, xc, yc, is_class0, is_class1, is_class2,
            is_class3, is_pad_row, slope_x, slope_y, F, 0, CHUNKS, SPAN, MASKED)
        if CHUNKS_B > 0:
            sin_sums_b, cos_sums_b, grad_xb, grad_yb = grad_chunks(
                sin_sums_b, cos_sums_b, grad_row, live, xc, yc, is_class0, is_class1,
                is_class2, is_class3, is_pad_row, slope_xb, slope_yb, F, CHUNKS, CHUNKS_B, SPAN,
                MASKED)
            grad_x += grad_xb
            grad_y += grad_yb
        grad_x = tl.where(is_pad, 0.0, TWO_PI * grad_x)
        grad_y = tl.where(is_pad, 0.0, TWO_PI * grad_y)

        point_at = (prompt * num_points + token) * 2
        tl.store(grad_coords_ptr + point_at, grad_x, mask=is_point)
        tl.store(grad_coords_ptr + point_at + 1, grad_y, mask=is_point)
        corner_at = (prompt * num_boxes + (corner_id >> 1)) * 4 + 2 * (corner_id & 1)
        tl.store(grad_boxes_ptr + corner_at, grad_x, mask=is_corner)
        tl.store(grad_boxes_ptr + corner_at + 1, grad_y, mask=is_corner)

    table_at = table_part_ptr + pid.to(tl.int64) * (4 * C)
    nap_at = nap_part_ptr + pid.to(tl.int64) * C
    store_class_sums(table_at, nap_at, sin_sums, cos_sums, C, 0, CHUNKS, SPAN)
    if CHUNKS_B > 0:
        store_class_sums(table_at, nap_at, sin_sums_b, cos_sums_b, C, CHUNKS, CHUNKS_B, SPAN)


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
_OUT_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
_MAX_ROWS = 2**31 - 2**20  # token rows are int32 inside the kernels (offsets are int64)
NUM_WARPS = 4
REPS = 4  # token blocks per program: amortises the per-program Gaussian loads and slopes


def interpreting(kernel) -> bool:
    """True when TRITON_INTERPRET=1 turned ``kernel`` into an interpreted function."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def launch(kernel, grid, *args, **kwargs):
    """Launches that tracers must see go through ``wrap_triton``: make_fx / torch.compile see the
    kernel. (Plain eager calls from the op layer launch through ``lean_launch`` instead.)"""
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


MAX_FREQS_PER_THREAD = 24  # register budget: slopes and outputs of 24 frequencies per thread
# Cost model for tile_config, in SASS instructions per thread and token block (measured on sm_90):
# the per-token work (index math, loads, labels, row pointer) and the work per frequency.
TOKEN_COST = 64
FREQ_COST = 20


@functools.lru_cache(maxsize=256)  # a pure function of a few ints, on every launch's host path
def tile_config(embed_dim: int, out_bytes: int, num_warps: int = NUM_WARPS,
                max_freqs: int = MAX_FREQS_PER_THREAD):
    """(SPAN, CHUNKS, CHUNKS_B, BLOCK_T) for [CHUNKS (+ CHUNKS_B), BLOCK_T, SPAN] tiles.

    A token's F = C / 2 frequencies are split over ``SPAN / vec`` threads (a power of two), each
    owning CHUNKS + CHUNKS_B vectors of ``vec`` frequencies (16 bytes of output each); chunk
    counts that are not powers of two are split in two powers of two (3 = 2 + 1, 6 = 4 + 2).
    Among the splits with at most ``max_freqs`` frequencies per thread, the cheapest per
    token by the cost model: fewer threads per token amortise the per-token work over more
    outputs, and tiles that overshoot F (masked lanes) waste theirs."""
    freqs = embed_dim // 2
    threads = 32 * num_warps
    vec = min(16 // out_bytes, triton.next_power_of_2(freqs))
    best = None
    for threads_f in (1, 2, 4, 8, 16, 32):
        span = threads_f * vec
        chunks = triton.cdiv(freqs, span)
        chunks_a = 1 << (chunks.bit_length() - 1)
        chunks_b = triton.next_power_of_2(chunks - chunks_a) if chunks > chunks_a else 0
        per_thread = (chunks_a + chunks_b) * vec
        if per_thread > max_freqs and threads_f < 32:
            continue
        cost = threads_f * (TOKEN_COST + FREQ_COST * per_thread)
        if best is None or cost < best[0]:
            best = (cost, span, chunks_a, chunks_b, threads // threads_f)
    return best[1:]


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # real storage: no is_fake() on the hot path


def _aligned_rows(*tables: torch.Tensor) -> bool:
    """Every row of these [R, L] tensors starts 16-byte aligned, with unit column stride.

    Judged from data_ptr() (a storage base need not be aligned: from_blob, DLPack with a byte
    offset); fake tensors (make_fx, torch.compile) have no data, so there the storage offset
    decides, as Inductor assumes for its own kernels (it copies inputs found misaligned at run
    time)."""
    for t in tables:
        stride, size = t.stride(), t.element_size()
        if stride[1] != 1 or ((stride[0] * size) % 16 and t.shape[0] > 1):
            return False
        if type(t) in _PLAIN_TENSORS or not is_fake(t):
            start = t.data_ptr()
        else:
            start = t.storage_offset() * size
        if start % 16:
            return False
    return True


_INT32_MAX = 2**31 - 1


def _wide_offsets(out_numel: int, *tensors: torch.Tensor) -> bool:
    """Whether an element offset into the output or an input can reach 2^31 (then the kernels
    compute offsets in int64; int32 otherwise). An input's largest offset is sum((n - 1) s)."""
    if out_numel > _INT32_MAX:
        return True
    for t in tensors:
        stride = t.stride()
        if sum(map(operator.mul, t.shape, stride)) - sum(stride) > _INT32_MAX and t.numel():
            return True
    return False


def _row_split(tokens):
    """(tokens_magic, tokens_shift, FAST_DIV) of the kernels' row split by T; a symbolic T
    (tracing with dynamic shapes) is divided in the kernel instead."""
    if isinstance(tokens, int):
        return (*divisor_magic(tokens), True)
    return 0, 0, False


@functools.lru_cache(maxsize=256)  # a pure function of one int, on every launch's host path
def divisor_magic(divisor: int):
    """(magic, shift) with n // divisor == umulhi(2 n, magic) >> shift for 0 <= n < 2^31 and
    1 <= divisor < 2^31 (magic's 32 bits as a signed int, so that Triton passes it as i32).

    magic = ceil(2^(31 + s) / d) with s = ceil(log2 d): then 2^31 <= magic < 2^32 and the
    rounding error n (magic d - 2^(31+s)) / (d 2^(31+s)) < n / 2^(31+s) <= 2^-s <= 1/d never
    carries n / d past its next integer."""
    if isinstance(divisor, bool) or not isinstance(divisor, int) or not 1 <= divisor < 2**31:
        raise ValueError(f"divisor must be an int in [1, 2^31), got {divisor!r}")
    shift = (divisor - 1).bit_length()
    magic = -(-(1 << (31 + shift)) // divisor)
    return magic - 2**32 if magic >= 2**31 else magic, shift


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
    boxes: Optional[torch.Tensor],
    pad: bool,
    gaussian: torch.Tensor,
    point_table: torch.Tensor,
    not_a_point: torch.Tensor,
    image_h: int,
    image_w: int,
    out_dtype: torch.dtype,
    *,
    eager: bool = False,
) -> torch.Tensor:
    """Sparse prompt embedding in one launch.

    point_coords: [B, N, 2], point_labels: [B, N], boxes: [B, K, 4] (x0, y0, x1, y1), any real
    dtypes and strides; gaussian: [2, F]; point_table: [4, C]; not_a_point: [1, C] (C = 2F)
    -> [B, N + pad + 2K, C] in out_dtype (fp32, bf16 or fp16), computed in fp32, rounded once.

    ``eager`` (for the op layer, ``sam2_prompt.ops``): a plain eager call (``ops.route`` said
    EAGER: no tracing, no functorch transform). The launch goes through ``lean_launch`` (the
    cached binary, launched directly) rather than ``wrap_triton``, which only tracers need.
    Prompts validated by a module take :func:`launch_checked` instead, which checks only the
    weights and plans the launch.
    """
    if boxes is None:
        boxes = point_coords.new_empty((point_coords.shape[0], 0, 4))
    point_table, not_a_point = _checked_sparse_fwd_args(
        point_coords, point_labels, boxes, pad, gaussian, point_table, not_a_point,
        image_h, image_w, out_dtype)
    batch, num_points = point_labels.shape
    tokens = num_points + int(pad) + 2 * boxes.shape[1]
    channels = point_table.shape[1]
    out = torch.empty((batch, tokens, channels), device=gaussian.device, dtype=out_dtype)
    rows = batch * tokens
    if rows == 0:
        return out
    magic, shift, fast_div = _row_split(tokens)
    constexprs, tokens_per_program = _fwd_constexprs(
        int(channels), out_dtype, _aligned_rows(point_table, not_a_point, gaussian), fast_div,
        _wide_offsets(out.numel(), point_coords, point_labels, boxes))
    args = (out, point_coords, *point_coords.stride(), point_labels, *point_labels.stride(),
            boxes, *boxes.stride(), gaussian, *gaussian.stride(), point_table,
            *_row_offsets(point_table.stride(0)), not_a_point, rows, tokens, magic, shift,
            num_points, int(pad), *image_constants(image_h, image_w))
    grid = (-(-rows // tokens_per_program),)  # cdiv (triton.cdiv is slow in host code)
    if eager:
        lean_launch.launch(_sparse_embed_fwd_kernel, grid, *args, **constexprs,
                           num_warps=NUM_WARPS)
    else:
        launch(_sparse_embed_fwd_kernel, grid, *args, **constexprs, num_warps=NUM_WARPS)
    return out


def launch_checked(point_coords, point_labels, boxes, pad, gaussian, point_rows, not_a_point,
                   image_h, image_w, out_dtype) -> Optional[torch.Tensor]:
    """The planned eager launch for prompts the caller validated as the modules do (shapes, real
    dtypes, on not_a_point's device; boxes: [B, K, 4] or None for K = 0), each attribute read
    once -> the output, or None (nothing launched) unless the weights are as a module keeps
    them: point_rows, the point table as one [4, C] tensor or SAM-2's four [1, C] embedding
    rows (read where they are: no stacking copy), and not_a_point [1, C], all of one
    fp32/bf16/fp16 dtype with unit column stride, rows within 2^31 elements of row 0;
    gaussian [2, C / 2] in fp32/bf16/fp16; all on not_a_point's device; positive image sizes,
    1 to _MAX_ROWS - 1 token rows, an fp32/bf16/fp16 output.

    The launch is planned (``lean_launch.launch_planned``): the plan below names everything
    the binary depends on (see _FWD_PLAN_*)."""
    nap_shape, dtype, device = not_a_point.shape, not_a_point.dtype, not_a_point.device
    gauss_stride, gauss_dtype = gaussian.stride(), gaussian.dtype
    batch, num_points = point_labels.shape
    num_boxes = 0 if boxes is None else boxes.shape[1]
    tokens = num_points + (1 if pad else 0) + 2 * num_boxes
    rows = batch * tokens
    size, gauss_size = _OUT_BYTES.get(dtype), _OUT_BYTES.get(gauss_dtype)
    if len(nap_shape) != 2 or size is None or gauss_size is None:
        return None
    channels = nap_shape[1]
    if not (nap_shape[0] == 1 and channels > 0 and channels % 2 == 0 and 0 < rows < _MAX_ROWS
            and image_h > 0 and image_w > 0 and gaussian.shape == (2, channels // 2)
            and not_a_point.is_contiguous() and out_dtype in _OUT_BYTES
            and gaussian.device == device):
        return None
    # The point table as the kernel reads it: row 0, the element offsets of rows 1..3 from it,
    # and the OR of the rows' addresses (for ALIGNED). Either one [4, C] table or four [1, C]
    # rows, shaped, typed and placed as not_a_point, with unit column strides and offsets that
    # are whole elements within int32. (Inline: a helper costs every call a Python frame.)
    if len(point_rows) == 4:
        for row in point_rows:  # [1, C] and contiguous: unit column stride
            if (row.shape != nap_shape or not row.is_contiguous() or row.dtype is not dtype
                    or row.device != device):
                return None
        row0, row1, row2, row3 = point_rows
        table_at = row0.data_ptr()
        apart1, apart2, apart3 = (row1.data_ptr() - table_at, row2.data_ptr() - table_at,
                                  row3.data_ptr() - table_at)
        rows_at = apart1 | apart2 | apart3
        if rows_at % size:
            return None
        row_offsets = (apart1 // size, apart2 // size, apart3 // size)
        if not (-_INT32_MAX <= row_offsets[0] <= _INT32_MAX
                and -_INT32_MAX <= row_offsets[1] <= _INT32_MAX
                and -_INT32_MAX <= row_offsets[2] <= _INT32_MAX):
            return None
        rows_at |= table_at
    elif len(point_rows) == 1:
        row0 = point_rows[0]
        if row0.shape != (4, channels) or row0.dtype is not dtype or row0.device != device:
            return None
        step, unit = row0.stride()
        if unit != 1 or not -_INT32_MAX <= 3 * step <= _INT32_MAX:
            return None
        table_at = row0.data_ptr()
        row_offsets = _row_offsets(step)
        rows_at = table_at | (step * size)
    else:
        return None
    out = torch.empty(batch, tokens, channels, device=device, dtype=out_dtype)  # (ints: faster)
    # Strides and offsets as locals, the arguments as one flat tuple: no star-unpacking, which
    # costs every call a list build (this path is a click's host time).
    coords_stride, labels_stride = point_coords.stride(), point_labels.stride()
    cs0, cs1, cs2 = coords_stride
    ls0, ls1 = labels_stride
    gs0, gs1 = gauss_stride
    row1_at, row2_at, row3_at = row_offsets
    coords_dtype = point_coords.dtype
    if boxes is None:  # K = 0: the boxes pointer is never read; the coordinates stand in for it
        boxes_or_coords, boxes_dtype, bs0, bs1, bs2 = point_coords, coords_dtype, 0, 0, 0
    else:
        boxes_or_coords, boxes_dtype = boxes, boxes.dtype
        bs0, bs1, bs2 = boxes.stride()
    # Strides are >= 0: their OR is at least the widest and below twice it, and below 2^31
    # exactly when every stride is.
    strides_or = cs0 | cs1 | cs2 | ls0 | ls1 | bs0 | bs1 | bs2
    # _prompt_reach is at most (B + N + K + 3) times the widest stride: skip it when that fits
    wide = rows * channels > _INT32_MAX or (
        (batch + num_points + num_boxes + 3) * strides_or > _INT32_MAX
        and _prompt_reach(batch, num_points, num_boxes, coords_stride, labels_stride,
                          (bs0, bs1, bs2)) > _INT32_MAX)
    nap_at, gauss_at = not_a_point.data_ptr(), gaussian.data_ptr()
    # _aligned_rows's rule for every row and the Gaussian (the rows' unit column strides checked)
    aligned = gs1 == 1 and not ((rows_at | nap_at | gauss_at | gs0 * gauss_size) & 15)
    tokens_per_program, tail = _eager_tail(channels, out_dtype, aligned, wide, image_h, image_w)
    magic, shift = _eager_divisor_magic(tokens)
    plan = None
    if strides_or <= _INT32_MAX:
        plan = (channels, out_dtype, wide, aligned, out.data_ptr() & 15, coords_dtype,
                point_labels.dtype, boxes_dtype, gauss_dtype, gauss_stride, gauss_at & 15, dtype,
                table_at & 15, nap_at & 15)
    lean_launch.launch_planned(
        _sparse_embed_fwd_kernel, (-(-rows // tokens_per_program),), plan,
        (out, point_coords, cs0, cs1, cs2, point_labels, ls0, ls1, boxes_or_coords, bs0, bs1, bs2,
         gaussian, gs0, gs1, row0, row1_at, row2_at, row3_at, not_a_point, rows, tokens, magic,
         shift, num_points, 1 if pad else 0) + tail,
        _FWD_OPTIONS)
    return out


@functools.lru_cache(maxsize=256)  # ints and dtypes (never weights): computed once each
def _eager_tail(channels, out_dtype, aligned, wide, image_h, image_w):
    """(token rows per program, the forward kernel's last arguments: the image constants and
    the constexprs) of launch_checked's launch (FAST_DIV: its token counts are ints)."""
    constexprs, tokens_per_program = _fwd_constexprs(channels, out_dtype, aligned, True, wide)
    return tokens_per_program, (*image_constants(image_h, image_w), *constexprs.values())


# divisor_magic for the eager path's ints (traced calls may pass symbolic sizes: uncached)
_eager_divisor_magic = functools.lru_cache(maxsize=256)(divisor_magic)


def _row_offsets(stride: int):
    """The kernel's row1_at, row2_at, row3_at for a stacked table with this row stride."""
    return stride, 2 * stride, 3 * stride


def _prompt_reach(batch, num_points, num_boxes, coords_stride, labels_stride, box_stride) -> int:
    """The largest element offset into point_coords [B, N, 2], point_labels [B, N] and boxes
    [B, K, 4] of these strides: _wide_offsets's rule (sum((n - 1) s) over non-empty inputs) from
    sizes and strides already read. B >= 1."""
    reach = 0
    if num_points:
        reach = max((batch - 1) * coords_stride[0] + (num_points - 1) * coords_stride[1]
                    + coords_stride[2],
                    (batch - 1) * labels_stride[0] + (num_points - 1) * labels_stride[1])
    if num_boxes:
        reach = max(reach, (batch - 1) * box_stride[0] + (num_boxes - 1) * box_stride[1]
                    + 3 * box_stride[2])
    return reach


# The forward's launch plan (launch_checked): what Triton specialises each of the kernel's
# parameters on, given the launcher's checks and that every stride of the prompts fits int32:
# the output, Gaussian, table (row 0) and not_a_point pointers (dtype, address mod 16); the
# prompts' pointers (dtype only: not specialised on alignment); the Gaussian's strides (by
# value); the constexprs (channels, output dtype, ALIGNED, WIDE; FAST_DIV is True). Every other
# integer is never specialised and always int32 here (rows < 2^31; the prompts' strides and the
# row offsets, checked), every float fp32. _check_fwd_plan
# holds the kernel to this.
_FWD_OPTIONS = {"num_warps": NUM_WARPS}
_FWD_PLAN_UNSPECIALISED = {
    "coords_sb", "coords_sn", "coords_sd", "labels_sb", "labels_sn", "boxes_sb", "boxes_sk",
    "boxes_sd", "row1_at", "row2_at", "row3_at", "rows", "tokens", "tokens_magic",
    "tokens_shift", "num_points", "pad"}
_FWD_PLAN_ANY_ALIGNMENT = {"coords_ptr", "labels_ptr", "boxes_ptr"}


def _check_fwd_plan(kernel) -> None:
    """Raise unless the kernel specialises exactly as the forward's plan assumes."""
    names = [param.name for param in kernel.params]
    unspecialised = {param.name for param in kernel.params if param.do_not_specialize}
    any_alignment = {param.name for param in kernel.params
                     if param.do_not_specialize_on_alignment}
    if (unspecialised != _FWD_PLAN_UNSPECIALISED or any_alignment != _FWD_PLAN_ANY_ALIGNMENT
            or len(names) != 43 or names[32] != "C"):
        raise RuntimeError("_sparse_embed_fwd_kernel's parameters changed: update its launch "
                           "plan (launch_checked, _FWD_PLAN_*)")


if not interpreting(_sparse_embed_fwd_kernel):  # the interpreter never plans (nor launches lean)
    _check_fwd_plan(_sparse_embed_fwd_kernel)


def _checked_sparse_fwd_args(point_coords, point_labels, boxes, pad, gaussian, point_table,
                             not_a_point, image_h, image_w, out_dtype):
    """Every argument checked (clear errors) -> (point_table, not_a_point) as the kernel reads
    them: one dtype, unit column stride (tiny [<= 5, C] copies only for unusual callers)."""
    _, _, _, _, freqs = _check_sparse_inputs(
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
    # stride.
    if not_a_point.dtype != point_table.dtype:
        not_a_point = not_a_point.to(point_table.dtype)
    if point_table.stride(1) != 1:
        point_table = point_table.contiguous()
    if not_a_point.stride(1) != 1:
        not_a_point = not_a_point.contiguous()
    return point_table, not_a_point


@functools.lru_cache(maxsize=256)  # shapes and dtypes only (never weights): computed once each
def _fwd_constexprs(channels, out_dtype, aligned, fast_div, wide):
    """The forward kernel's constexprs (a dict in parameter order; shared: never mutated) and
    token rows per program."""
    span, chunks, chunks_b, block_t = tile_config(int(channels), _OUT_BYTES[out_dtype])
    constexprs = dict(C=channels, SPAN=span, CHUNKS=chunks, CHUNKS_B=chunks_b, BLOCK_T=block_t,
                      REPS=REPS, ALIGNED=aligned, FAST_DIV=fast_div, WIDE=wide,
                      OUT_DTYPE=_OUT_DTYPES[out_dtype],
                      INTERPRET=interpreting(_sparse_embed_fwd_kernel))
    return constexprs, block_t * REPS


BWD_BLOCKS_PER_PROGRAM = 8  # several token blocks per program amortise its slopes and sums
BWD_MAX_PROGRAMS = 256  # fixes the partition of token blocks over programs, hence the sum order
BWD_FREQS_PER_THREAD = 12  # 5 class sums of <= 24 values per thread: 240-247 registers
SUM_BLOCK = 256


def bwd_tile_config(embed_dim: int, num_warps: int = NUM_WARPS):
    """(SPAN, CHUNKS, CHUNKS_B, BLOCK_T) of the backward kernel: the forward's tiling for fp32
    (16-byte grad loads) with at most BWD_FREQS_PER_THREAD frequencies per thread (the class sums
    hold five values per output a thread owns)."""
    return tile_config(embed_dim, 4, num_warps, max_freqs=BWD_FREQS_PER_THREAD)


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
    if not grad_out.is_contiguous():  # rows of C values at a multiple of C: 16-byte loads
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
    span, chunks, chunks_b, block_t = bwd_tile_config(int(channels))
    magic, shift, fast_div = _row_split(tokens)
    num_blocks = triton.cdiv(rows, block_t)
    num_programs = min(triton.cdiv(num_blocks, BWD_BLOCKS_PER_PROGRAM), BWD_MAX_PROGRAMS)
    if num_programs == 1:
        table_part, nap_part = grad_table, grad_nap
    else:
        table_part = torch.empty(num_programs, 4, channels, device=device, dtype=torch.float32)
        nap_part = torch.empty(num_programs, 1, channels, device=device, dtype=torch.float32)
    launch(
        _sparse_embed_bwd_kernel, (num_programs,),
        grad_out, point_coords, *point_coords.stride(), point_labels, *point_labels.stride(),
        boxes, *boxes.stride(), gaussian, *gaussian.stride(), grad_coords, grad_boxes,
        table_part, nap_part, rows, tokens, magic, shift, num_points, num_boxes,
        int(pad), num_blocks, *image_constants(image_h, image_w),
        C=channels, SPAN=span, CHUNKS=chunks, CHUNKS_B=chunks_b, BLOCK_T=block_t,
        FAST_DIV=fast_div,
        WIDE=_wide_offsets(grad_out.numel(), point_coords, point_labels, boxes),
        num_warps=NUM_WARPS,
    )
    if num_programs > 1:
        launch(_sum_partials_kernel, (triton.cdiv(5 * channels, SUM_BLOCK),), table_part, nap_part,
               grad_table, grad_nap, num_programs, C=channels, BLOCK=SUM_BLOCK,
               num_warps=NUM_WARPS)
    return grad_coords, grad_boxes, grad_table, grad_nap
