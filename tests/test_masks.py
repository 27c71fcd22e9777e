"""The mask path (SAM-2's ``mask_downscaling``): the reference, the fast CPU path and the fused
Triton kernel against Meta's module with identical random weights, and Meta's gradients.

The kernel runs under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 and NaN-fills
fresh allocations, so an unwritten output element shows up). Shapes stay small. The static quality
of the compiled kernel (no spills, 16-byte stores, memory-bound) is checked ahead of time in a
child process without the interpreter.
"""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from helpers import env_without_interpreter
from sam2_prompt import masks as mask_path
from sam2_prompt.bench import measure

EPS = 1e-6
FP32_ATOL = 1e-4  # against Meta's fp32 module (N(0, 1) weights: outputs up to ~20)


def meta_module(upstream, embed_dim, mask_chans, grid=(4, 4), seed=0):
    """Meta's PromptEncoder with every parameter drawn from N(0, 1) (non-trivial LayerNorms)."""
    meta_cls, _ = upstream
    torch.manual_seed(seed)
    meta = meta_cls(embed_dim, grid, (16 * grid[0], 16 * grid[1]), mask_chans)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in meta.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return meta


def weights_of(meta, detach=True) -> tuple:
    """The ten mask_downscaling parameters in the functions' order (detached: the inference
    paths write through ``out=``)."""
    seq = meta.mask_downscaling
    params = (seq[0].weight, seq[0].bias, seq[1].weight, seq[1].bias, seq[3].weight,
              seq[3].bias, seq[4].weight, seq[4].bias, seq[6].weight, seq[6].bias)
    return tuple(p.detach() for p in params) if detach else params


def random_masks(batch, height, width, seed=2, scale=4.0):
    """Mask logits as SAM-2 feeds them back (magnitudes up to ~20)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, height, width, generator=gen) * scale


def meta_forward(meta, masks):
    """Meta's module on the 4H x 4W crop (its strided convolutions ignore the rest)."""
    height, width = masks.shape[2] // 4 * 4, masks.shape[3] // 4 * 4
    with torch.no_grad():
        return meta.mask_downscaling(masks[:, :, :height, :width].contiguous())


def layouts(masks):
    """The same masks as contiguous, channels_last and non-contiguous (a strided view)."""
    wide = torch.full((masks.shape[0], 1, masks.shape[2], 2 * masks.shape[3] + 1), float("nan"))
    wide[..., ::2][..., :masks.shape[3]] = masks
    return {"contiguous": masks, "channels_last": masks.to(memory_format=torch.channels_last),
            "strided": wide[..., ::2][..., :masks.shape[3]]}


CONFIGS = [  # (embed_dim, mask_in_chans, mask height, mask width, batch)
    (256, 16, 16, 16, 2),
    (32, 4, 12, 20, 3),  # c4 = 1: LayerNorm over one channel
    (96, 8, 21, 14, 1),  # odd sizes: rows and columns past 4H, 4W are ignored
    (32, 32, 8, 12, 2),
    (40, 12, 8, 8, 2),  # non-power-of-two channel counts (c4 = 3)
]


# ----------------------------------------------------------------------------- reference
@pytest.mark.parametrize("embed_dim,chans,height,width,batch", CONFIGS)
def test_reference_matches_meta(upstream, embed_dim, chans, height, width, batch):
    meta = meta_module(upstream, embed_dim, chans)
    masks = random_masks(batch, height, width)
    out = mask_path.mask_embed_reference(masks, *weights_of(meta), EPS, EPS, torch.float32)
    torch.testing.assert_close(out, meta_forward(meta, masks), atol=1e-5, rtol=0)


