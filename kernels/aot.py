"""Ahead-of-time compilation of every kernel variant for sm_80 / sm_90, and a static SASS report.

No GPU is needed: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` produces the
cubin and Triton's wheel bundles cuobjdump (triton/backends/nvidia/bin) to read registers, stack,
spills and the SASS. The variants are exactly what the launchers launch: each launcher is called on
small CPU example tensors with its ``launch`` hook replaced by a recorder, and the recorded
arguments are specialised the way Triton's runtime would (16-byte alignment, ints divisible by 16,
ints equal to 1 unless ``do_not_specialize``). TRITON_INTERPRET must be unset.

Roofline model of an H100 SXM (stated, not measured): 3.0 TB/s of DRAM bandwidth and
33.4e12 lane-instructions/s (132 SMs x 4 schedulers x 32 lanes x 1.98 GHz):

    modelled_h100_us_per_mpoint = 1e6 * max(bytes_per_point / 3.0e12,
                                            lane_instr_per_element * elements_per_point / 33.4e12)

per million points (sparse tokens; pixels of the dense grid), with bytes_per_point = outputs
written + inputs read from DRAM (table rows and the Gaussian are cache hits and not counted), and
lane_instr_per_element = sass_instructions * 32 * num_warps / elements_per_program (outputs one
program writes; for the backward, the gradient elements of one loop iteration). That ratio counts
each instruction once, which is exact for straight-line code (backward_branches == 0) and an
approximation for the looping backward kernels.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from . import dense, sparse

H100_BYTES_PER_S = 3.0e12
H100_LANE_INSTR_PER_S = 33.4e12
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SPARSE_EMBED_DIMS = (256, 64, 96)  # SAM-2's width, a small one, a non-power-of-two
DENSE_GRID = (64, 64)  # SAM-2's image-embedding grid
IMAGE = (1024, 1024)
_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


@contextlib.contextmanager
def _recorded_launches():
    """Replace the launchers' ``launch`` hook: calls are recorded, nothing runs."""
    calls = []

    def record(kernel, grid, *args, **kwargs):
        calls.append((kernel, grid, args, kwargs))

    saved = sparse.launch, dense.launch
    sparse.launch = dense.launch = record
    try:
        yield calls
    finally:
        sparse.launch, dense.launch = saved


