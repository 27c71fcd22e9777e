"""sin(2 pi t) and cos(2 pi t) of angles given in turns, in plain Triton arithmetic.

Reduction by half turns: q = rint(2 t) with the 1.5 * 2^23 trick (exact for |2 t| < 2^22), then
r = t - q / 2 is exact in fp32 (q / 2 is within 1/4 of t and on t's grid), so |r| <= 1/4 turn.
sin(2 pi t) = (-1)^q sin(2 pi r) and cos(2 pi t) = (-1)^q cos(2 pi r): no quadrant swap, just one
sign bit, q's parity, which is the lowest mantissa bit of the shifted float, moved to bit 31 and
xor-ed into the results (``flip``). Polynomials in r: odd degree 9 for sin, even degree 8 for cos,
minimax on [-1/4, 1/4] (fitted to the fp64 functions; with fp32 coefficients and fp32 Horner
evaluation the error is <= 1.7e-7 for sin, <= 1.6e-7 for cos).

Only FMAs, multiplies, adds, a shift and xors: no libdevice (its slow path has Payne-Hanek loops and
a stack frame), no MUFU approximations, and Triton's interpreter (which has a true fp32 fma)
reproduces the GPU's arithmetic. |t| >= 2^21 turns is out of range (the fp32 angle itself has no
fractional bits left there).
"""

import triton
import triton.language as tl

# Every constant is a local constexpr of the function that uses it: a kernel that reads no
# module-level global leaves Triton (and lean_launch) no globals to re-check at each launch.


@triton.jit
def reduce_half_turns(turns):
    """turns: fp32 block -> (r, flip): turns = q / 2 + r with |r| <= 1/4 and flip the uint32 sign
    mask (q odd -> 0x80000000, else 0) that sin and cos of 2 pi turns take."""
    ROUND_MAGIC: tl.constexpr = 12582912.0  # 1.5 * 2**23: (x + M) - M rounds x to an integer
    shifted = tl.fma(turns, 2.0, ROUND_MAGIC)
    half_turns = shifted - ROUND_MAGIC
    r = tl.fma(half_turns, -0.5, turns)
    flip = shifted.to(tl.uint32, bitcast=True) << 31
    return r, flip


@triton.jit
def sin_over_r(r2):
    """r2 = r * r -> P with sin(2 pi r) = r * P (|r| <= 1/4):
    P = S1 + r^2 (S3 + r^2 (S5 + r^2 (S7 + r^2 S9)))."""
    S1: tl.constexpr = 6.283185005187988
    S3: tl.constexpr = -41.34165573120117
    S5: tl.constexpr = 81.60100555419922
    S7: tl.constexpr = -76.5497817993164
    S9: tl.constexpr = 39.536705017089844
    return tl.fma(r2, tl.fma(r2, tl.fma(r2, tl.fma(r2, S9, S7), S5), S3), S1)


@triton.jit
def cos_poly(r2, one):
    """r2 = r * r -> cos(2 pi r) - 1 + one (|r| <= 1/4); one = 1 gives cos, one = 0 with r = 0
    gives an exact zero (how the sparse kernel blanks padding tokens for free):
    one + r^2 (C2 + r^2 (C4 + r^2 (C6 + r^2 C8)))."""
    C2: tl.constexpr = -19.739181518554688
    C4: tl.constexpr = 64.93521881103516
    C6: tl.constexpr = -85.2540054321289
    C8: tl.constexpr = 56.34064483642578
    return tl.fma(r2, tl.fma(r2, tl.fma(r2, tl.fma(r2, C8, C6), C4), C2), one)


@triton.jit
def xor_sign(x, mask):
    """x with its sign bit xor-ed with the uint32 ``mask`` (0 or 0x80000000)."""
    return (x.to(tl.uint32, bitcast=True) ^ mask).to(tl.float32, bitcast=True)


@triton.jit
def sincos_turns(turns):
    """turns: fp32 block -> (sin(2 pi turns), cos(2 pi turns)), fp32 blocks of the same shape."""
    r, flip = reduce_half_turns(turns)
    r2 = r * r
    sin_out = xor_sign(r, flip) * sin_over_r(r2)
    cos_out = xor_sign(cos_poly(r2, 1.0), flip)
    return sin_out, cos_out


@triton.jit
def round_to(x, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 -> OUT_DTYPE, rounded to nearest even. The interpreter truncates fp32 -> bf16 (Triton
    3.x casts through numpy bit slicing), so there the rounding is spelled out in integer ops,
    bit-identical to the GPU's cvt.rn.bf16.f32 for every non-NaN input."""
    if OUT_DTYPE == tl.bfloat16 and INTERPRET:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        rounded = tl.where(x == x, rounded, 0x7FC0)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(OUT_DTYPE)