def test_reference_gradients_match_meta(upstream):
    """Reverse-mode gradients of masks and all ten weights equal Meta's (fp32)."""
    meta = meta_module(upstream, 32, 16)
    masks = random_masks(2, 13, 18).requires_grad_()
    grad_out = torch.randn(2, 32, 3, 4, generator=torch.Generator().manual_seed(5))
    weights = weights_of(meta, detach=False)
    ours = mask_path.mask_embed_reference(masks, *weights, EPS, EPS, torch.float32)
    ours_grads = torch.autograd.grad(ours, (masks, *weights), grad_out)
    theirs = meta.mask_downscaling(masks[:, :, :12, :16])
    theirs_grads = torch.autograd.grad(theirs, (masks, *weights), grad_out)
    assert ours_grads[0][:, :, 12:].abs().max() == 0 and ours_grads[0][..., 16:].abs().max() == 0
    for name, a, b in zip(("masks",) + tuple(n for n, _ in mask_path._SHAPES), ours_grads,
                          theirs_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5, msg=name)


def test_vjp_matches_meta(upstream):
    """mask_embed_vjp (the backward the op registers) gives Meta's gradients, None where no
    gradient is asked for, and a differentiable result with create_graph (double backward)."""
    meta = meta_module(upstream, 32, 8)
    masks = random_masks(2, 9, 12).requires_grad_()
    params = weights_of(meta, detach=False)
    grad_out = torch.randn(2, 32, 2, 3, generator=torch.Generator().manual_seed(6))
    expected = torch.autograd.grad(meta.mask_downscaling(masks[:, :, :8]), (masks, *params),
                                   grad_out)
    needs = (True, False) + (True,) * 9
    grads = mask_path.mask_embed_vjp(grad_out, masks, weights_of(meta), EPS, EPS, needs)
    assert grads[1] is None
    for got, want, need in zip(grads, expected, needs):
        if need:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # double backward: d/d(conv3_w) of <grad_masks, v> equals autograd's own second derivative
    grad_out.requires_grad_()
    first = mask_path.mask_embed_vjp(grad_out, masks, params, EPS, EPS,
                                     (True,) + (False,) * 10, create_graph=True)[0]
    theirs = torch.autograd.grad(meta.mask_downscaling(masks[:, :, :8]), masks, grad_out,
                                 create_graph=True)[0]
    v = torch.randn(masks.shape, generator=torch.Generator().manual_seed(7))
    ours2 = torch.autograd.grad((first * v).sum(), (params[8], grad_out))
    theirs2 = torch.autograd.grad((theirs * v).sum(), (params[8], grad_out))
    for a, b in zip(ours2, theirs2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_fusable_activations():
    from torch import nn

    class MyGELU(nn.GELU):
        pass

    assert mask_path.fusable_activations(nn.GELU(), nn.GELU(approximate="none"))
    assert not mask_path.fusable_activations(nn.GELU(), nn.GELU(approximate="tanh"))
    assert not mask_path.fusable_activations(MyGELU(), nn.GELU())
    assert not mask_path.fusable_activations(nn.ReLU(), nn.GELU())


def test_reference_gradcheck_fp64():
    """The reference is differentiable in every input (fp64 gradcheck, forward AD included)."""
    gen = torch.Generator().manual_seed(3)
    c4, c, embed_dim = 2, 4, 3
    shapes = [(1, 1, 4, 5), (c4, 1, 2, 2), (c4,), (c4,), (c4,), (c, c4, 2, 2), (c,), (c,), (c,),
              (embed_dim, c, 1, 1), (embed_dim,)]
    inputs = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
              for s in shapes]

    def fn(*args):
        return mask_path.mask_embed_reference(*args, 1e-3, 1e-3, torch.float64)

    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, fast_mode=True)


# ----------------------------------------------------------------------------- fast CPU path
@pytest.mark.parametrize("embed_dim,chans,height,width,batch", CONFIGS)
def test_fast_matches_meta(upstream, embed_dim, chans, height, width, batch):
    meta = meta_module(upstream, embed_dim, chans)
    masks = random_masks(batch, height, width)
    expected = meta_forward(meta, masks)
    for name, layout in layouts(masks).items():
        for chunk in (None, 1, 5, 37):  # one chunk; rows of one mask; several masks per chunk
            out = mask_path.mask_embed_fast(layout, *weights_of(meta), EPS, EPS, torch.float32,
                                            chunk_pixels=chunk)
            assert out.is_contiguous() and out.dtype == torch.float32
            torch.testing.assert_close(out, expected, atol=FP32_ATOL, rtol=0,
                                       msg=f"{name}, chunk_pixels={chunk}")


