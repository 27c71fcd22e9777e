"""Ahead-of-time compilation of every kernel variant for sm_80 and sm_90, no GPU needed.

Triton's compiler and the cuobjdump bundled in its wheel run on any Linux machine, so this runs in
CI. The compilation runs in a subprocess without TRITON_INTERPRET (conftest.py sets it for the
interpreted tests, and the interpreter replaces @triton.jit kernels). It takes ~40 s on 2 cores.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import env_without_interpreter

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARCHS = ("sm_80", "sm_90")

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from sam2_prompt.kernels import aot, sparse

    dump_dir, out_path = sys.argv[1], sys.argv[2]
    rows = aot.compile_variants({archs!r}, dump_dir)

    # The specialisation a launch compiles for, over prompts of different sizes: B, N, K and the
    # strides they imply must never select a new kernel.
    keys = []
    for batch, points, boxes, pad in [(1, 1, 0, True), (2, 3, 1, True), (7, 8, 3, True),
                                      (64, 17, 5, True), (5, 0, 2, True)]:
        with aot._recorded_launches() as calls:
            sparse.sparse_embed_fwd(torch.zeros(batch, points, 2),
                                    torch.zeros(batch, points, dtype=torch.int64),
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
    json.dump({{"rows": rows, "table": aot.format_table(rows), "keys": keys,
               "traced_launches": launches}}, open(out_path, "w"))
""")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    try:
        import triton  # noqa: F401
    except ModuleNotFoundError as err:
        if IN_CI:
            pytest.fail(f"Triton is required in CI: {err}")
        pytest.skip(f"Triton is not installed: {err}")
    tmp = tmp_path_factory.mktemp("aot")
    env = env_without_interpreter()
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence Triton 3.9's notice; same code
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(archs=ARCHS), str(tmp / "cubins"),
         str(tmp / "out.json")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads((tmp / "out.json").read_text())
    data["dump"] = tmp / "cubins"
    return data


def test_every_variant_compiles_for_every_arch(report):
    rows = report["rows"]
    names = {(r["kernel"], r["arch"], r["out_dtype"], r["embed_dim"]) for r in rows}
    for arch in ARCHS:
        for dtype in ("float32", "bfloat16", "float16"):
            assert ("sparse_fwd", arch, dtype, 256) in names
            assert ("dense_pe", arch, dtype, 256) in names
        assert ("sparse_bwd", arch, "float32", 256) in names
    keys = ("kernel", "arch", "out_dtype", "embed_dim", "num_warps", "elements_per_program",
            "cubin", "registers", "stack_bytes", "local_bytes", "shared_bytes", "sass_instructions",
            "backward_branches", "lane_instr_per_element", "widest_store_bits",
            "modelled_h100_us_per_mpoint")
    for row in rows:
        assert all(k in row for k in keys), row
        assert (report["dump"] / row["cubin"]).is_file()
        assert row["sass_instructions"] > 0 and row["registers"] > 0
        assert row["stack_bytes"] == 0 and row["local_bytes"] == 0, row  # no spills anywhere
        if row["kernel"] in ("sparse_fwd", "dense_pe"):
            assert row["backward_branches"] == 0, row  # straight-line code
    assert report["table"].count("\n") == len(rows) + 1


def test_main_sparse_kernel_targets(report):
    """fp32 output, C = 256, sm_90: straight line, no stack, 128-bit stores, <= 16 lane-instr
    per output element."""
    (main,) = [r for r in report["rows"]
               if r["kernel"].startswith("sparse") and "fwd" in r["kernel"]
               and (r["arch"], r["out_dtype"], r["embed_dim"]) == ("sm_90", "float32", 256)]
    assert main["backward_branches"] == 0
    assert main["stack_bytes"] == 0 and main["local_bytes"] == 0
    assert main["widest_store_bits"] == 128
    assert main["lane_instr_per_element"] <= 16


def test_new_prompt_sizes_never_recompile(report):
    assert len(set(report["keys"])) == 1, report["keys"]


def test_launchers_trace_with_make_fx(report):
    """fwd, bwd and dense each appear as wrap_triton launches in a make_fx graph."""
    assert report["traced_launches"] >= 3