def _specialise(kernel, args, kwargs):
    """(signature, constexprs, attrs, num_warps) as Triton's runtime would build them."""
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    bound = dict(zip(kernel.arg_names, args))
    bound.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = bound[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, attr = native_specialize_impl(BaseBackend, value, param.is_const,
                                            not param.do_not_specialize,
                                            not param.do_not_specialize_on_alignment)
        if kind == "constexpr":  # an int equal to 1
            signature[name], constexprs[name] = "constexpr", value
            continue
        signature[name] = kind
        if attr:
            attrs[(index,)] = BaseBackend.parse_attr(attr)
    return signature, constexprs, attrs, num_warps


def _examples(embed_dim: int, out_dtype: torch.dtype):
    """Representative CPU inputs: fp32 coordinates and boxes, int64 labels, fp32 parameters."""
    batch, num_points, num_boxes = 2, 3, 1
    coords = torch.zeros(batch, num_points, 2)
    labels = torch.zeros(batch, num_points, dtype=torch.int64)
    boxes = torch.zeros(batch, num_boxes, 4)
    gaussian = torch.zeros(2, embed_dim // 2)
    table = torch.zeros(4, embed_dim)
    not_a_point = torch.zeros(1, embed_dim)
    return coords, labels, boxes, gaussian, table, not_a_point


def _sparse_bytes(embed_dim, out_bytes):
    return 2 * 4 + 8 + embed_dim * out_bytes  # x, y (fp32), label (int64), C outputs


def variants():
    """[(kernel name, out_dtype, embed_dim, recorded launch, elements_per_program, bytes_per_point,
    elements_per_point)] for every kernel variant the launchers can launch."""
    out = []
    for embed_dim in SPARSE_EMBED_DIMS:
        for out_dtype in OUT_DTYPES:
            coords, labels, boxes, gaussian, table, nap = _examples(embed_dim, out_dtype)
            with _recorded_launches() as calls:
                sparse.sparse_embed_fwd(coords, labels, boxes, True, gaussian, table, nap,
                                        *IMAGE, out_dtype)
            kernel, grid, args, kwargs = calls[0]
            per_program = kwargs["BLOCK_T"] * kwargs["REPS"] * embed_dim
            out.append(("sparse_fwd", out_dtype, embed_dim, calls[0], per_program,
                        _sparse_bytes(embed_dim, torch.finfo(out_dtype).bits // 8), embed_dim))
        coords, labels, boxes, gaussian, _, _ = _examples(embed_dim, torch.float32)
        grad = torch.zeros(64, 3 + 1 + 2, embed_dim)  # enough tokens for several programs
        coords, labels, boxes = (t[:1].expand(64, *t.shape[1:]) for t in (coords, labels, boxes))
        with _recorded_launches() as calls:
            sparse.sparse_embed_bwd(grad, coords, labels, boxes, True, gaussian, *IMAGE)
        bwd, total = calls
        out.append(("sparse_bwd", torch.float32, embed_dim, bwd,
                    bwd[3]["BLOCK_T"] * embed_dim, _sparse_bytes(embed_dim, 4) + 8, embed_dim))
        out.append(("sparse_bwd_sum", torch.float32, embed_dim, total, total[3]["BLOCK"], 0.0, 0))
    for out_dtype in OUT_DTYPES:
        gaussian = torch.zeros(2, 128)
        with _recorded_launches() as calls:
            dense.dense_pe(gaussian, *DENSE_GRID, out_dtype)
        kwargs = calls[0][3]
        out.append(("dense_pe", out_dtype, 256, calls[0], 2 * kwargs["BLOCK_F"] * kwargs["BLOCK_W"],
                    256 * (torch.finfo(out_dtype).bits // 8), 256))
    return out


def sass_stats(cubin_path: str) -> dict:
    """Registers, stack, spills, SASS instructions (no NOPs), backward branches, widest store."""
    usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin_path], check=True,
                           capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin_path], check=True,
                          capture_output=True, text=True).stdout
    instructions = backward = widest = 0
    for line in sass.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if not match:
            continue
        address, text = int(match.group(1), 16), match.group(2)
        opcode = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]
        if opcode.startswith("NOP"):
            continue
        instructions += 1
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", text)
            # a branch to itself is the trap after EXIT, not a loop
            if target and int(target.group(1), 16) < address:
                backward += 1
        if opcode.startswith("STG"):
            width = re.search(r"\.(128|64|U16|S16|U8|S8)\b", opcode)
            widest = max(widest, {"128": 128, "64": 64, "U16": 16, "S16": 16}.get(
                width.group(1), 8) if width else 32)
    return {
        "registers": int(fields.get("REG", 0)),
        "stack_bytes": int(fields.get("STACK", 0)),
        "local_bytes": int(fields.get("LOCAL", 0)),
        "sass_instructions": instructions,
        "backward_branches": backward,
        "widest_store_bits": widest,
        "sass": sass,
    }


def compile_variants(archs: Sequence[str] = ("sm_80", "sm_90"),
                     dump_dir: Optional[str] = None) -> List[dict]:
    """Compile every kernel variant for each arch -> one row per (variant, arch); see the module
    docstring for the keys' meaning and the roofline formula. cubin/ptx/sass files go to dump_dir
    (default: a temporary directory)."""
    if not isinstance(sparse._sparse_embed_fwd_kernel, triton.runtime.JITFunction):
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset "
                           "(the interpreter replaces @triton.jit kernels)")
    if dump_dir is None:
        import tempfile

        dump_dir = tempfile.mkdtemp(prefix="sam2_prompt_cubins_")
    dump = Path(dump_dir)
    dump.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in archs:
        capability = int(str(arch).lower().replace("sm_", ""))
        target = GPUTarget("cuda", capability, 32)
        for name, out_dtype, embed_dim, call, per_program, bytes_pp, elems_pp in variants():
            kernel, _, args, kwargs = call
            signature, constexprs, attrs, num_warps = _specialise(kernel, args, kwargs)
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=target, options={"num_warps": num_warps})
            stem = f"{name}_{_NAMES[out_dtype]}_c{embed_dim}_{arch}"
            (dump / f"{stem}.cubin").write_bytes(compiled.asm["cubin"])
            (dump / f"{stem}.ptx").write_text(compiled.asm["ptx"])
            stats = sass_stats(str(dump / f"{stem}.cubin"))
            (dump / f"{stem}.sass").write_text(stats.pop("sass"))
            lane = stats["sass_instructions"] * 32 * num_warps / per_program
            seconds = max(bytes_pp / H100_BYTES_PER_S, lane * elems_pp / H100_LANE_INSTR_PER_S)
            rows.append({
                "kernel": name, "arch": arch, "out_dtype": _NAMES[out_dtype],
                "embed_dim": embed_dim, "num_warps": num_warps,
                "elements_per_program": per_program, "cubin": f"{stem}.cubin",
                "registers": stats["registers"], "stack_bytes": stats["stack_bytes"],
                "local_bytes": stats["local_bytes"],
                "shared_bytes": int(getattr(compiled.metadata, "shared", 0)),
                "sass_instructions": stats["sass_instructions"],
                "backward_branches": stats["backward_branches"],
                "lane_instr_per_element": round(lane, 2),
                "widest_store_bits": stats["widest_store_bits"],
                "modelled_h100_us_per_mpoint": round(seconds * 1e12, 1) if elems_pp else None,
            })
    return rows


COLUMNS = [("kernel", "kernel"), ("arch", "arch"), ("out_dtype", "out"), ("embed_dim", "C"),
           ("num_warps", "warps"), ("elements_per_program", "elem/prog"), ("registers", "regs"),
           ("stack_bytes", "stack"), ("local_bytes", "local"), ("shared_bytes", "smem"),
           ("sass_instructions", "sass"), ("backward_branches", "back-br"),
           ("lane_instr_per_element", "lane-ins/elem"), ("widest_store_bits", "store-bits"),
           ("modelled_h100_us_per_mpoint", "H100 us/Mpt")]


def format_table(rows: List[dict]) -> str:
    """compile_variants rows as a fixed-width text table."""
    cells = [[header for _, header in COLUMNS]]
    cells += [["-" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS]
              for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every kernel variant ahead of time.")
    parser.add_argument("--arch", default="sm_80,sm_90")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--dump-dir", default=None, help="where cubin/ptx/sass files go")
    args = parser.parse_args(argv)
    rows = compile_variants(args.arch.split(","), args.dump_dir)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