def test_fast_layer_norm_weights_near_zero(upstream):
    """LayerNorm weights of 0 or 1e-30 (the weight is applied after the scaling, never divided
    by): still Meta's result."""
    meta = meta_module(upstream, 32, 16)
    with torch.no_grad():
        meta.mask_downscaling[1].weight[1] = 0.0
        meta.mask_downscaling[4].weight[3] = 1e-30
    masks = random_masks(2, 16, 16)
    out = mask_path.mask_embed_fast(masks, *weights_of(meta), EPS, EPS, torch.float32)
    torch.testing.assert_close(out, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)


def test_fast_empty_batch_and_dtypes(upstream):
    meta = meta_module(upstream, 32, 16)
    weights = weights_of(meta)
    assert mask_path.mask_embed_fast(torch.zeros(0, 1, 16, 16), *weights, EPS, EPS,
                                     torch.float32).shape == (0, 32, 4, 4)
    masks = random_masks(3, 16, 12)
    ref64 = mask_path.mask_embed_reference(masks.double(), *[w.double() for w in weights], EPS,
                                           EPS, torch.float64)
    fast64 = mask_path.mask_embed_fast(masks.double(), *[w.double() for w in weights], EPS, EPS,
                                       torch.float64)
    torch.testing.assert_close(fast64, ref64, atol=1e-10, rtol=0)
    for dtype in (torch.bfloat16, torch.float16):  # fp32 arithmetic, rounded once
        out = mask_path.mask_embed_fast(masks.to(dtype), *[w.to(dtype) for w in weights], EPS,
                                        EPS, dtype)
        ref = mask_path.mask_embed_reference(masks.to(dtype), *[w.to(dtype) for w in weights],
                                             EPS, EPS, torch.float32)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, atol=1e-3, rtol=2 * torch.finfo(dtype).eps)


def test_fast_allocates_about_the_output_only(upstream):
    """Bytes allocated per call (torch.profiler) <= 1.2x the output's; Meta's: ~2x."""
    meta = meta_module(upstream, 256, 16, grid=(32, 32))
    masks = random_masks(8, 128, 128)
    weights = weights_of(meta)
    out_bytes = 8 * 256 * 32 * 32 * 4
    with torch.inference_mode():
        ours = measure.bytes_allocated(
            lambda m: mask_path.mask_embed_fast(m, *weights, EPS, EPS, torch.float32),
            (masks,), "cpu")["bytes_allocated"]
        theirs = measure.bytes_allocated(meta.mask_downscaling, (masks,), "cpu")["bytes_allocated"]
    assert out_bytes <= ours <= 1.2 * out_bytes, (ours, out_bytes)
    assert theirs > 1.5 * out_bytes, theirs


def test_fast_refuses_autograd(upstream):
    """It writes through ``out=``: PyTorch raises when an input needs a gradient under grad
    mode (never a silently detached result); under no_grad it runs."""
    meta = meta_module(upstream, 32, 8)
    masks = random_masks(1, 8, 8)
    params = weights_of(meta, detach=False)
    with pytest.raises(RuntimeError, match="out="):
        mask_path.mask_embed_fast(masks, *params, EPS, EPS, torch.float32)
    with pytest.raises(RuntimeError, match="out="):
        mask_path.mask_embed_fast(masks.requires_grad_(), *weights_of(meta), EPS, EPS,
                                  torch.float32)
    with torch.no_grad():
        out = mask_path.mask_embed_fast(masks, *params, EPS, EPS, torch.float32)
    torch.testing.assert_close(out, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)


