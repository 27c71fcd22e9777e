"""The host path of an eager call on the Triton path (issue 11): what a CUDA call runs before the
GPU sees the launch.

Two halves:

- Under the fake CUDA driver (``ops.fake_cuda_launches``, in a child process without
  TRITON_INTERPRET, kernels compiled for sm_90 once per module): the module's forward takes the
  CUDA path on CPU tensors and really launches (the fake launcher counts launches and checks the
  argument count), repeated eager calls launch the cached binary through a plan without
  ``JITFunction.run``, a new specialisation (another dtype, width, an unaligned weight) still
  compiles, and every planned launch is checked against Triton's own specialisation
  (``lean_launch.VERIFY_PLANS``). Outputs are never written there: results are tested below.
- Under the interpreter (in process): the eager, checked launcher path gives the kernels'
  results for unusual weights (unaligned storage bases, strided rows) and falls back to the full
  validation (its clear errors) for weights it does not expect.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import env_without_interpreter, random_boxes, random_points, twins
from sam2_prompt import PromptEncoder

triton = pytest.importorskip("triton")

from sam2_prompt.kernels import sparse  # noqa: E402

EMBED, EMB, IMAGE = 64, (16, 16), (256, 256)

FAKE = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    from sam2_prompt import PromptEncoder, ops
    from sam2_prompt.bench import host
    from sam2_prompt.kernels import lean_launch, sparse

    lean_launch.VERIFY_PLANS = True  # every planned launch checked against Triton's key
    kernel = sparse._sparse_embed_fwd_kernel
    runs = []
    run = kernel.run

    def counted_run(*args, **kwargs):
        runs.append(1)
        return run(*args, **kwargs)

    kernel.run = counted_run
    launcher_args = []

    def encoder(embed_dim=256, dtype=torch.float32, backend="auto"):
        torch.manual_seed(0)
        return PromptEncoder(embed_dim, (64, 64), (1024, 1024), 16, backend=backend).to(dtype)

    def prompts(batch, num_points, dtype=torch.int32):
        return (torch.rand(batch, num_points, 2) * 1024,
                torch.randint(0, 2, (batch, num_points)).to(dtype))

    out = {"backend_outside": encoder().backend}
    with ops.fake_cuda_launches(90) as fake, torch.no_grad():
        Launcher = fake.launcher_cls

        class Counting(Launcher):  # the argument count each launch sees
            def __call__(self, *args):
                launcher_args.append(len(args) - 9)
                return super().__call__(*args)

        fake.launcher_cls = Counting
        model = encoder()
        out["backend_inside"] = model.backend
        steps = []

        def step(name, fn):
            before_runs, before_launches = len(runs), fake.launches
            result = fn()
            cache = lean_launch._cache_for(kernel)
            steps.append((name, len(runs) - before_runs, fake.launches - before_launches,
                          len(cache.planned)))
            return result

        sparse_out, dense = step("first click", lambda: model(prompts(1, 1), None, None))
        out["click_shapes"] = [list(sparse_out.shape), list(dense.shape)]
        step("click again", lambda: model(prompts(1, 1), None, None))
        step("64 x 3", lambda: model(prompts(64, 3), None, None))
        step("points + boxes", lambda: model(prompts(5, 2), torch.rand(5, 4) * 1024, None))
        step("box only", lambda: model(None, torch.rand(3, 4) * 1024, None))
        step("int64 labels", lambda: model(prompts(2, 2, torch.int64), None, None))
        step("int64 labels again", lambda: model(prompts(3, 1, torch.int64), None, None))
        step("sliced coords", lambda: model((torch.rand(4, 6, 2)[:, ::2] * 1024,
                                             torch.ones(4, 3, dtype=torch.int32)), None, None))
        bf16 = encoder(dtype=torch.bfloat16)
        step("bf16 module", lambda: bf16(prompts(2, 2), None, None))
        step("bf16 module again", lambda: bf16(prompts(7, 1), None, None))
        narrow = encoder(embed_dim=64)
        step("C = 64", lambda: narrow(prompts(2, 2), None, None))
        step("C = 64 again", lambda: narrow(prompts(2, 5), None, None))
        buffer = bytearray(257 * 4 + 32)
        base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
        moved = torch.frombuffer(buffer, dtype=torch.float32, count=256,
                                 offset=(4 - base) % 16).view(1, 256)
        moved.copy_(model.not_a_point_embed.weight)
        model.not_a_point_embed.weight = nn.Parameter(moved)
        step("unaligned not_a_point", lambda: model(prompts(1, 1), None, None))
        step("unaligned again", lambda: model(prompts(2, 1), None, None))
        out["steps"] = steps
        out["launcher_args"] = sorted(set(launcher_args))
        out["kernel_params"] = len(kernel.params)
        clicks = prompts(1, 1)
        out["python_calls"] = host.python_calls(lambda: model(clicks, None, None))
    out["gate_restored"] = ops._launch_device_types == ("cuda",)
    out["backend_after"] = encoder().backend
    out["host_rows"] = host.measure_host(1, cases=(("click", 1, 1),))[0]
    json.dump(out, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def fake_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("host") / "out.json"
    env = env_without_interpreter()
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", FAKE, str(out)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def test_the_gate_treats_cpu_as_cuda_only_inside_the_fake(fake_path):
    assert fake_path["backend_outside"] == "torch"  # auto on CPU tensors
    assert fake_path["backend_inside"] == "triton"  # as on CUDA tensors
    assert fake_path["gate_restored"] and fake_path["backend_after"] == "torch"


def test_eager_calls_launch_a_planned_binary(fake_path):
    """Steps: (name, JITFunction.run calls, launches, plans). Each call launches once with every
    kernel argument; after its first call a specialisation launches without ``run``; new
    prompt sizes, strides and label dtypes of the same binary add a plan, never a compile."""
    steps = {name: rest for name, *rest in fake_path["steps"]}
    assert fake_path["click_shapes"] == [[1, 2, 256], [1, 256, 64, 64]]
    assert all(launches == 1 for _, launches, _ in steps.values())
    assert steps["first click"][:2] == [1, 1]
    assert steps["click again"] == [0, 1, steps["first click"][2]]
    for name in ("64 x 3", "points + boxes", "box only", "sliced coords"):
        assert steps[name][0] == 0, name  # the click's binary (new sizes and strides)
    assert steps["int64 labels again"][0] == 0
    assert fake_path["launcher_args"] == [fake_path["kernel_params"]]


def test_new_specialisations_compile_then_go_lean(fake_path):
    steps = {name: rest for name, *rest in fake_path["steps"]}
    for first, again in (("int64 labels", "int64 labels again"),
                         ("bf16 module", "bf16 module again"), ("C = 64", "C = 64 again"),
                         ("unaligned not_a_point", "unaligned again")):
        assert steps[first][0] == 1, first  # Triton's own path compiles the new variant
        assert steps[again][0] == 0, again


def test_python_calls_per_forward(fake_path):
    """The issue counted 381 Python function calls per forward on the Triton path."""
    assert fake_path["python_calls"] <= 50, fake_path["python_calls"]


def test_host_bench_measures_every_backend(fake_path):
    rows = fake_path["host_rows"]
    assert [r["backend"] for r in rows][:2] == ["triton", "torch"]
    assert all(r["case"] == "click" and r["host_us"] > 0 for r in rows)


# ----------------------------------------------------------------------------- interpreter
def _on_unaligned_base(t: torch.Tensor, misalign: int) -> torch.Tensor:
    buffer = bytearray(t.numel() * t.element_size() + 32)
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    out = torch.frombuffer(buffer, dtype=t.dtype, count=t.numel(),
                           offset=(misalign - base) % 16).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 == misalign
    return out


def _spy_constexprs(monkeypatch):
    """The (channels, out_dtype, ALIGNED, WIDE, image_h, image_w) of every planned forward
    launch (launch_checked, the modules' eager path) from now on."""
    calls = []
    original = sparse._eager_tail

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(sparse, "_eager_tail", spy)
    return calls


@pytest.mark.skipif(not sparse.interpreting(sparse._sparse_embed_fwd_kernel),
                    reason="runs the kernels under TRITON_INTERPRET=1 (see conftest.py)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checked_path_with_weights_on_unaligned_bases(upstream, monkeypatch, dtype):
    """The module's eager path decides the aligned variant from data_ptr() too: a not_a_point or
    Gaussian on a storage base off 16 bytes takes the unaligned variant, with the same result."""
    _, model = twins(upstream[0], EMBED, EMB, IMAGE, backend="triton")
    model = model.to(dtype)
    points, boxes = random_points(3, 4, image=IMAGE), random_boxes(3, image=IMAGE)
    calls = _spy_constexprs(monkeypatch)
    with torch.no_grad():
        aligned = model(points, boxes, None)[0]
        assert calls[-1][2] is True
        for module, name in ((model.not_a_point_embed, "weight"),
                             (model.pe_layer, "positional_encoding_gaussian_matrix")):
            original = getattr(module, name)
            moved = _on_unaligned_base(original.detach(), 4 if dtype == torch.float32 else 2)
            if name == "weight":
                setattr(module, name, torch.nn.Parameter(moved))
            else:
                setattr(module, name, moved)
            assert torch.equal(model(points, boxes, None)[0], aligned), name
            assert calls[-1][2] is False, name
            setattr(module, name, original)


@pytest.mark.skipif(not sparse.interpreting(sparse._sparse_embed_fwd_kernel),
                    reason="runs the kernels under TRITON_INTERPRET=1 (see conftest.py)")
def test_checked_path_reads_the_point_rows_in_place(upstream, monkeypatch):
    """The four point-embedding rows are read where they lie (row 0 and the element offsets of
    rows 1..3): no stacking copy, for rows wherever the allocator put them and for rows off 16
    bytes (the unaligned variant); the result is the PyTorch path's. Rows the launch cannot
    address (here: one of another dtype) are stacked first."""
    _, model = twins(upstream[0], EMBED, EMB, IMAGE, backend="triton")
    _, reference = twins(upstream[0], EMBED, EMB, IMAGE, backend="torch")
    points, boxes = random_points(3, 4, image=IMAGE), random_boxes(3, image=IMAGE)
    calls = _spy_constexprs(monkeypatch)
    cat, stacked = torch.cat, []

    def counting_cat(*args, **kwargs):
        stacked.append(1)
        return cat(*args, **kwargs)

    def check(stacks: bool):
        with torch.no_grad():
            want = reference(points, boxes, None)[0]
            stacked.clear()
            torch.testing.assert_close(model(points, boxes, None)[0], want, atol=2e-5, rtol=0)
        assert bool(stacked) == stacks

    monkeypatch.setattr(torch, "cat", counting_cat)
    check(stacks=False)  # the rows as the module allocated them
    # rows 1 element (4 bytes) apart from 16-byte boundaries, in reverse order in one buffer
    buffer = torch.zeros(4 * (EMBED + 4) + 1)
    for k, embed in enumerate(model.point_embeddings):
        at = 1 + (3 - k) * (EMBED + 4)
        buffer[at:at + EMBED] = embed.weight.detach()[0]
        embed.weight = torch.nn.Parameter(buffer[at:at + EMBED].view(1, EMBED))
    assert model.point_embeddings[0].weight.data_ptr() % 16 == 4
    check(stacks=False)
    assert calls[-1][2] is False  # ALIGNED
    for encoder in (model, reference):  # fp64 row 1: upstream's sum promotes, we stack first
        encoder.point_embeddings[1].weight = torch.nn.Parameter(
            encoder.point_embeddings[1].weight.detach().double())
    check(stacks=True)


@pytest.mark.skipif(not sparse.interpreting(sparse._sparse_embed_fwd_kernel),
                    reason="runs the kernels under TRITON_INTERPRET=1 (see conftest.py)")
def test_checked_path_falls_back_to_the_full_validation(upstream):
    """Weights the quick test does not expect take the validating launcher: strided rows are
    copied (same results as the PyTorch path), a Gaussian of the wrong width is a clear error."""
    _, model = twins(upstream[0], EMBED, EMB, IMAGE, backend="triton")
    _, reference = twins(upstream[0], EMBED, EMB, IMAGE, backend="torch")
    points = random_points(2, 3, image=IMAGE)
    strided = torch.zeros(1, 2 * EMBED)
    strided[:, ::2] = model.not_a_point_embed.weight.detach()
    model.not_a_point_embed.weight = torch.nn.Parameter(strided[:, ::2])
    assert model.not_a_point_embed.weight.stride(1) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(points, None, None)[0],
                                   reference(points, None, None)[0], atol=2e-5, rtol=0)
        model.pe_layer.positional_encoding_gaussian_matrix = torch.randn(2, EMBED // 4)
        with pytest.raises(ValueError, match="point_table must have shape"):
            model(points, None, None)


def test_prompt_reach_is_the_wide_offsets_rule():
    """launch_checked's int64 decision from sizes and strides it already read equals
    _wide_offsets's on the tensors (meta tensors: any strides, no memory)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch, points, boxes = (int(v) for v in torch.randint(1, 5, (3,), generator=gen))
        points -= 1  # 0 .. 3
        boxes -= 1
        strides = [int(v) for v in torch.randint(0, 2**31, (8,), generator=gen)
                   // torch.randint(1, 2**20, (8,), generator=gen)]
        coords = torch.empty_strided((batch, points, 2), strides[:3], device="meta")
        labels = torch.empty_strided((batch, points), strides[3:5], device="meta")
        box = torch.empty_strided((batch, boxes, 4), strides[5:], device="meta")
        reach = sparse._prompt_reach(batch, points, boxes, coords.stride(), labels.stride(),
                                     box.stride())
        assert (reach > 2**31 - 1) == sparse._wide_offsets(0, coords, labels, box)


def test_the_kernel_specialises_as_the_plan_assumes():
    if sparse.interpreting(sparse._sparse_embed_fwd_kernel):
        pytest.skip("the interpreter never plans (checked at import when compiled)")
    sparse._check_fwd_plan(sparse._sparse_embed_fwd_kernel)


def test_forward_without_grad_returns_upstreams_dense_view(upstream):
    """The dense output without a mask is one as_strided view under no_grad: the same values,
    shape, strides and storage offset as upstream's reshape/expand, for B = 0, 1 and more."""
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE)
    for batch in (0, 1, 3):
        points = random_points(batch, 2, image=IMAGE)
        with torch.no_grad():
            got, want = ours(points, None, None)[1], theirs(points, None, None)[1]
        assert got.shape == want.shape and got.stride() == want.stride()
        assert got.storage_offset() == want.storage_offset() and torch.equal(got, want)
        assert got.requires_grad == want.requires_grad and got.grad_fn is None
        if batch:  # a view of the weight, as upstream's
            assert got.data_ptr() == ours.no_mask_embed.weight.data_ptr()
    encoder = PromptEncoder(8, (1, 5), (16, 16), 4)
    with torch.no_grad():
        dense = encoder(random_points(1, 1, image=(16, 16)), None, None)[1]
    assert dense.stride() == encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
        1, -1, 1, 5).stride()
