"""The mask prompt path (SAM-2's ``mask_downscaling``) in one launch: masks -> [B, C, H, W].

Spec: ``sam2_prompt.masks.mask_embed_reference`` (same signature). Output pixel (i, j) of mask b
depends only on the 4x4 input patch at (4i, 4j). A program owns BLOCK_P consecutive pixels of
one mask's H x W plane, PPT consecutive pixels per thread; it reads each patch once (16 loads),
keeps every intermediate in registers:

    conv1 (2x2 / 2): 4 sub-pixels x c4 channels, FMA chains
    LayerNorm over each sub-pixel's c4 channels + GELU   } on one tensor: the channels stacked
    conv2 (2x2 / 2): c channels, FMA chains               } as trailing size-2 dimensions
    LayerNorm over c + GELU                               } (tl.join), reduced with tl.sum
    conv3 (1x1): a loop over the C output channels, 4 per iteration: c FMAs per output,
                 the conv3_w row and biases read 16 bytes at a time

and writes each output once: per channel PPT consecutive pixels per thread, 16-byte stores
(fp32; 16-bit outputs get 8-byte stores: 8 pixels per thread would spill) when H x W is a
multiple of 16. The stacks keep the IR small: Triton's coalescing pass is quadratic in the
kernel's size (unrolled per-channel code compiled in ~90 s, stacked ~7 s), and the interpreter
runs one operation per stack instead of one per channel.

Arithmetic is fp32 whatever the dtypes. GELU is exact (the erf form of ``nn.GELU()``), with erf
written here in FMAs and selects (:func:`erf_abs`, max error 7.3e-8), so the interpreter computes
the GPU's values: ``tl.math.erf`` would be libdevice's ``erff`` on the GPU but Python's
``math.erf`` under the interpreter. 1 / sqrt(var + eps) is ``tl.math.rsqrt`` (MUFU.RSQ on the
GPU, relative error ~1e-7, correctly rounded under the interpreter).
"""

import contextlib

import torch
import triton
import triton.language as tl

from .sincos import round_to
from .sparse import _OUT_DTYPES, interpreting, launch  # launch: wrap_triton, tracers see it

# Every constant is a local constexpr of the function that uses it: a kernel that reads no
# module-level global leaves Triton (and lean_launch) no globals to re-check at each launch.


@triton.jit
def erf_abs(t):
    """t >= 0 (fp32, any shape) -> erf(t); NaN -> 1.

    0 <= t < 1: fma(t, R(t^2), t) with R = ERF_S0 + t^2 (ERF_S1 + ...), Chebyshev fit of
    erf(t) / t - 1 in t^2 (degree 6). 1 <= t < ERF_ONE: Q(u), u = t * ERF_U_SCALE + ERF_U_SHIFT
    in [-1, 1], Chebyshev fit of erf (degree 14). ERF_ONE and beyond: 1 (erf(3.92) rounds to 1.0
    in fp32). fp32 coefficients, fp32 Horner: max error 7.3e-8 (1.22 ulp) on [0, 4.5] against
    fp64."""
    ERF_ONE: tl.constexpr = 3.92
    ERF_U_SCALE: tl.constexpr = 0.684931506849315
    ERF_U_SHIFT: tl.constexpr = -1.6849315068493151
    ERF_S6: tl.constexpr = 7.933493907330558e-05
    ERF_S5: tl.constexpr = -0.0008034846396185458
    ERF_S4: tl.constexpr = 0.005191218573600054
    ERF_S3: tl.constexpr = -0.02685539983212948
    ERF_S2: tl.constexpr = 0.11283625662326813
    ERF_S1: tl.constexpr = -0.3761262893676758
    ERF_S0: tl.constexpr = 0.12837916612625122
    ERF_Q14: tl.constexpr = 0.00021884188754484057
    ERF_Q13: tl.constexpr = 1.2985969988221768e-05
    ERF_Q12: tl.constexpr = -0.0016258660471066833
    ERF_Q11: tl.constexpr = 0.0015874085947871208
    ERF_Q10: tl.constexpr = 0.003337017260491848
    ERF_Q9: tl.constexpr = -0.009031123481690884
    ERF_Q8: tl.constexpr = 0.007347635459154844
    ERF_Q7: tl.constexpr = 0.006495251320302486
    ERF_Q6: tl.constexpr = -0.028447646647691727
    ERF_Q5: tl.constexpr = 0.04510702192783356
    ERF_Q4: tl.constexpr = -0.04504726082086563
    ERF_Q3: tl.constexpr = 0.030599944293498993
    ERF_Q2: tl.constexpr = -0.01392898429185152
    ERF_Q1: tl.constexpr = 0.003878106130287051
    ERF_Q0: tl.constexpr = 0.9994966387748718
    s = t * t
    r = tl.fma(s, tl.fma(s, tl.fma(s, tl.fma(s, tl.fma(s, tl.fma(s, ERF_S6, ERF_S5), ERF_S4),
                                                   ERF_S3), ERF_S2), ERF_S1), ERF_S0)
    small = tl.fma(t, r, t)
    u = tl.fma(t, ERF_U_SCALE, ERF_U_SHIFT)
    q = tl.fma(u, ERF_Q14, ERF_Q13)
    q = tl.fma(u, q, ERF_Q12)
    q = tl.fma(u, q, ERF_Q11)
    q = tl.fma(u, q, ERF_Q10)
    q = tl.fma(u, q, ERF_Q9)
    q = tl.fma(u, q, ERF_Q8)
    q = tl.fma(u, q, ERF_Q7)
    q = tl.fma(u, q, ERF_Q6)
    q = tl.fma(u, q, ERF_Q5)
    q = tl.fma(u, q, ERF_Q4)
    q = tl.fma(u, q, ERF_Q3)
    q = tl.fma(u, q, ERF_Q2)
    q = tl.fma(u, q, ERF_Q1)
    q = tl.fma(u, q, ERF_Q0)
    return tl.where(t < 1.0, small, tl.where(t < ERF_ONE, q, 1.0))