def test_fold_weights_is_recomputed_by_value(upstream):
    """Nothing weight-derived is kept: a ``.data`` write (no version bump) shows at once."""
    meta = meta_module(upstream, 32, 8)
    masks = random_masks(2, 8, 8)
    with torch.no_grad():
        mask_path.mask_embed_fast(masks, *weights_of(meta), EPS, EPS, torch.float32)
        meta.mask_downscaling[3].weight.data.mul_(-0.5)
        out = mask_path.mask_embed_fast(masks, *weights_of(meta), EPS, EPS, torch.float32)
    torch.testing.assert_close(out, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_argument(upstream):
    meta = meta_module(upstream, 32, 8)
    w = list(weights_of(meta))
    masks = random_masks(1, 8, 8)
    cases = [
        ((masks[:, 0], *w), ValueError, "masks must be \\[B, 1, Hm, Wm\\]"),
        ((masks.expand(1, 2, 8, 8), *w), ValueError, "masks must be \\[B, 1, Hm, Wm\\]"),
        ((masks[..., :3], *w), ValueError, "at least 4x4"),
        ((masks > 0, *w), TypeError, "masks must have a floating dtype"),
        ((masks.tolist(), *w), TypeError, "masks must be a torch.Tensor"),
        ((masks, w[0][:1], *w[1:]), ValueError, "conv1_b must be \\[c4=1\\]"),
        ((masks, *w[:4], w[4][:, :1], *w[5:]), ValueError, "conv2_w must be"),
        ((masks, *w[:8], w[8][..., 0], w[9]), ValueError, "conv3_w must be"),
        ((masks, *w[:9], w[9][:-1]), ValueError, "conv3_b must be \\[C=32\\]"),
        ((masks, *w[:6], w[6].long(), *w[7:]), TypeError, "ln2_w must have a floating dtype"),
    ]
    impls = [mask_path.mask_embed_reference, mask_path.mask_embed_fast]
    if kernel_mask is not None:
        impls.append(kernel_mask.mask_embed_fwd)
    for impl in impls:
        for args, error, message in cases:
            with pytest.raises(error, match=message):
                impl(*args, EPS, EPS, torch.float32)
        with pytest.raises(ValueError, match="eps1 must be a finite float >= 0"):
            impl(masks, *w, -1.0, EPS, torch.float32)
        with pytest.raises(ValueError, match="eps2 must be a finite float >= 0"):
            impl(masks, *w, EPS, True, torch.float32)
        with pytest.raises(TypeError, match="out_dtype must be"):
            impl(masks, *w, EPS, EPS, torch.int32)


# ----------------------------------------------------------------------------- the Triton kernel
try:
    import triton
    import triton.language as tl

    from sam2_prompt.kernels import mask as kernel_mask
except ModuleNotFoundError:  # no Triton: the kernel tests skip
    kernel_mask = None
else:
    @triton.jit
    def _gelu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        tl.store(out_ptr + offs, kernel_mask.gelu(x), mask=offs < n)


triton_only = pytest.mark.skipif("not _kernel_module()", reason="Triton (interpreter) unavailable")


def _kernel_module():
    """sam2_prompt.kernels.mask when its kernel runs under the interpreter, else None."""
    if kernel_mask is None or not kernel_mask.interpreting(kernel_mask._mask_embed_kernel):
        return None
    return kernel_mask


@pytest.fixture
def kernel(monkeypatch):
    """sam2_prompt.kernels.mask with its launches counted (each call must launch once)."""
    module = _kernel_module()
    launches = []
    original = module.launch

    def counted(*args, **kwargs):
        launches.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "launch", counted)
    monkeypatch.setattr(module, "launches", launches, raising=False)
    return module


@triton_only
@pytest.mark.parametrize("embed_dim,chans,height,width,batch", CONFIGS)
def test_kernel_matches_meta(upstream, kernel, embed_dim, chans, height, width, batch):
    meta = meta_module(upstream, embed_dim, chans)
    masks = random_masks(batch, height, width)
    expected = meta_forward(meta, masks)
    for name, layout in layouts(masks).items():
        out = kernel.mask_embed_fwd(layout, *weights_of(meta), EPS, EPS, torch.float32)
        assert out.is_contiguous() and out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=FP32_ATOL, rtol=0, msg=name)
    assert len(kernel.launches) == 3


