"""Compiled kernels without a GPU: ahead-of-time compiles for every architecture the report covers,
and the host launch path under a fake CUDA driver.

Triton's compiler and the cuobjdump bundled in its wheel run on any Linux machine, so this runs in
CI. Everything runs in subprocesses without TRITON_INTERPRET (conftest.py sets it for the
interpreted tests, and the interpreter replaces @triton.jit kernels).

Compile time: the full report (``python -m sam2_prompt.kernels.aot``, 4 archs x 29 variants)
takes tens of minutes on 2 busy cores, so this compiles a representative subset per arch (the
main fp32 kernel, bf16 outputs at C = 256 and at the widest uneven width 320, the bf16 module, the
backward at C = 512, the fused mask kernel) plus the remaining kernels on sm_90: a few minutes on
2 cores, cold.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import env_without_interpreter

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARCHS = ("sm_80", "sm_90", "sm_100", "sm_120")

REPORT = textwrap.dedent("""
    import json, sys
    import torch
    from sam2_prompt.kernels import aot, sparse

    dump_dir, out_path, ARCHS = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    F32, BF16 = torch.float32, torch.bfloat16
    EVERY_ARCH = {("sparse_fwd", F32, F32, 256), ("sparse_fwd", BF16, F32, 256),
                  ("sparse_fwd", BF16, F32, 320), ("sparse_fwd", BF16, BF16, 256),
                  ("sparse_bwd", F32, F32, 512), ("mask_fwd", F32, F32, 256)}
    SM90_ONLY = {("sparse_fwd", BF16, BF16, 320), ("sparse_bwd", F32, F32, 256),
                 ("sparse_bwd_sum", F32, F32, 256), ("dense_pe", F32, F32, 256),
                 ("mask_fwd", BF16, F32, 256)}

    def key(v):
        return (v.kernel, v.out_dtype, v.weight_dtype, v.embed_dim)

    rows = aot.compile_variants(ARCHS, dump_dir, select=lambda v: key(v) in EVERY_ARCH)
    rows += aot.compile_variants(["sm_90"], dump_dir, select=lambda v: key(v) in SM90_ONLY)

    # The specialisation a launch compiles for, over prompts of different sizes: B, N, K, the
    # strides they imply and the inputs' alignment must never select a new kernel; box-only calls
    # (empty int32 labels, as the module passes) share the points' kernel.
    keys = []
    for batch, points, boxes, pad in [(1, 1, 0, True), (2, 3, 1, True), (7, 8, 3, True),
                                      (64, 17, 5, True), (5, 0, 2, True), (3, 0, 1, False)]:
        coords = torch.zeros(batch, points + 1, 2)[:, 1:]  # an unaligned view
        with aot._recorded_launches() as calls:
            sparse.sparse_embed_fwd(coords, torch.zeros(batch, points, dtype=torch.int32),
                                    torch.zeros(batch, boxes, 4), pad, torch.zeros(2, 128),
                                    torch.zeros(4, 256), torch.zeros(1, 256), 1024, 1024,
                                    torch.float32)
        kernel, _, args, kwargs = calls[0]
        keys.append(repr(aot._specialise(kernel, args, kwargs)))

    # The launchers trace (what triton_op under torch.compile / export needs): fake tensors,
    # symbolic sizes, no data access, no host sync.
    from torch.fx.experimental.proxy_tensor import make_fx
    from sam2_prompt.kernels import dense

    def prompt_encoder_math(coords, labels, boxes, gaussian, table, nap):
        out = sparse.sparse_embed_fwd(coords, labels, boxes, True, gaussian, table, nap, 1024,
                                      1024, torch.bfloat16)
        grads = sparse.sparse_embed_bwd(out, coords, labels, boxes, True, gaussian, 1024, 1024)
        return out, grads, dense.dense_pe(gaussian, 64, 64, torch.float32)

    example = (torch.zeros(2, 3, 2), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 1, 4),
               torch.zeros(2, 128), torch.zeros(4, 256), torch.zeros(1, 256))
    graph = make_fx(prompt_encoder_math, tracing_mode="symbolic")(*example)
    launches = graph.code.count("triton_kernel_wrapper_mutation(")
    json.dump({"rows": rows, "table": aot.format_table(rows), "keys": keys,
               "traced_launches": launches}, open(out_path, "w"))
