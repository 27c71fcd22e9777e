"""The dense positional grid in one launch: gaussian [2, F] -> [C, h, w].

Spec: ``sam2_prompt.reference.dense_pe`` (``PositionEmbeddingRandom.forward((h, w))``). Pixel (i, j)
of the grid is the token at pixel coordinates (x, y) = (j, i) of an h x w image, encoded with the
sparse kernel's arithmetic (centred coordinates, exact here: j + 0.5 - w / 2; correctly rounded
slopes; t = fma(xc, a, yc b); turns-domain sin/cos): out[f, i, j] = sin(2 pi t_f),
out[F + f, i, j] = cos(2 pi t_f). A program owns one grid row, a block of frequencies and a block
of columns; stores run along the row, 16 bytes per thread.
"""

import torch
import triton
import triton.language as tl

from . import lean_launch
from .sincos import cos_poly, reduce_half_turns, round_to, sin_over_r, xor_sign
from .sparse import (_OUT_DTYPES, NUM_WARPS, _check_image, _check_tensor, centred_slope,
                     image_constants, interpreting, launch)

ELEMENTS_PER_PROGRAM = 4096  # sin + cos outputs of one program (32 per thread at 4 warps)


@triton.jit(do_not_specialize=["gauss_s1"])
def _dense_pe_kernel(
    gauss_ptr, gauss_s0, gauss_s1,  # gaussian [2, F], any float dtype and strides
    out_ptr,  # [C, height, width] contiguous, OUT_DTYPE
    height, width,
    x_shift, y_shift, half_w, half_h, inv_half_w, inv_half_h,  # fp32 image constants
    C: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_W: tl.constexpr,
    OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
):
    F: tl.constexpr = C // 2
    row = tl.program_id(0)
    freq = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)[:, None]
    col = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    freq_ok = freq < F
    # gauss_s1 is not specialised: with the loads' contiguity along the frequencies unknown, the
    # whole kernel keeps the stores' layout (contiguous along the row), no layout conversions.
    g0 = tl.load(gauss_ptr + freq * gauss_s1, mask=freq_ok, other=0.0).to(tl.float32)
    g1 = tl.load(gauss_ptr + gauss_s0 + freq * gauss_s1, mask=freq_ok, other=0.0).to(tl.float32)
    slope_x = centred_slope(g0, tl.cast(half_w, tl.float32), tl.cast(inv_half_w, tl.float32))
    slope_y = centred_slope(g1, tl.cast(half_h, tl.float32), tl.cast(inv_half_h, tl.float32))
    xc = col.to(tl.float32) + tl.cast(x_shift, tl.float32)  # exact: integers and halves
    yc = row.to(tl.float32) + tl.cast(y_shift, tl.float32)

    r, flip = reduce_half_turns(tl.fma(xc, slope_x, yc * slope_y))
    r2 = r * r
    sin_t = xor_sign(r, flip) * sin_over_r(r2)
    cos_t = xor_sign(cos_poly(r2, 1.0), flip)

    plane = height.to(tl.int64) * width
    out_at = out_ptr + freq.to(tl.int64) * plane + row.to(tl.int64) * width + col
    ok = freq_ok & (col < width)
    tl.store(out_at, round_to(sin_t, OUT_DTYPE, INTERPRET), mask=ok)
    tl.store(out_at + F * plane, round_to(cos_t, OUT_DTYPE, INTERPRET), mask=ok)


def tile_config(embed_dim: int, width: int):
    """(BLOCK_F, BLOCK_W): a row segment of up to 128 pixels x enough frequencies for
    ELEMENTS_PER_PROGRAM outputs."""
    block_w = min(max(triton.next_power_of_2(width), 4), 128)
    block_f = min(triton.next_power_of_2(embed_dim // 2),
                  max(ELEMENTS_PER_PROGRAM // (2 * block_w), 1))
    return block_f, block_w


def dense_pe(gaussian: torch.Tensor, h: int, w: int, out_dtype: torch.dtype, *,
             eager: bool = False) -> torch.Tensor:
    """gaussian: [2, F] -> [2F, h, w] in out_dtype (fp32, bf16, fp16), contiguous: the encoding of
    the (h, w) grid of pixel centres, computed in fp32 and rounded once.

    eager: a plain eager call from the op layer (no tracing): launched through ``lean_launch``
    rather than ``wrap_triton`` (see ``sparse.sparse_embed_fwd``)."""
    _check_tensor("gaussian", gaussian, (2, None), floating_only=True)
    if gaussian.shape[1] < 1:
        raise ValueError(f"gaussian must be [2, F] with F >= 1, got {list(gaussian.shape)}")
    for name, v in (("h", h), ("w", w)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {list(_OUT_DTYPES)}, got {out_dtype}")
    channels = 2 * gaussian.shape[1]
    out = torch.empty(channels, h, w, device=gaussian.device, dtype=out_dtype)
    if out.numel() == 0:
        return out
    _check_image(h, w)
    block_f, block_w = tile_config(channels, w)
    grid = (h, triton.cdiv(channels // 2, block_f), triton.cdiv(w, block_w))
    (lean_launch.launch if eager else launch)(
        _dense_pe_kernel, grid, gaussian, *gaussian.stride(), out, h, w, *image_constants(h, w),
        C=channels, BLOCK_F=block_f, BLOCK_W=block_w, OUT_DTYPE=_OUT_DTYPES[out_dtype],
        INTERPRET=interpreting(_dense_pe_kernel), num_warps=NUM_WARPS,
    )
    return out