@pytest.mark.parametrize("c4,chans,embed_dim", [(1, 1, 3), (3, 5, 7)])
def test_any_channel_counts_against_fp64(c4, chans, embed_dim):
    """Channel counts Meta's module never pairs (c4 != c // 4, odd, below 4): the fast path and
    the kernel against the reference in fp64."""
    gen = torch.Generator().manual_seed(c4)
    shapes = [(c4, 1, 2, 2), (c4,), (c4,), (c4,), (chans, c4, 2, 2), (chans,), (chans,),
              (chans,), (embed_dim, chans, 1, 1), (embed_dim,)]
    weights = [torch.randn(s, generator=gen) for s in shapes]
    masks = random_masks(3, 9, 13)
    oracle = mask_path.mask_embed_reference(masks.double(), *[w.double() for w in weights], EPS,
                                            EPS, torch.float64)
    impls = [mask_path.mask_embed_fast] + ([kernel_mask.mask_embed_fwd] if _kernel_module() else [])
    for impl in impls:
        out = impl(masks, *weights, EPS, EPS, torch.float32)
        torch.testing.assert_close(out.double(), oracle, atol=2e-5, rtol=0)


@triton_only
def test_kernel_batches_of_0_1_64(upstream, kernel):
    meta = meta_module(upstream, 32, 16)
    weights = weights_of(meta)
    empty = kernel.mask_embed_fwd(torch.zeros(0, 1, 16, 16), *weights, EPS, EPS, torch.float32)
    assert empty.shape == (0, 32, 4, 4) and not kernel.launches
    for batch in (1, 64):
        masks = random_masks(batch, 16, 20, seed=batch)
        out = kernel.mask_embed_fwd(masks, *weights, EPS, EPS, torch.float32)
        torch.testing.assert_close(out, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)


@triton_only
def test_kernel_gpu_tiles(upstream, kernel, monkeypatch):
    """The GPU's tile configuration (one mask and one channel per store, PPT pixels per thread)
    under the interpreter too: several programs per plane, a partial last block."""
    meta = meta_module(upstream, 8, 16, grid=(5, 30))
    masks = random_masks(2, 20, 120)  # 150 pixels per plane, 128 per program below
    gpu_config = kernel.tile_config(2, 150, 8, 16, 4, interpret=False)
    assert gpu_config[0] == 1 and gpu_config[2] == 1
    monkeypatch.setattr(kernel, "tile_config", lambda *args: (1, 128, 1))
    out = kernel.mask_embed_fwd(masks, *weights_of(meta), EPS, EPS, torch.float32)
    torch.testing.assert_close(out, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)


@triton_only
def test_kernel_dtypes(upstream, kernel):
    """bf16 / fp16 masks and weights, any output dtype: fp32 arithmetic, rounded once (to
    nearest even: within half an ulp of the fp32 reference, up to its own ~1e-5 error)."""
    meta = meta_module(upstream, 32, 16)
    masks = random_masks(2, 16, 16)
    for in_dtype in (torch.float32, torch.bfloat16, torch.float16):
        args = [masks.to(in_dtype)] + [w.detach().to(in_dtype) for w in weights_of(meta)]
        ref = mask_path.mask_embed_reference(*args, EPS, EPS, torch.float32)
        for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
            out = kernel.mask_embed_fwd(*args, EPS, EPS, out_dtype)
            assert out.dtype == out_dtype
            half_ulp = ref.abs() * torch.finfo(out_dtype).eps / 2
            assert ((out.float() - ref).abs() <= half_ulp + 1e-4).all(), (in_dtype, out_dtype)
    with pytest.raises(TypeError, match="out_dtype must be one of"):
        kernel.mask_embed_fwd(masks, *weights_of(meta), EPS, EPS, torch.float64)


@triton_only
def test_kernel_gelu_is_exact():
    """The kernel's erf-form GELU against fp64 erf on a dense grid and at special values: within
    ~1 ulp of |y| (torch's own F.gelu is off by as much)."""
    y = torch.cat([torch.linspace(-12, 12, 200001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.9, 5.5, -5.6, 100.0, -100.0,
                                 float("inf"), float("-inf"), float("nan")])])
    out = torch.empty_like(y)
    _gelu_kernel[(triton.cdiv(y.numel(), 4096),)](y, out, y.numel(), BLOCK=4096)
    exact = F.gelu(y.double())
    finite = y.isfinite()
    err = (out.double() - exact).abs()[finite]
    assert (err <= 1.2e-7 * y.double().abs()[finite].clamp(min=1.0)).all(), err.max()
    torch.testing.assert_close(out[-3:], F.gelu(y[-3:]), equal_nan=True)  # inf, NaN, NaN