@triton.jit
def gelu(y):
    """Exact GELU, y Phi(y) = y / 2 (1 + erf(y / sqrt 2)), computed as
    fma(|y| / 2, erf(|y| / sqrt 2), y / 2) (for y < 0: y / 2 (1 - erf(|y| / sqrt 2))), one
    rounding."""
    SQRT_HALF: tl.constexpr = 0.7071067811865476
    half = 0.5 * y
    return tl.fma(tl.abs(half), erf_abs(tl.abs(y) * SQRT_HALF), half)


@triton.jit
def _split4(quad):
    """quad: [..., 4] -> its 4 columns [...] (one 16-byte load, then registers)."""
    even, odd = tl.split(tl.reshape(quad, quad.shape[:-1] + [2, 2]))
    q0, q2 = tl.split(even)
    q1, q3 = tl.split(odd)
    return q0, q1, q2, q3


@triton.jit
def _load_row(ptr, N: tl.constexpr):
    """N contiguous values -> a tuple of fp32 scalars (N rounded up to a multiple of 4, the
    extra ones 0), read 16 bytes at a time: few memory operations (Triton's coalescing pass
    costs time per memory operation and kernel size)."""
    row = ()
    for q in tl.static_range(0, N, 4):
        index = q + tl.arange(0, 4)
        row = row + _split4(tl.load(ptr + index, mask=index < N, other=0.0).to(tl.float32))
    return row


@triton.jit
def _bit_reverse(index, BITS: tl.constexpr):
    """index (int, any shape) -> its lowest BITS bits in reverse order."""
    out = index * 0
    for bit in tl.static_range(BITS):
        out = out | (((index >> bit) & 1) << (BITS - 1 - bit))
    return out


@triton.jit
def _stack(values, BITS: tl.constexpr):
    """A tuple of 2**BITS tensors [...] -> one tensor [..., 2, ..., 2] (BITS trailing dimensions,
    in registers: tl.join): value k sits at trailing indices (bit 0 of k, bit 1, ...), i.e. at
    the row-major position bit_reverse(k). One tensor keeps the kernel's IR small (Triton's
    coalescing pass is quadratic in it) and the interpreter fast."""
    level = values
    for depth in tl.static_range(BITS):
        joined = ()
        for i in tl.static_range(2 ** (BITS - 1 - depth)):
            joined = joined + (tl.join(level[2 * i], level[2 * i + 1]),)
        level = joined
    return level[0]


@triton.jit
def _unstack(stacked, BITS: tl.constexpr):
    """The inverse of :func:`_stack`: -> a tuple of 2**BITS tensors."""
    level = (stacked,)
    for depth in tl.static_range(BITS):
        split = ()
        for i in tl.static_range(2 ** depth):
            clear, set_ = tl.split(level[i])  # the last dimension: the highest bit not yet split
            split = split + (clear, set_)
        level = split
    return level