""")


def _run(script, *argv, timeout=900):
    try:
        import triton  # noqa: F401
    except ModuleNotFoundError as err:
        if IN_CI:
            pytest.fail(f"Triton is required in CI: {err}")
        pytest.skip(f"Triton is not installed: {err}")
    env = env_without_interpreter()
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence Triton 3.9's notice; same code
    result = subprocess.run([sys.executable, "-c", script, *map(str, argv)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aot")
    _run(REPORT, tmp / "cubins", tmp / "out.json", ",".join(ARCHS))
    data = json.loads((tmp / "out.json").read_text())
    data["dump"] = tmp / "cubins"
    return data


def _row(report, kernel, arch, out, weights, embed_dim):
    (row,) = [r for r in report["rows"] if (r["kernel"], r["arch"], r["out_dtype"],
                                              r["weight_dtype"], r["embed_dim"])
              == (kernel, arch, out, weights, embed_dim)]
    return row


def test_every_row_compiles_without_spills(report):
    """No stack, no local memory, no STL/LDL (cuobjdump's recount, not the compiler's word);
    straight-line forward kernels; every key of a row present."""
    rows = report["rows"]
    assert {r["arch"] for r in rows} == set(ARCHS)
    keys = ("kernel", "arch", "out_dtype", "weight_dtype", "embed_dim", "num_warps",
            "elements_per_program", "cubin", "registers", "stack_bytes", "local_bytes",
            "spill_instructions", "shared_bytes", "sass_instructions", "backward_branches",
            "counted", "counted_instructions", "lane_instr_per_element", "widest_load_bits",
            "widest_store_bits", "model_gpu", "modelled_us_per_mpoint", "memory_bound_below",
            "modelled_h100_us_per_mpoint")
    for row in rows:
        assert all(k in row for k in keys), row
        assert (report["dump"] / row["cubin"]).is_file()
        assert row["sass_instructions"] > 0 and row["registers"] > 0
        assert row["stack_bytes"] == 0 and row["local_bytes"] == 0, row
        assert row["spill_instructions"] == 0, row
        if row["kernel"] in ("sparse_fwd", "dense_pe"):
            assert row["backward_branches"] == 0 and row["counted"] == "kernel", row
            assert row["widest_store_bits"] == 128, row
        elif row["kernel"] == "mask_fwd":  # a prologue, then the 1x1-conv loop: all of it counted
            assert row["backward_branches"] == 1 and row["counted"] == "executed", row
        else:
            assert row["counted"] == "loop body", row
    assert report["table"].count("\n") == len(rows) + 1


@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_forward_targets(report, arch):
    """fp32 (C = 256) <= 15 lane-instructions per element; the bf16 module <= 15 on sm_90 (16
    elsewhere); an uneven width within 1.2x of C = 256 for its dtype."""
    main = _row(report, "sparse_fwd", arch, "float32", "float32", 256)
    assert main["lane_instr_per_element"] <= 15, main
    module = _row(report, "sparse_fwd", arch, "bfloat16", "bfloat16", 256)
    assert module["lane_instr_per_element"] <= (15 if arch == "sm_90" else 16), module
    bf16 = _row(report, "sparse_fwd", arch, "bfloat16", "float32", 256)
    uneven = _row(report, "sparse_fwd", arch, "bfloat16", "float32", 320)
    assert uneven["lane_instr_per_element"] <= 1.2 * bf16["lane_instr_per_element"], uneven
    if arch == "sm_90":
        module_uneven = _row(report, "sparse_fwd", arch, "bfloat16", "bfloat16", 320)
        assert module_uneven["lane_instr_per_element"] <= 1.2 * module["lane_instr_per_element"]


@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_backward_targets(report, arch):
    """The backward's loop body: 128-bit grad loads, <= 30 lane-instructions per element, at
    C = 512 (the widest, most registers) without spills."""
    row = _row(report, "sparse_bwd", arch, "float32", "float32", 512)
    assert row["widest_load_bits"] == 128, row
    assert row["lane_instr_per_element"] <= 30, row
    if arch == "sm_90":
        assert _row(report, "sparse_bwd", arch, "float32", "float32", 256)[
            "lane_instr_per_element"] <= 30


@pytest.mark.parametrize("arch", ARCHS)
def test_mask_forward_targets(report, arch):
    """The fused mask path at SAM-2's shapes (C = 256, mask_in_chans 16): fp32 output stored 128
    bits at a time, every instruction counted as often as it runs; memory-bound on an H100 in the
    model (its modelled time is its bytes over 3.35 TB/s). On a B200 (8 TB/s) the model puts
    it just over the break-even: the report says so, the issue asks for the H100."""
    row = _row(report, "mask_fwd", arch, "float32", "float32", 256)
    assert row["widest_store_bits"] == 128, row
    assert row["modelled_h100_us_per_mpoint"] is not None, row
    if arch == "sm_90":
        assert row["lane_instr_per_element"] < row["memory_bound_below"], row
        assert row["model_gpu"] == "H100"
        bytes_per_pixel = 16 * 4 + 256 * 4  # a 4x4 fp32 patch read, 256 fp32 outputs written
        assert row["modelled_us_per_mpoint"] == round(bytes_per_pixel / 3.35e12 * 1e12, 1)
        bf16 = _row(report, "mask_fwd", arch, "bfloat16", "float32", 256)
        assert bf16["widest_store_bits"] >= 64, bf16


def test_model_columns(report):
    """The model uses gpus.py's figures: the H100 time of the main kernel is its bytes over
    3.35 TB/s (memory-bound: its lane-instructions are under the break-even)."""
    row = _row(report, "sparse_fwd", "sm_90", "float32", "float32", 256)
    assert row["model_gpu"] == "H100"
    assert row["lane_instr_per_element"] < row["memory_bound_below"]
    bytes_per_point = 12 + 256 * 4  # x, y, label, 256 fp32 outputs
    assert row["modelled_us_per_mpoint"] == round(bytes_per_point / 3.35e12 * 1e12, 1)
    assert row["modelled_h100_us_per_mpoint"] == row["modelled_us_per_mpoint"]


def test_new_prompt_sizes_never_recompile(report):
    assert len(set(report["keys"])) == 1, report["keys"]


def test_launchers_trace_with_make_fx(report):
    """fwd, bwd and dense each appear as wrap_triton launches in a make_fx graph."""
    assert report["traced_launches"] >= 3


# ----------------------------------------------------------------------------- host launch path
LAUNCH = textwrap.dedent("""
    import json, pathlib, sys, tempfile
    import torch
    import triton.language as tl
    from sam2_prompt.kernels import aot, dense, fake_driver, lean_launch, mask, sparse

    def click(table=None, out_dtype=torch.float32):
        gaussian = torch.randn(2, 32)
        return (torch.rand(1, 1, 2) * 1000, torch.ones(1, 1, dtype=torch.int32),
                torch.zeros(1, 0, 4), True, gaussian,
                torch.randn(4, 64) if table is None else table, torch.randn(1, 64), 1024, 1024,
                out_dtype)

    def recorded(args):
        with aot._recorded_launches() as calls:
            sparse.sparse_embed_fwd(*args)
        return calls[0]

    results = {}
    kernel = sparse._sparse_embed_fwd_kernel
    saved_caches = kernel.device_caches
    normal_runs = []
    run = kernel.run

    def counted_run(*args, **kwargs):
        normal_runs.append(1)
        return run(*args, **kwargs)

    kernel.run = counted_run
    with fake_driver.fake_cuda_driver(90) as fake:
        # the launchers themselves: one launch per forward, two for a multi-program backward
        out = sparse.sparse_embed_fwd(*click())
        results["fwd_launches"] = fake.launches
        grad = torch.zeros(64, 6, 64)
        coords, labels, boxes = torch.zeros(64, 3, 2), torch.zeros(64, 3, dtype=torch.int32), \\
            torch.zeros(64, 1, 4)
        sparse.sparse_embed_bwd(grad, coords, labels, boxes, True, torch.zeros(2, 32), 1024, 1024)
        results["bwd_launches"] = fake.launches - results["fwd_launches"]

        _, grid, args, kwargs = recorded(click())
        steps = []

        def step(name, grid, *args, **kwargs):
            before_runs, before_launches = len(normal_runs), fake.launches
            lean_launch.launch(kernel, grid, *args, **kwargs)
            steps.append((name, len(normal_runs) - before_runs, fake.launches - before_launches,
                          lean_launch.cached_binaries(kernel)))

        step("first", grid, *args, **kwargs)
        step("again", grid, *args, **kwargs)
        _, grid1, args1, kwargs1 = recorded(click())
        step("other inputs", grid1, *args1, **kwargs1)
        buffer = bytearray(4 * 64 * 4 + 32)
        base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
        unaligned = torch.frombuffer(buffer, dtype=torch.float32, count=256,
                                     offset=(4 - base) % 16).view(4, 64)
        _, grid2, args2, kwargs2 = recorded(click(table=unaligned))
        step("unaligned table", grid2, *args2, **kwargs2)
        step("unaligned again", grid2, *args2, **kwargs2)
        step("num_warps 8", grid, *args, **dict(kwargs, num_warps=8))
        _, grid3, args3, kwargs3 = recorded(click(out_dtype=torch.bfloat16))
        step("bf16 output", grid3, *args3, **kwargs3)
        kernel._unsafe_update_src(kernel.src + "\\n")  # an edited kernel: new source hash
        step("edited source", grid, *args, **kwargs)
        results["steps"] = steps

        # Our kernels read no module-level global (their constants are local constexprs), so
        # there is nothing to re-check per launch. lean_launch still handles a kernel that does:
        # a global rebound to an equal value stays lean, a changed one takes run, which raises.
        results["kernel_globals"] = {}
        for name, jit in (("sparse_fwd", sparse._sparse_embed_fwd_kernel),
                          ("sparse_bwd", sparse._sparse_embed_bwd_kernel),
                          ("sum_partials", sparse._sum_partials_kernel),
                          ("dense_pe", dense._dense_pe_kernel), ("mask", mask._mask_embed_kernel)):
            jit.cache_key  # computes used_global_vals
            results["kernel_globals"][name] = sorted(key for key, _ in jit.used_global_vals)
        folder = tempfile.mkdtemp()
        pathlib.Path(folder, "global_kernel.py").write_text(
            "import triton\\nimport triton.language as tl\\n\\nSCALE = tl.constexpr(2.0)\\n\\n\\n"
            "@triton.jit\\ndef scaled(out_ptr):\\n    tl.store(out_ptr, SCALE)\\n")
        sys.path.insert(0, folder)
        import global_kernel

        scaled, scaled_runs, scaled_steps, scaled_out = global_kernel.scaled, [], [], torch.empty(1)
        scaled_run = scaled.run

        def counted_scaled_run(*args, **kwargs):
            scaled_runs.append(1)
            return scaled_run(*args, **kwargs)

        scaled.run = counted_scaled_run

        def scaled_step(name):
            before_runs, before_launches = len(scaled_runs), fake.launches
            lean_launch.launch(scaled, (1,), scaled_out)
            scaled_steps.append((name, len(scaled_runs) - before_runs,
                                 fake.launches - before_launches))

        scaled_step("first")
        scaled_step("again")
        global_kernel.SCALE = tl.constexpr(2.0)  # rebound, equal: still lean
        scaled_step("equal global")
        global_kernel.SCALE = tl.constexpr(3.0)  # changed: run's own check must raise
        try:
            lean_launch.launch(scaled, (1,), scaled_out)
            results["changed_global"] = "launched"
        except RuntimeError as err:
            results["changed_global"] = str(err)
        results["global_steps"] = scaled_steps
        under_fake = [c for cache, *_ in kernel.device_caches.values() for c in cache.values()]
    results["caches_restored"] = kernel.device_caches is saved_caches
    results["handles_dropped"] = all(c.module is None for c in under_fake)
    json.dump(results, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def launch_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("launch") / "out.json"
    _run(LAUNCH, out, timeout=600)
    return json.loads(out.read_text())


def test_launchers_under_the_fake_driver(launch_path):
    """The real binder, compile and launch path run without a GPU: one launch per forward, the
    backward's kernel and its summing kernel."""
    assert launch_path["fwd_launches"] == 1
    assert launch_path["bwd_launches"] == 2


def test_lean_launch_reuses_exactly_the_binaries_triton_would(launch_path):
    """Steps: (name, calls of JITFunction.run, launches, binaries cached). A new specialisation
    (alignment, num_warps, a constexpr) or an edited source takes Triton's own
    path; everything else launches the cached binary directly, once."""
    steps = {name: rest for name, *rest in launch_path["steps"]}
    assert steps["first"] == [1, 1, 1]
    assert steps["again"] == [0, 1, 1]
    assert steps["other inputs"] == [0, 1, 1]  # new values, same specialisation
    assert steps["unaligned table"] == [1, 1, 2]
    assert steps["unaligned again"] == [0, 1, 2]
    assert steps["num_warps 8"] == [1, 1, 3]
    assert steps["bf16 output"] == [1, 1, 4]
    assert steps["edited source"][0] == 1 and steps["edited source"][2] == 1


def test_kernels_read_no_globals(launch_path):
    """Every constant is a local constexpr: Triton (and lean_launch) re-check each global a
    kernel reads on every launch, a cost on every click."""
    assert launch_path["kernel_globals"] == {
        "sparse_fwd": [], "sparse_bwd": [], "sum_partials": [], "dense_pe": [], "mask": []}


def test_lean_launch_rechecks_a_kernels_globals(launch_path):
    """(name, calls of JITFunction.run, launches) for a kernel that reads a module-level global:
    rebound to an equal value it stays lean; changed, Triton's own check raises."""
    steps = {name: rest for name, *rest in launch_path["global_steps"]}
    assert steps == {"first": [1, 1], "again": [0, 1], "equal global": [0, 1]}
    assert "SCALE" in launch_path["changed_global"]


def test_fake_driver_leaves_no_trace(launch_path):
    assert launch_path["caches_restored"] and launch_path["handles_dropped"]