# ----------------------------------------------------------------------------- static quality
STATIC = textwrap.dedent("""
    import json, sys
    import torch
    from sam2_prompt.kernels import aot, mask

    keys = []  # the compiled specialisation must not change with the batch size
    for batch in (1, 7, 64):
        with mask.recorded_launches() as calls:
            mask.mask_embed_fwd(*mask.example_inputs(batch=batch), 1e-6, 1e-6, torch.float32)
        kernel, _, args, kwargs = calls[0]
        keys.append(repr(aot._specialise(kernel, args, kwargs)))

    # the launcher traces (what triton_op under torch.compile / export needs): fake tensors,
    # symbolic sizes, one kernel in the graph
    from torch.fx.experimental.proxy_tensor import make_fx

    def embed(masks, *weights):
        return mask.mask_embed_fwd(masks, *weights, 1e-6, 1e-6, torch.bfloat16)

    example = mask.example_inputs(embed_dim=32, batch=2, grid=(8, 8))
    graph = make_fx(embed, tracing_mode="symbolic")(*example)
    launches = graph.code.count("triton_kernel_wrapper_mutation(")
    json.dump({"keys": keys, "traced_launches": launches}, open(sys.argv[1], "w"))
""")


def test_kernel_specialisation_and_tracing(tmp_path):
    """One compiled specialisation for every batch size; the launcher traces with make_fx (one
    kernel in the graph). The static report's mask rows are checked in test_aot.py."""
    pytest.importorskip("triton")
    env = env_without_interpreter()
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", STATIC, str(tmp_path / "out.json")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads((tmp_path / "out.json").read_text())
    assert len(set(data["keys"])) == 1, data["keys"]
    assert data["traced_launches"] == 1


@pytest.mark.skipif(kernel_mask is None, reason="Triton is not installed")
def test_fused_traffic_counts_each_byte_once():
    t = kernel_mask.fused_traffic(64, 256, 256, 256, 16, torch.float32, torch.float32)
    assert t["launches"] == 1
    assert t["written_bytes"] == 64 * 256 * 64 * 64 * 4
    weights = 7 * 4 + 4 * 4 * 16 + 3 * 16 + 256 * 17  # conv1 + LN1, conv2 + LN2, conv3
    assert t["read_bytes"] == 64 * 256 * 256 * 4 + weights * 4
    assert math.isclose(t["read_bytes"] / t["written_bytes"], 1 / 16, rel_tol=1e-2)


# ----------------------------------------------------------------------------- the op and module
def module_twins(upstream, backend, activation=torch.nn.GELU, embed_dim=32, grid=(4, 6)):
    """Meta's PromptEncoder and ours with the same N(0, 1) weights (non-square grid)."""
    from sam2_prompt import PromptEncoder

    torch.manual_seed(0)
    theirs = upstream[0](embed_dim, grid, (16 * grid[0], 16 * grid[1]), 16, activation)
    ours = PromptEncoder(embed_dim, grid, (16 * grid[0], 16 * grid[1]), 16, activation,
                         backend=backend)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("size", ["small", "large"])
def test_module_runs_the_mask_op(upstream, backend, monkeypatch, size):
    """The module's mask path is one op with Meta's result (channels_last masks included): the
    fused kernel on the Triton path; on the PyTorch path the fast path for large outputs, the
    reference's ops for small ones (the threshold lowered here to keep the test small)."""
    calls, fast = [], []
    original, original_fast = mask_path._mask_embed, mask_path.mask_embed_fast
    monkeypatch.setattr(mask_path, "_mask_embed", lambda *a: calls.append(a[-1]) or original(*a))
    monkeypatch.setattr(mask_path, "mask_embed_fast",
                        lambda *a: fast.append(1) or original_fast(*a))
    if size == "large":
        monkeypatch.setattr(mask_path, "FAST_PATH_MIN_OUTPUTS", 1)
    theirs, ours = module_twins(upstream, backend)
    masks = random_masks(5, 16, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = theirs(None, None, masks)[1], ours(None, None, masks)[1]
    torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=0)
    assert calls == [backend == "triton"]
    assert len(fast) == (backend == "torch" and size == "large")