@triton.jit
def _sum_axes(x, FIRST: tl.constexpr, COUNT: tl.constexpr):
    """Sum over axes FIRST .. FIRST + COUNT - 1, kept as size-1 dimensions."""
    for axis in tl.static_range(FIRST, FIRST + COUNT):
        x = tl.sum(x, axis=axis, keep_dims=True)
    return x


@triton.jit
def _layer_norm_gelu(x, channel, valid, weight_ptr, bias_ptr, eps, N: tl.constexpr,
                     BITS: tl.constexpr):
    """x: a stack of pixel tiles [MB, 1, BLOCK_P, 2, ...] whose first BITS stack dimensions
    index the N channels normalised together (the others: independent groups); channel, valid:
    each position's channel and whether it is < N (padding is 0). -> LayerNorm over the channels
    (biased variance, weight [N], bias [N]) then exact GELU, same shape; padding stays 0."""
    weight = tl.load(weight_ptr + channel, mask=valid, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channel, mask=valid, other=0.0).to(tl.float32)
    mean = _sum_axes(x, 3, BITS) * (1.0 / N)
    centred = tl.where(valid, x - mean, 0.0)
    rstd = tl.math.rsqrt(tl.fma(_sum_axes(centred * centred, 3, BITS), 1.0 / N, eps))
    scaled = tl.where(valid, tl.fma(centred * rstd, weight, bias), 0.0)
    # GELU on each half of the stack in turn: fewer values live at once (registers)
    low, high = tl.split(scaled)
    low = gelu(low)
    return tl.join(low, gelu(high))


@triton.jit(do_not_specialize=["masks_sb", "masks_sh", "masks_sw", "batch", "width",
                             "blocks_per_plane"])
