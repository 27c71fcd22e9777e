"""The Triton kernels (run by Triton's interpreter on CPU tensors) against fp64 oracles.

tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported and NaN-fills every fresh
floating allocation (``torch.empty``), so an output element a kernel forgets to write shows up as
NaN. Shapes stay small: the interpreter runs each program as numpy calls.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from sam2_prompt import reference  # noqa: E402
from sam2_prompt.kernels import dense, sparse  # noqa: E402

if not sparse.interpreting(sparse._sparse_embed_fwd_kernel):
    pytest.skip("these tests run the kernels under TRITON_INTERPRET=1 (see conftest.py)",
                allow_module_level=True)

FP32_ATOL = 4e-6  # max abs error of fp32 outputs against fp64
IMAGES = [(1024, 1024), (768, 1366)]
LOW = {torch.float16: 2.0**-7, torch.bfloat16: 2.0**-10}  # below: the fp32 abs bound is > 1 ulp


# ----------------------------------------------------------------------------- oracles and helpers
def oracle(coords, labels, boxes, pad, gaussian, table, nap, image_h, image_w):
    """The spec in fp64, written independently of both implementations (autograd-able)."""
    batch, num_points = labels.shape
    f64 = torch.float64
    xy = torch.cat([coords.to(f64), torch.zeros(batch, int(pad), 2, dtype=f64),
                    boxes.to(f64).reshape(batch, 2 * boxes.shape[1], 2)], 1)
    corner_labels = torch.tensor([2.0, 3.0], dtype=f64).repeat(boxes.shape[1])
    lab = torch.cat([labels.to(f64), torch.full((batch, int(pad)), -1.0, dtype=f64),
                     corner_labels.expand(batch, -1)], 1)
    keep = lab != -1
    xy = torch.where(keep[..., None], xy, 0.0)
    u = 2 * (xy[..., 0] + 0.5) / image_w - 1
    v = 2 * (xy[..., 1] + 0.5) / image_h - 1
    g = gaussian.to(f64)
    angle = 2 * math.pi * (u[..., None] * g[0] + v[..., None] * g[1])
    pe = torch.cat([angle.sin(), angle.cos()], -1)
    in_table = (lab >= 0) & (lab <= 3) & (lab == lab.floor())
    rows = table.to(f64)[torch.where(in_table, lab, 0.0).long()]
    out = pe + torch.where(in_table[..., None], rows, 0.0)
    return torch.where(keep[..., None], out, nap.to(f64).expand_as(out))


def reference_fwd(coords, labels, boxes, pad, gaussian, table, nap, image_h, image_w, dtype):
    cast = (lambda t: t.double()) if dtype == torch.float64 else (lambda t: t)
    return reference.sparse_embed(cast(coords), cast(labels), cast(boxes), pad, cast(gaussian),
                                  cast(table), cast(nap), image_h, image_w, dtype)


def ulp_distance(a, b):
    """Representable 16-bit floats between a and b (0: equal, 1: neighbours)."""
    def ordered(t):
        bits = t.view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    return (ordered(a) - ordered(b)).abs()


def assert_low_precision(out, exact):
    """One ulp of the correctly rounded fp64 value; where the 16-bit spacing is finer than the
    fp32 arithmetic (|v| < LOW), the fp32 absolute bound instead."""
    distance = ulp_distance(out, exact.to(out.dtype))
    big = exact.abs() >= LOW[out.dtype]
    assert distance[big].max() <= 1, distance[big].max()
    if not big.all():
        assert (out.double() - exact)[~big].abs().max() <= FP32_ATOL


def make_prompts(batch, num_points, num_boxes, image=(1024, 1024), seed=0, margin=64.0):
    gen = torch.Generator().manual_seed(seed)
    h, w = image
    span = torch.tensor([w + 2 * margin, h + 2 * margin])
    coords = torch.rand(batch, num_points, 2, generator=gen) * span - margin
    labels = torch.randint(-1, 5, (batch, num_points), generator=gen)  # 4: no table row
    boxes = torch.rand(batch, num_boxes, 4, generator=gen) * torch.tensor([w, h, w, h])
    return coords, labels, boxes


def make_params(channels, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(2, channels // 2, generator=gen)
    table = torch.randn(4, channels, generator=gen)
    nap = torch.randn(1, channels, generator=gen)
    return gaussian.to(dtype), table.to(dtype), nap.to(dtype)


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("image", IMAGES)
def test_fwd_accuracy_sweep(image):
    """A few thousand tokens, C = 256, coordinates in [-64, W + 64]: fp32 within 4e-6 of fp64,
    bf16 / fp16 within one ulp of the correctly rounded value."""
    gaussian, table, nap = make_params(256)
    coords, labels, boxes = make_prompts(1, 1500, 3, image, seed=sum(image))
    exact = oracle(coords, labels, boxes, True, gaussian, table, nap, *image)
    assert torch.allclose(exact, reference_fwd(coords, labels, boxes, True, gaussian, table, nap,
                                               *image, torch.float64), atol=1e-12, rtol=0)
    out = sparse.sparse_embed_fwd(coords, labels, boxes, True, gaussian, table, nap, *image,
                                  torch.float32)
    assert out.shape == exact.shape and out.dtype == torch.float32
    assert (out.double() - exact).abs().max() <= FP32_ATOL
    torch.testing.assert_close(out, reference_fwd(coords, labels, boxes, True, gaussian, table, nap,
                                                  *image, torch.float32), atol=1e-5, rtol=0)
    subset = (coords[:, :400], labels[:, :400], boxes, True, gaussian, table, nap, *image)
    for dtype in (torch.bfloat16, torch.float16):
        half = sparse.sparse_embed_fwd(*subset, dtype)
        assert half.dtype == dtype
        assert_low_precision(half, oracle(*subset))


@pytest.mark.parametrize("batch,num_points,num_boxes,pad,channels", [
    (0, 3, 1, True, 64),  # no prompts
    (2, 0, 0, False, 64),  # no tokens
    (2, 0, 0, True, 64),  # padding only
    (2, 0, 2, False, 96),  # boxes only, C not a power of two
    (3, 5, 2, True, 200),
    (3, 5, 2, False, 256),
    (4, 1, 0, True, 2),  # the smallest embedding
])
def test_fwd_shapes(batch, num_points, num_boxes, pad, channels):
    gaussian, table, nap = make_params(channels)
    coords, labels, boxes = make_prompts(batch, num_points, num_boxes)
    out = sparse.sparse_embed_fwd(coords, labels, boxes, pad, gaussian, table, nap, 1024, 1024,
                                  torch.float32)
    tokens = num_points + int(pad) + 2 * num_boxes
    assert out.shape == (batch, tokens, channels) and out.is_contiguous()
    exact = oracle(coords, labels, boxes, pad, gaussian, table, nap, 1024, 1024)
    assert not out.isnan().any()  # every element written (allocations start as NaN)
    if out.numel():
        assert (out.double() - exact).abs().max() <= FP32_ATOL


def test_fwd_input_dtypes_and_strides():
    """Transposed / sliced views; int, fp16, fp64 coordinates; float labels; bf16 parameters."""
    gaussian, table, nap = make_params(64)
    coords, labels, boxes = make_prompts(3, 6, 2)
    coords, boxes = coords.round(), boxes.round()  # exact in every dtype below
    views = {
        "coords": coords.transpose(0, 1).contiguous().transpose(0, 1),
        "labels": torch.stack([labels, labels], -1)[..., 1],
        "boxes": boxes.transpose(1, 2).contiguous().transpose(1, 2),
    }
    assert not views["coords"].is_contiguous() and not views["labels"].is_contiguous()
    assert not views["boxes"].is_contiguous()
    exact = oracle(coords, labels, boxes, True, gaussian, table, nap, 768, 1366)
    cases = [
        (views["coords"], views["labels"], views["boxes"], gaussian, table, nap, FP32_ATOL),
        (coords.int(), labels.float(), boxes.double(), gaussian, table, nap, FP32_ATOL),
        (coords.double(), labels.to(torch.int16), boxes.half(), gaussian, table, nap, FP32_ATOL),
        (coords.half(), labels.double(), boxes.int(), gaussian, table, nap, FP32_ATOL),
        # a module cast to bf16: its parameters are rounded, the arithmetic stays fp32
        (coords, labels, boxes, gaussian.bfloat16(), table.bfloat16(), nap.bfloat16(), None),
    ]
    for c, lab, box, g, tab, na, atol in cases:
        out = sparse.sparse_embed_fwd(c, lab, box, True, g, tab, na, 768, 1366, torch.float32)
        if atol is None:
            want = oracle(coords, labels, boxes, True, g.double(), tab.double(), na.double(), 768,
                          1366)
            atol = FP32_ATOL
        else:
            want = exact
        assert (out.double() - want).abs().max() <= atol, (c.dtype, lab.dtype, box.dtype)


def test_fwd_label_rule():
    """-1: exactly not_a_point (NaN / inf coordinates too); 0..3 (2.0 counts): + table row;
    anything else (4, 7, -2, 0.5, NaN, huge): bare encoding, never an out-of-table read."""
    gaussian, table, nap = make_params(64)
    values = [-1, 0, 1, 2, 3, 2.0, 4, 7, -2, 0.5, float("nan"), 1e9, -1, -1]
    labels = torch.tensor([values], dtype=torch.float32)
    coords = torch.rand(1, len(values), 2) * 1000
    coords[0, -2] = float("nan")
    coords[0, -1] = float("inf")
    out = sparse.sparse_embed_fwd(coords, labels, torch.zeros(1, 0, 4), True, gaussian, table, nap,
                                  1024, 1024, torch.float32)
    pe = oracle(coords, torch.full_like(labels, 5.0), torch.zeros(1, 0, 4), False, gaussian, table,
                nap, 1024, 1024)[0]
    for i, label in enumerate(values):
        row = out[0, i].double()
        if label == -1:
            assert torch.equal(out[0, i], nap[0]), i
        elif label in (0, 1, 2, 3):
            assert (row - (pe[i] + table[int(label)].double())).abs().max() <= FP32_ATOL, i
        else:
            assert (row - pe[i]).abs().max() <= FP32_ATOL, i
    assert torch.equal(out[0, -1], nap[0])  # the padding token
    for dtype in (torch.bfloat16, torch.float16):
        low = sparse.sparse_embed_fwd(coords, labels.int(), torch.zeros(1, 0, 4), True, gaussian,
                                      table, nap, 1024, 1024, dtype)
        assert torch.equal(low[0, -1], nap[0].to(dtype))
        assert torch.equal(low[0, 0], nap[0].to(dtype))


def test_fwd_bf16_rounding_is_to_nearest_even():
    """The interpreter truncates fp32 -> bf16; the kernels spell out round-to-nearest-even."""
    gaussian, table, nap = make_params(64)
    coords, labels, boxes = make_prompts(2, 7, 1)
    args = (coords, labels, boxes, True, gaussian, table, nap, 1024, 1024)
    fp32 = sparse.sparse_embed_fwd(*args, torch.float32)
    assert torch.equal(sparse.sparse_embed_fwd(*args, torch.bfloat16), fp32.bfloat16())
    assert torch.equal(sparse.sparse_embed_fwd(*args, torch.float16), fp32.half())


@pytest.mark.parametrize("channels", [96, 192, 320, 384])
def test_fwd_widths_and_module_dtypes(channels):
    """Widths whose chunks split in two (96, 192, 384: 3 chunks = 2 + 1) or overshoot F (320):
    fp32 and 16-bit outputs of fp32 parameters, and a module cast to bf16 (bf16 rows read as
    words) or fp16."""
    gaussian, table, nap = make_params(channels, seed=channels)
    coords, labels, boxes = make_prompts(2, 5, 2, seed=channels)
    args = (coords, labels, boxes, True)
    exact = oracle(*args, gaussian, table, nap, 1024, 1024)
    out = sparse.sparse_embed_fwd(*args, gaussian, table, nap, 1024, 1024, torch.float32)
    assert (out.double() - exact).abs().max() <= FP32_ATOL
    for dtype in (torch.bfloat16, torch.float16):
        assert_low_precision(sparse.sparse_embed_fwd(*args, gaussian, table, nap, 1024, 1024,
                                                     dtype), exact)
        params = [t.to(dtype) for t in (gaussian, table, nap)]
        low = sparse.sparse_embed_fwd(*args, *params, 1024, 1024, dtype)
        assert_low_precision(low, oracle(*args, *params, 1024, 1024))


# ----------------------------------------------------------------------------- backward
def _grads_fp64(grad_out, coords, labels, boxes, pad, gaussian, table, nap, image_h, image_w):
    leaves = [t.double().requires_grad_() for t in (coords, boxes, table, nap)]
    out = oracle(leaves[0], labels, leaves[1], pad, gaussian, leaves[2], leaves[3], image_h,
                 image_w)
    out.backward(grad_out.double())
    return [t.grad for t in leaves]


def _assert_rel(actual, expected, tol=1e-4):
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    scale = expected.abs().max().clamp_min(1e-30)
    assert ((actual.double() - expected).abs().max() / scale) <= tol


@pytest.mark.parametrize("pad,channels,image", [(True, 64, (1024, 1024)),
                                                 (False, 96, (768, 1366))])
def test_bwd_matches_autograd_of_fp64_oracle(pad, channels, image):
    gaussian, table, nap = make_params(channels)
    coords, labels, boxes = make_prompts(3, 5, 2, image)
    labels[0, 0] = -1
    coords[0, 0] = float("nan")  # label -1: zero gradient, not NaN
    tokens = 5 + int(pad) + 4
    grad_out = torch.randn(3, tokens, channels)
    grads = sparse.sparse_embed_bwd(grad_out, coords, labels, boxes, pad, gaussian, *image)
    want = _grads_fp64(grad_out, coords, labels, boxes, pad, gaussian, table, nap, *image)
    want[0] = torch.nan_to_num(want[0], nan=0.0)
    assert torch.equal(grads[0][0, 0], torch.zeros(2))
    for got, expected in zip(grads, want):
        assert not got.isnan().any()
        _assert_rel(got, expected)
    ref = reference.sparse_embed_backward(grad_out.double(), coords.double(), labels.double(),
                                          boxes.double(), pad, gaussian.double(), *image)
    for got, expected in zip(grads, ref):
        _assert_rel(got, torch.nan_to_num(expected, nan=0.0))


def test_bwd_strided_grad_and_empty():
    gaussian, _, _ = make_params(64)
    coords, labels, boxes = make_prompts(2, 3, 1)
    grad_out = torch.randn(2, 64, 6).transpose(1, 2)  # [B, T, C] with channel stride T
    grads = sparse.sparse_embed_bwd(grad_out, coords, labels, boxes, True, gaussian, 1024, 1024)
    dense_grads = sparse.sparse_embed_bwd(grad_out.contiguous(), coords, labels, boxes, True,
                                          gaussian, 1024, 1024)
    assert all(torch.equal(a, b) for a, b in zip(grads, dense_grads))
    empty = sparse.sparse_embed_bwd(torch.randn(0, 6, 64), coords[:0], labels[:0], boxes[:0], True,
                                    gaussian, 1024, 1024)
    assert [tuple(g.shape) for g in empty] == [(0, 3, 2), (0, 1, 4), (4, 64), (1, 64)]
    assert torch.equal(empty[2], torch.zeros(4, 64)) and torch.equal(empty[3], torch.zeros(1, 64))


def test_bwd_is_deterministic_across_programs(monkeypatch):
    """More token blocks than programs: every program loops; two runs are bitwise equal."""
    monkeypatch.setattr(sparse, "BWD_MAX_PROGRAMS", 3)  # 38 token blocks over 3 programs
    gaussian, _, _ = make_params(32)
    coords, labels, boxes = make_prompts(1, 300, 0)
    grad_out = torch.randn(1, 301, 32)
    first = sparse.sparse_embed_bwd(grad_out, coords, labels, boxes, True, gaussian, 1024, 1024)
    second = sparse.sparse_embed_bwd(grad_out, coords, labels, boxes, True, gaussian, 1024, 1024)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    keep = labels != -1
    by_class = [grad_out[0, :300][labels[0] == k].double().sum(0) for k in range(4)]
    pads = grad_out[0, :300][~keep[0]].double().sum(0) + grad_out[0, 300].double()
    _assert_rel(first[2], torch.stack(by_class), 1e-5)
    _assert_rel(first[3], pads[None], 1e-5)


@pytest.mark.parametrize("channels,grad_dtype", [(320, torch.float32), (256, torch.bfloat16)])
def test_bwd_widths_and_grad_dtypes(channels, grad_dtype):
    """A width whose tiles overshoot F (320) and a bf16 grad_out (a bf16 module's backward)."""
    gaussian, table, nap = make_params(channels)
    coords, labels, boxes = make_prompts(2, 4, 1)
    grad_out = torch.randn(2, 4 + 1 + 2, channels).to(grad_dtype)
    grads = sparse.sparse_embed_bwd(grad_out, coords, labels, boxes, True, gaussian, 1024, 1024)
    want = _grads_fp64(grad_out, coords, labels, boxes, True, gaussian, table, nap, 1024, 1024)
    for got, expected in zip(grads, want):
        _assert_rel(got, torch.nan_to_num(expected, nan=0.0))


# ----------------------------------------------------------------------------- dense
@pytest.mark.parametrize("h,w", [(12, 20), (7, 5)])
def test_dense_matches_fp64(h, w):
    gaussian, _, _ = make_params(256, seed=3)
    exact = reference.dense_pe(gaussian.double(), h, w, torch.float64)
    out = dense.dense_pe(gaussian, h, w, torch.float32)
    assert out.shape == (256, h, w) and out.is_contiguous() and out.dtype == torch.float32
    assert (out.double() - exact).abs().max() <= FP32_ATOL
    torch.testing.assert_close(out, reference.dense_pe(gaussian, h, w, torch.float32), atol=1e-5,
                               rtol=0)
    for dtype in (torch.bfloat16, torch.float16):
        assert_low_precision(dense.dense_pe(gaussian, h, w, dtype), exact)
    strided = torch.cat([gaussian, gaussian], 1)[:, ::2]  # non-unit column stride
    assert torch.equal(dense.dense_pe(strided, h, w, torch.float32),
                       dense.dense_pe(strided.contiguous(), h, w, torch.float32))


def test_dense_empty_and_small_embed():
    gaussian, _, _ = make_params(2)
    assert dense.dense_pe(gaussian, 0, 5, torch.float32).shape == (2, 0, 5)
    out = dense.dense_pe(gaussian, 3, 3, torch.float16)
    exact = reference.dense_pe(gaussian.double(), 3, 3, torch.float64)
    assert_low_precision(out, exact)


# ----------------------------------------------------------------------------- launch choices
def _spy_launches(monkeypatch):
    """The keyword arguments (constexprs) of every launch from now on; the kernels still run."""
    calls = []
    launch = sparse.launch

    def spy(kernel, grid, *args, **kwargs):
        calls.append(kwargs)
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(sparse, "launch", spy)
    return calls


def _on_unaligned_base(t: torch.Tensor, misalign: int) -> torch.Tensor:
    """A copy of t whose storage itself starts ``misalign`` bytes past a 16-byte boundary (as
    from_blob or DLPack with a byte offset give): storage_offset() is 0, data_ptr() is not
    16-byte aligned."""
    buffer = bytearray(t.numel() * t.element_size() + 32)
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    offset = (misalign - base) % 16
    out = torch.frombuffer(buffer, dtype=t.dtype, count=t.numel(), offset=offset).view(t.shape)
    out.copy_(t)
    assert out.storage_offset() == 0 and out.data_ptr() % 16 == misalign
    return out


@pytest.mark.parametrize("dtype,misalign", [(torch.float32, 4), (torch.bfloat16, 2),
                                            (torch.bfloat16, 8)])
def test_unaligned_storage_base_takes_the_unaligned_variant(monkeypatch, dtype, misalign):
    """Rows are assumed 16-byte aligned (vector loads; bf16 rows read as 32-bit words) only when
    data_ptr() says so, not just the storage offset; the unaligned variant gives the same
    result."""
    calls = _spy_launches(monkeypatch)
    gaussian, table, nap = (t.to(dtype) for t in make_params(64))
    coords, labels, boxes = make_prompts(2, 5, 1)
    args = (coords, labels, boxes, True)
    aligned = sparse.sparse_embed_fwd(*args, gaussian, table, nap, 1024, 1024, dtype)
    assert calls[-1]["ALIGNED"]
    for name in ("table", "nap", "gaussian"):
        moved = dict(table=table, nap=nap, gaussian=gaussian)
        moved[name] = _on_unaligned_base(moved[name], misalign)
        out = sparse.sparse_embed_fwd(*args, moved["gaussian"], moved["table"], moved["nap"],
                                      1024, 1024, dtype)
        assert not calls[-1]["ALIGNED"], name
        assert torch.equal(out, aligned), name
    exact = oracle(*args, gaussian, table, nap, 1024, 1024)
    if dtype == torch.float32:
        assert (aligned.double() - exact).abs().max() <= FP32_ATOL
    else:
        assert_low_precision(aligned, exact)


def test_aligned_rows_rules():
    """Strides and offsets decide too; fake tensors (no data) fall back to the storage offset."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    table = torch.zeros(4, 64)
    assert sparse._aligned_rows(table)
    assert not sparse._aligned_rows(torch.zeros(4 * 64 + 1)[1:].view(4, 64))  # 4-byte offset
    assert not sparse._aligned_rows(torch.zeros(4, 65)[:, :63])  # 252-byte rows
    assert not sparse._aligned_rows(torch.zeros(64, 4).t())  # column stride 4
    with FakeTensorMode():
        fake = torch.zeros(4 * 64 + 4)
        assert sparse._aligned_rows(fake[:256].view(4, 64))
        assert sparse._aligned_rows(fake[4:].view(4, 64))  # 16-byte storage offset
        assert not sparse._aligned_rows(fake[1:257].view(4, 64))


def test_divisor_magic():
    """n // d == umulhi(2 n, magic) >> shift for every n < 2^31: exhaustive over small n and
    d, and at the edges (multiples of d and their neighbours, the largest n) for large d."""
    def divide(n, d):
        magic, shift = sparse.divisor_magic(d)
        return (((2 * n) * (magic % 2**32)) >> 32) >> shift

    for d in range(1, 300):
        assert all(divide(n, d) == n // d for n in range(0, 3000)), d
    gen = torch.Generator().manual_seed(0)
    divisors = [2**k + j for k in range(1, 31) for j in (-1, 0, 1)] + [3, 5, 7, 1000003]
    divisors += torch.randint(1, 2**31 - 1, (200,), generator=gen).tolist()
    for d in divisors:
        if not 1 <= d < 2**31:
            continue
        top = 2**31 - 1
        ns = [top, top - 1, 0, 1, d - 1, d, d + 1]
        ns += [q * d + r for q in (top // d, top // d - 1, 1, 7) for r in (-1, 0, 1, d - 1)]
        ns += torch.randint(0, top, (50,), generator=gen).tolist()
        for n in ns:
            if 0 <= n <= top:
                assert divide(n, d) == n // d, (n, d)
    with pytest.raises(ValueError, match="divisor"):
        sparse.divisor_magic(0)


def test_wide_offsets_and_plain_division(monkeypatch):
    """int64 offsets are chosen when an offset can reach 2^31 (judged from shapes and strides,
    here on meta tensors), and compute the same results as int32 ones; so does the plain
    division of rows by T (what a symbolic T gets) against the magic multiply."""
    assert not sparse._wide_offsets(2**31 - 1, torch.zeros(2, 3, 2))
    assert sparse._wide_offsets(2**31, torch.zeros(2, 3, 2))
    huge = torch.empty_strided((2, 3, 2), (2**31, 2, 1), device="meta")
    assert sparse._wide_offsets(10, torch.zeros(2, 3), huge)
    assert not sparse._wide_offsets(10, torch.empty(0, 2**31, 2, device="meta"))  # empty
    gaussian, table, nap = make_params(64)
    coords, labels, boxes = make_prompts(3, 5, 2)
    args = (coords, labels, boxes, True, gaussian, table, nap, 1024, 1024)
    narrow = sparse.sparse_embed_fwd(*args, torch.float32)
    grad_out = torch.randn_like(narrow)
    narrow_grads = sparse.sparse_embed_bwd(grad_out, *args[:5], 1024, 1024)
    calls = _spy_launches(monkeypatch)
    monkeypatch.setattr(sparse, "_wide_offsets", lambda *tensors: True)
    monkeypatch.setattr(sparse, "_row_split", lambda tokens: (0, 0, False))
    assert torch.equal(sparse.sparse_embed_fwd(*args, torch.float32), narrow)
    wide_grads = sparse.sparse_embed_bwd(grad_out, *args[:5], 1024, 1024)
    assert all(torch.equal(a, b) for a, b in zip(wide_grads, narrow_grads))
    assert len(calls) >= 2
    assert all(call["WIDE"] and not call["FAST_DIV"] for call in calls if "WIDE" in call)


@pytest.mark.parametrize("out_bytes", [4, 2])
def test_tile_config_covers_every_frequency(out_bytes):
    """Every width: the tiles cover F with 16-byte vectors (when F allows), at most 24
    frequencies per thread (12 in the backward), one token per thread and block."""
    for channels in list(range(2, 130, 2)) + [192, 200, 256, 320, 384, 512, 1024]:
        freqs = channels // 2
        for config, most in ((sparse.tile_config(channels, out_bytes), 24),
                             (sparse.bwd_tile_config(channels), 12)):
            span, chunks, chunks_b, block_t = config
            vec = min(16 // (out_bytes if most == 24 else 4), triton.next_power_of_2(freqs))
            threads_f = span // vec
            assert span % vec == 0 and threads_f * block_t == 32 * sparse.NUM_WARPS, channels
            assert (chunks + chunks_b) * span >= freqs, channels
            assert chunks & (chunks - 1) == 0 and chunks_b & (chunks_b - 1) == 0, channels
            assert (chunks + chunks_b) * vec <= most or threads_f == 32, channels


# ----------------------------------------------------------------------------- argument checks
def test_launchers_reject_bad_arguments():
    gaussian, table, nap = make_params(64)
    coords, labels, boxes = make_prompts(2, 3, 1)
    good = dict(point_coords=coords, point_labels=labels, boxes=boxes, pad=True, gaussian=gaussian,
                point_table=table, not_a_point=nap, image_h=1024, image_w=1024,
                out_dtype=torch.float32)
    bad = [
        (dict(point_coords=coords[..., :1]), ValueError, "point_coords"),
        (dict(point_labels=labels[:1]), ValueError, "point_labels"),
        (dict(boxes=boxes[..., :3]), ValueError, "boxes"),
        (dict(point_table=table[:, :32]), ValueError, "point_table"),
        (dict(not_a_point=nap[:, :3]), ValueError, "not_a_point"),
        (dict(gaussian=gaussian.int()), TypeError, "gaussian"),
        (dict(point_labels=labels.bool()), TypeError, "point_labels"),
        (dict(point_coords=coords.tolist()), TypeError, "point_coords"),
        (dict(out_dtype=torch.float64), TypeError, "out_dtype"),
        (dict(image_w=0), ValueError, "image_w"),
        (dict(pad=1), TypeError, "pad"),
    ]
    for change, error, name in bad:
        with pytest.raises(error, match=name):
            sparse.sparse_embed_fwd(**{**good, **change})
    with pytest.raises(ValueError, match="grad_out"):
        sparse.sparse_embed_bwd(torch.zeros(2, 5, 64), coords, labels, boxes, True, gaussian, 8, 8)
    with pytest.raises(ValueError, match="gaussian"):
        dense.dense_pe(gaussian[:1], 4, 4, torch.float32)
    with pytest.raises(ValueError, match="h must"):
        dense.dense_pe(gaussian, -1, 4, torch.float32)