@pytest.mark.parametrize("change", ["ReLU", "tanh GELU", "forward hook", "replaced layer"])
def test_module_runs_its_own_layers_when_they_differ(upstream, change):
    """Another activation class, GELU's tanh form, a hook or a replaced layer: the fused op does
    not compute that, so the layers run (Meta's result, the hook fires)."""
    activation = torch.nn.ReLU if change == "ReLU" else torch.nn.GELU
    theirs, ours = module_twins(upstream, "torch", activation)
    fired = []
    for model in (theirs, ours):
        if change == "tanh GELU":
            model.mask_downscaling[2] = torch.nn.GELU(approximate="tanh")
        elif change == "forward hook":
            model.mask_downscaling[4].register_forward_hook(lambda *_: fired.append(1))
        elif change == "replaced layer":
            model.mask_downscaling[5] = torch.nn.SiLU()
    masks = random_masks(2, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(None, None, masks)[1], theirs(None, None, masks)[1],
                                   atol=FP32_ATOL, rtol=0)
    assert fired == ([1, 1] if change == "forward hook" else [])


def test_module_mask_gradients_and_double_backward(upstream, backend):
    """Gradients of every mask weight and of the masks through the op equal Meta's; the op's
    backward is differentiable (create_graph)."""
    theirs, ours = module_twins(upstream, backend)
    masks = random_masks(2, 16, 24)
    weight = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(3))
    grads = []
    for model in (theirs, ours):
        leaf = masks.clone().requires_grad_()
        dense = model(None, None, leaf)[1]
        (first,) = torch.autograd.grad((dense * weight).sum(), leaf, create_graph=True)
        first.square().sum().backward()
        grads.append([leaf.grad] + [p.grad for p in model.mask_downscaling.parameters()])
    for mine, want in zip(*grads):
        torch.testing.assert_close(mine, want, atol=1e-3, rtol=1e-3)
    if backend == "triton":  # the forward was the kernel (the fixture checks a launch)
        with torch.no_grad():
            ours(random_points_for(ours), None, None)


def random_points_for(model):
    return torch.rand(1, 1, 2) * 16, torch.ones(1, 1, dtype=torch.int32)


@pytest.mark.parametrize("tracing_mode", ["real", "symbolic"])
def test_tracers_see_the_mask_op(upstream, tracing_mode):
    """make_fx, torch.compile (no graph break) and torch.export record ``sam2_prompt::mask_embed``
    with the eager results."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from helpers import op_targets

    _, ours = module_twins(upstream, "torch")
    masks = random_masks(3, 16, 24)
    with torch.no_grad():
        eager = ours(None, None, masks)[1]
        graph = make_fx(lambda m: ours(None, None, m)[1], tracing_mode=tracing_mode,
                        _allow_non_fake_inputs=True)(masks)
    assert "sam2_prompt.mask_embed.default" in op_targets(graph)
    torch.testing.assert_close(graph(masks), eager)
    if tracing_mode == "real":
        explanation = torch._dynamo.explain(ours.forward)(None, None, masks)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(ours.forward, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            torch.testing.assert_close(compiled(None, None, masks)[1], eager, atol=1e-5, rtol=0)

        class Dense(torch.nn.Module):
            def __init__(self, encoder):
                super().__init__()
                self.encoder = encoder

            def forward(self, m):
                return self.encoder(None, None, m)[1]

        program = torch.export.export(Dense(ours), (masks,))
        assert "sam2_prompt.mask_embed.default" in op_targets(program.graph_module)
        torch.testing.assert_close(program.module()(masks), eager)


def test_opcheck_mask_op(upstream):
    theirs, _ = module_twins(upstream, "torch")
    weights = tuple(w.detach().clone().requires_grad_() for w in weights_of(theirs))
    masks = random_masks(2, 16, 24).requires_grad_()
    torch.library.opcheck(mask_path.mask_embed_op,
                          (masks, *weights, EPS, EPS, torch.float32, False))