def _mask_embed_kernel(
    masks_ptr, masks_sb, masks_sh, masks_sw,  # masks [B, 1, Hm, Wm], any float dtype and strides
    conv1_w_ptr, conv1_b_ptr, ln1_w_ptr, ln1_b_ptr,  # [CQ, 1, 2, 2], [CQ] x 3, contiguous
    conv2_w_ptr, conv2_b_ptr, ln2_w_ptr, ln2_b_ptr,  # [CM, CQ, 2, 2], [CM] x 3, contiguous
    conv3_w_ptr, conv3_b_ptr,  # [C, CM, 1, 1], [C], contiguous
    out_ptr,  # [B, C, H, W] contiguous, OUT_DTYPE
    batch, width, plane, blocks_per_plane,  # B, W, H * W, cdiv(plane, BLOCK_P)
    eps1, eps2,
    C: tl.constexpr, CM: tl.constexpr, CQ: tl.constexpr,  # embed_dim, mask_in_chans, c4
    CM_BITS: tl.constexpr, CQ_BITS: tl.constexpr,  # stack depths: ceil(log2) of CM (>= 1), CQ
    CC: tl.constexpr, MB: tl.constexpr, BLOCK_P: tl.constexpr,  # see tile_config
    OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
):
    # A program: MB masks x BLOCK_P pixels of their planes; pixel tiles are [MB, 1, BLOCK_P],
    # output tiles [MB, CC, BLOCK_P]. GPUs: MB = CC = 1, so that loads, intermediates and stores
    # share one shape and Triton gives them one layout (PPT consecutive pixels per thread, no
    # layout conversion). The interpreter, whose cost is per operation, takes many masks and
    # channels at once.
    pid = tl.program_id(0).to(tl.int64)
    mask_block = pid // blocks_per_plane
    mask_id = mask_block * MB + tl.arange(0, MB)[:, None, None]  # [MB, 1, 1] int64
    pixel = ((pid - mask_block * blocks_per_plane).to(tl.int32) * BLOCK_P
             + tl.arange(0, BLOCK_P)[None, None, :])  # [1, 1, BLOCK_P] int32
    live = (mask_id < batch) & (pixel < plane)
    row = pixel // width
    col = pixel - row * width
    patch_at = (masks_ptr + mask_id * masks_sb + (4 * row).to(tl.int64) * masks_sh
                + (4 * col).to(tl.int64) * masks_sw)
    eps1 = tl.cast(eps1, tl.float32)
    eps2 = tl.cast(eps2, tl.float32)

    # The 4x4 patch, read once: patch[4 dy + dx].
    patch = ()
    for dy in tl.static_range(4):
        for dx in tl.static_range(4):
            patch = patch + (tl.load(patch_at + dy * masks_sh + dx * masks_sw, mask=live,
                                     other=0.0).to(tl.float32),)

    # conv1 (2x2, stride 2) on each 2x2 sub-pixel s = 2 a + b, k < CQ channels, stacked as
    # hidden value h = s * 2**CQ_BITS + k (channels padded to a power of two with zeros); then
    # LayerNorm over the k bits and GELU on the whole stack. conv1_w[k]: 4 contiguous taps (y, x).
    conv1_w = _load_row(conv1_w_ptr, 4 * CQ)
    conv1_b = _load_row(conv1_b_ptr, CQ)
    hidden = ()
    for s in tl.static_range(4):
        for k in tl.static_range(2 ** CQ_BITS):
            if k < CQ:
                # the sub-pixel's top-left patch value is patch[8 (s // 2) + 2 (s % 2)]
                acc = tl.fma(patch[8 * (s // 2) + 2 * (s % 2)], conv1_w[4 * k], conv1_b[k])
                acc = tl.fma(patch[8 * (s // 2) + 2 * (s % 2) + 1], conv1_w[4 * k + 1], acc)
                acc = tl.fma(patch[8 * (s // 2) + 2 * (s % 2) + 4], conv1_w[4 * k + 2], acc)
                acc = tl.fma(patch[8 * (s // 2) + 2 * (s % 2) + 5], conv1_w[4 * k + 3], acc)
            else:
                acc = tl.zeros_like(patch[0])
            hidden = hidden + (acc,)
    HB: tl.constexpr = CQ_BITS + 2
    stack_shape: tl.constexpr = [2] * HB
    h = tl.reshape(_bit_reverse(tl.arange(0, 2 ** HB), HB), stack_shape)  # h at each position
    k_of_h = h & (2 ** CQ_BITS - 1)
    hidden = _layer_norm_gelu(_stack(hidden, HB), k_of_h, k_of_h < CQ, ln1_w_ptr, ln1_b_ptr,
                              eps1, CQ, CQ_BITS)

    # conv2 (2x2 on the sub-pixels): CM channels as FMA chains on the unstacked hidden values;
    # conv2_w[o, k] is 4 contiguous taps, one per sub-pixel s. Then LayerNorm over CM and GELU.
    hidden = _unstack(hidden, HB)
    conv2_b = _load_row(conv2_b_ptr, CM)
    mid = ()
    for o in tl.static_range(2 ** CM_BITS):
        if o < CM:
            acc = conv2_b[o]  # a scalar: the first FMA broadcasts it (no add of a zero tile)
            for k in tl.static_range(CQ):
                for s in tl.static_range(4):
                    acc = tl.fma(hidden[s * 2 ** CQ_BITS + k],
                                 tl.load(conv2_w_ptr + (o * CQ + k) * 4 + s).to(tl.float32), acc)
        else:
            acc = tl.zeros_like(patch[0])
        mid = mid + (acc,)
    mid_shape: tl.constexpr = [2] * CM_BITS
    o_at = tl.reshape(_bit_reverse(tl.arange(0, 2 ** CM_BITS), CM_BITS), mid_shape)
    mid = _unstack(_layer_norm_gelu(_stack(mid, CM_BITS), o_at, o_at < CM, ln2_w_ptr, ln2_b_ptr,
                                    eps2, CM, CM_BITS), CM_BITS)

    # conv3 (1x1): 4 groups of CC output channels per iteration (biases and conv3_w rows read
    # 16 bytes at a time when CC = 1).
    out_at = out_ptr + mask_id * (C * plane) + pixel
    quad = tl.arange(0, 4)[None, :]
    group = tl.arange(0, CC)
    for chunk in tl.range(0, tl.cdiv(C, 4 * CC)):
        first = chunk * (4 * CC)
        bias_at = first + group[:, None] + quad * CC  # [CC, 4]
        biases = _split4(tl.load(conv3_b_ptr + bias_at, mask=bias_at < C, other=0.0)
                         .to(tl.float32))
        for u in tl.static_range(4):
            channel = first + u * CC + group  # [CC]
            tile = biases[u][None, :, None]  # [1, CC, 1]: the first FMA broadcasts it
            for k0 in tl.static_range(0, CM, 4):
                taps = _split4(tl.load(conv3_w_ptr + channel[:, None] * CM + k0 + quad,
                                       mask=(k0 + quad < CM) & (channel[:, None] < C),
                                       other=0.0).to(tl.float32))
                for j in tl.static_range(4):
                    if k0 + j < CM:
                        tile = tl.fma(taps[j][None, :, None], mid[k0 + j], tile)
            ok = live
            if C % (4 * CC) != 0:
                ok = ok & (channel[None, :, None] < C)
            tl.store(out_at + channel.to(tl.int64)[None, :, None] * plane,
                     round_to(tile, OUT_DTYPE, INTERPRET), mask=ok)


# ----------------------------------------------------------------------------- launcher
NUM_WARPS = 4
_MAX_PLANE = 2**31 - 2**20  # pixel indices are int32 inside the kernel (offsets are int64)


def _pow2_divisor(n: int, cap: int) -> int:
    """The largest power of two <= cap dividing n."""
    d = 1
    while d < cap and n % (2 * d) == 0:
        d *= 2
    return d


def tile_config(batch: int, plane: int, embed_dim: int, mask_chans: int, out_bytes: int,
                interpret: bool):
    """(MB, BLOCK_P, CC): masks and pixels per program, output channels per store (4 stores per
    loop iteration).

    GPU: one mask and one channel per store; PPT consecutive pixels per thread, 16 bytes of
    output per channel where the registers allow (PPT x (mask_chans + 4 c4) hidden values are
    live between conv1 and conv2: 16-bit outputs at mask_chans 16 get 8-byte stores, as 8
    pixels per thread spill). Interpreter (cost per operation, not per element): whole planes
    of up to 64 masks and up to 64 channels per iteration; same kernel, larger tiles."""
    if interpret:
        block_p = triton.next_power_of_2(min(plane, 4096))
        masks = min(triton.next_power_of_2(batch), max(16384 // block_p, 1), 64)
        return masks, block_p, _pow2_divisor(embed_dim, 16)
    ppt = max(min(16 // out_bytes, 64 // mask_chans), 1)
    ppt = 1 << (ppt.bit_length() - 1)
    return 1, ppt * 32 * NUM_WARPS, 1


def mask_embed_fwd(masks, conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b,
                   conv3_w, conv3_b, eps1, eps2, out_dtype):
    """masks [B, 1, Hm, Wm], conv1_w [c4, 1, 2, 2], conv1_b / ln1_w / ln1_b [c4],
    conv2_w [c, c4, 2, 2], conv2_b / ln2_w / ln2_b [c], conv3_w [C, c, 1, 1], conv3_b [C]
    -> a fresh contiguous [B, C, Hm // 4, Wm // 4] in out_dtype (fp32, bf16 or fp16), one launch.
    Any float dtypes and mask strides; weights are read through ``.contiguous()``."""
    from sam2_prompt.masks import check_mask_inputs

    weights = (conv1_w, conv1_b, ln1_w, ln1_b, conv2_w, conv2_b, ln2_w, ln2_b, conv3_w, conv3_b)
    batch, height, width, c4, c, embed_dim = check_mask_inputs(masks, weights, eps1, eps2,
                                                               out_dtype)
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {list(_OUT_DTYPES)}, got {out_dtype}")
    out = torch.empty((batch, embed_dim, height, width), device=masks.device, dtype=out_dtype)
    if out.numel() == 0:
        return out
    plane = height * width
    if plane > _MAX_PLANE:
        raise ValueError(f"masks of {list(masks.shape)} give {plane} output pixels per mask; "
                         f"at most {_MAX_PLANE} are supported")
    interpret = interpreting(_mask_embed_kernel)
    masks_per_program, block_p, cc = tile_config(batch, plane, embed_dim, c, out.element_size(),
                                                 interpret)
    blocks = triton.cdiv(plane, block_p)
    grid = (triton.cdiv(batch, masks_per_program) * blocks,)
    if grid[0] >= 2**31:
        raise ValueError(f"masks of {list(masks.shape)} need {grid[0]} programs; at most 2**31 - 1")
    launch(
        _mask_embed_kernel, grid, masks, masks.stride(0), masks.stride(2), masks.stride(3),
        *(w.contiguous() for w in weights), out, batch, width, plane, blocks, float(eps1),
        float(eps2), C=embed_dim, CM=c, CQ=c4, CM_BITS=max((c - 1).bit_length(), 1),
        CQ_BITS=(c4 - 1).bit_length(), CC=cc, MB=masks_per_program, BLOCK_P=block_p,
        OUT_DTYPE=_OUT_DTYPES[out_dtype], INTERPRET=interpret,
        num_warps=NUM_WARPS,
    )
    return out


# ----------------------------------------------------------------------------- static report
SAM2_GRID = (64, 64)  # SAM-2's image-embedding grid: masks of 256 x 256


@contextlib.contextmanager
def recorded_launches():
    """Replace this module's ``launch`` hook: calls are recorded as (kernel, grid, args,
    kwargs), nothing runs (for ahead-of-time compilation, as ``aot._recorded_launches``)."""
    global launch
    calls, saved = [], launch

    def record(kernel, grid, *args, **kwargs):
        calls.append((kernel, grid, args, kwargs))

    launch = record
    try:
        yield calls
    finally:
        launch = saved


def example_inputs(embed_dim: int = 256, mask_chans: int = 16, batch: int = 1,
                   grid=SAM2_GRID, dtype: torch.dtype = torch.float32) -> tuple:
    """(masks [batch, 1, 4 h, 4 w], the 10 weights) as zeros on the CPU, for recording."""
    c4 = mask_chans // 4
    shapes = [(c4, 1, 2, 2), (c4,), (c4,), (c4,), (mask_chans, c4, 2, 2), (mask_chans,),
              (mask_chans,), (mask_chans,), (embed_dim, mask_chans, 1, 1), (embed_dim,)]
    masks = torch.zeros(batch, 1, 4 * grid[0], 4 * grid[1], dtype=dtype)
    return (masks, *(torch.zeros(shape, dtype=dtype) for shape in shapes))


def recorded_launch(out_dtype: torch.dtype = torch.float32, embed_dim: int = 256,
                    mask_chans: int = 16, dtype: torch.dtype = torch.float32) -> tuple:
    """The (kernel, grid, args, kwargs) that mask_embed_fwd launches for SAM-2's shapes (masks
    and weights in ``dtype``), without running it. TRITON_INTERPRET must be unset."""
    with recorded_launches() as calls:
        mask_embed_fwd(*example_inputs(embed_dim, mask_chans, dtype=dtype), 1e-6, 1e-6, out_dtype)
    return calls[0]


def iterations(kwargs) -> int:
    """Trips of the kernel's 1x1-conv loop (4 stores of CC channels each)."""
    return triton.cdiv(kwargs["C"], 4 * kwargs["CC"])


def point_bytes(embed_dim: int, out_dtype: torch.dtype, masks_dtype: torch.dtype) -> int:
    """DRAM bytes per output pixel: C outputs written, a 4x4 patch of the mask read (the weights,
    ~20 KB, are cache hits)."""
    return (embed_dim * torch.empty((), dtype=out_dtype).element_size()
            + 16 * torch.empty((), dtype=masks_dtype).element_size())


def aot_variant(out_dtype: torch.dtype = torch.float32, embed_dim: int = 256,
                mask_chans: int = 16, dtype: torch.dtype = torch.float32):
    """The kernel as an ``aot.Variant`` at SAM-2's shapes (masks and weights in ``dtype``): its
    1x1-conv loop runs ``iterations`` times after a prologue (the patch through conv2, the
    LayerNorms and GELUs: ~20% of the instructions at C = 256), so the report counts every
    instruction as often as it runs, per output of a program."""
    from . import aot

    call = recorded_launch(out_dtype, embed_dim, mask_chans, dtype)
    kwargs = call[3]
    per_program = kwargs["MB"] * kwargs["BLOCK_P"] * kwargs["C"]
    loads = 4 * triton.cdiv(mask_chans, 4) + 1  # per iteration: 4 conv3_w rows by quads, biases
    return aot.Variant("mask_fwd", out_dtype, dtype, embed_dim, call, per_program,
                       point_bytes(embed_dim, out_dtype, dtype), embed_dim,
                       loads_per_iteration=loads, loop_iterations=iterations(kwargs))


def fused_traffic(batch: int, mask_h: int, mask_w: int, embed_dim: int, mask_chans: int,
                  masks_dtype: torch.dtype, out_dtype: torch.dtype,
                  weights_dtype: torch.dtype = torch.float32) -> dict:
    """Bytes the one launch moves: every used mask pixel read once (the 4H x 4W crop), the
    weights once, the [B, C, H, W] output written once."""
    size = {dt: torch.empty((), dtype=dt).element_size()
            for dt in (masks_dtype, out_dtype, weights_dtype)}
    height, width = mask_h // 4, mask_w // 4
    c4 = mask_chans // 4
    weights = 7 * c4 + 4 * c4 * mask_chans + 3 * mask_chans + embed_dim * (mask_chans + 1)
    return {"launches": 1,
            "read_bytes": batch * 16 * height * width * size[masks_dtype]
            + weights * size[weights_dtype],
            "written_bytes": batch * embed_dim * height * width * size[out_dtype]}
