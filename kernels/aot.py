"""Ahead-of-time compilation of every kernel variant, and a static SASS report (no GPU needed).

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` produces the cubin, and
Triton's wheel bundles cuobjdump (triton/backends/nvidia/bin) to read registers, stack and the
SASS. The variants are exactly what the launchers launch: each launcher is called on small CPU
example tensors with its ``launch`` hook replaced by a recorder, and the recorded arguments are
specialised the way Triton's runtime would (16-byte alignment, ints divisible by 16, ints equal
to 1, unless ``do_not_specialize``). TRITON_INTERPRET must be unset. docs/kernels.md explains
every column.

Instructions per element. Straight-line kernels (``backward_branches`` 0) count every SASS
instruction: ``lane_instr_per_element = sass_instructions * 32 * num_warps / elements_per_program``.
Kernels with a loop count its body, the instructions between the backward branch's target and
the branch: ``counted_instructions * 32 * num_warps / elements per iteration``, since the one-off
code before and after the loop is amortised over the iterations (``counted`` says which).

Roofline model (stated, not measured; figures from ``gpus.py``) per million points (sparse
tokens; pixels of the dense grid):

    modelled_us_per_mpoint = 1e6 * max(bytes_per_point / bandwidth,
                                       lane_instr_per_element * elements_per_point / issue rate)

bytes_per_point: outputs written + inputs read from DRAM (table rows and the Gaussian are cache
hits and not counted); issue rate: SMs x 4 x 32 x boost clock. ``memory_bound_below`` is the
lane-instructions per element under which the row's kernel stays memory-bound on that GPU.
"""

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from . import dense, gpus, mask, sparse

DEFAULT_ARCHS = ("sm_80", "sm_90", "sm_100", "sm_120")
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SPARSE_EMBED_DIMS = (256, 64, 96)  # SAM-2's width, a small one, a non-power-of-two
HALF_ONLY_EMBED_DIMS = (192, 320, 384)  # more widths whose 16-byte vectors split unevenly
BACKWARD_EMBED_DIMS = (256, 64, 96, 512)
DENSE_GRID = (64, 64)  # SAM-2's image-embedding grid
IMAGE = (1024, 1024)
_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class Variant(NamedTuple):
    kernel: str
    out_dtype: torch.dtype  # the output's (the backward: grad_out's)
    weight_dtype: torch.dtype  # point table, not_a_point and Gaussian
    embed_dim: int
    call: tuple  # (kernel, grid, args, kwargs) as recorded from the launcher
    elements_counted: int  # outputs per program, or per loop iteration for kernels with loops
    bytes_per_point: float
    elements_per_point: int
    loads_per_iteration: Optional[int] = None  # global loads per source loop iteration (unrolls)
    # kernels whose loop is not their main work (the mask kernel's prologue is ~20% of it): the
    # trips of the loop per program, and elements_counted is then the outputs per program
    loop_iterations: Optional[int] = None


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


def _examples(embed_dim: int, weight_dtype: torch.dtype = torch.float32):
    """Representative CPU inputs: fp32 coordinates and boxes, int32 labels (what SAM-2 passes),
    parameters in weight_dtype."""
    batch, num_points, num_boxes = 2, 3, 1
    coords = torch.zeros(batch, num_points, 2)
    labels = torch.zeros(batch, num_points, dtype=torch.int32)
    boxes = torch.zeros(batch, num_boxes, 4)
    gaussian = torch.zeros(2, embed_dim // 2, dtype=weight_dtype)
    table = torch.zeros(4, embed_dim, dtype=weight_dtype)
    not_a_point = torch.zeros(1, embed_dim, dtype=weight_dtype)
    return coords, labels, boxes, gaussian, table, not_a_point


def _bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def _token_bytes() -> int:
    return 2 * 4 + 4  # x, y (fp32), label (int32)


def _sparse_fwd(embed_dim, out_dtype, weight_dtype):
    coords, labels, boxes, gaussian, table, nap = _examples(embed_dim, weight_dtype)
    with _recorded_launches() as calls:
        sparse.sparse_embed_fwd(coords, labels, boxes, True, gaussian, table, nap, *IMAGE,
                                out_dtype)
    kwargs = calls[0][3]
    return Variant("sparse_fwd", out_dtype, weight_dtype, embed_dim, calls[0],
                   kwargs["BLOCK_T"] * kwargs["REPS"] * embed_dim,
                   _token_bytes() + embed_dim * _bytes(out_dtype), embed_dim)


def _sparse_bwd(embed_dim, grad_dtype):
    coords, labels, boxes, gaussian, _, _ = _examples(embed_dim)
    grad = torch.zeros(64, 3 + 1 + 2, embed_dim, dtype=grad_dtype)  # several programs
    coords, labels, boxes = (t[:1].expand(64, *t.shape[1:]) for t in (coords, labels, boxes))
    with _recorded_launches() as calls:
        sparse.sparse_embed_bwd(grad, coords, labels, boxes, True, gaussian, *IMAGE)
    bwd, total = calls
    return [
        Variant("sparse_bwd", grad_dtype, torch.float32, embed_dim, bwd,
                bwd[3]["BLOCK_T"] * embed_dim,
                _token_bytes() + 8 + embed_dim * _bytes(grad_dtype), embed_dim),
        Variant("sparse_bwd_sum", torch.float32, torch.float32, embed_dim, total,
                total[3]["BLOCK"], 0.0, 0, loads_per_iteration=2),
    ]


def _dense(out_dtype, weight_dtype):
    gaussian = torch.zeros(2, 128, dtype=weight_dtype)
    with _recorded_launches() as calls:
        dense.dense_pe(gaussian, *DENSE_GRID, out_dtype)
    kwargs = calls[0][3]
    return Variant("dense_pe", out_dtype, weight_dtype, 256, calls[0],
                   2 * kwargs["BLOCK_F"] * kwargs["BLOCK_W"], 256 * _bytes(out_dtype), 256)


def variants() -> List[Variant]:
    """Every kernel variant the report covers: the sparse forward for fp32 parameters at each
    width and output dtype (16-bit outputs at more widths), the modules cast to bf16 and fp16
    (parameters and outputs in that dtype), the backward (fp32 and bf16 grad_out) and its
    summing kernel, the dense grid."""
    out = []
    for embed_dim in SPARSE_EMBED_DIMS:
        for out_dtype in OUT_DTYPES:
            out.append(_sparse_fwd(embed_dim, out_dtype, torch.float32))
    for embed_dim in HALF_ONLY_EMBED_DIMS:
        for out_dtype in (torch.bfloat16, torch.float16):
            out.append(_sparse_fwd(embed_dim, out_dtype, torch.float32))
    for embed_dim in (256, 96, 320):
        out.append(_sparse_fwd(embed_dim, torch.bfloat16, torch.bfloat16))
    out.append(_sparse_fwd(256, torch.float16, torch.float16))
    for embed_dim in BACKWARD_EMBED_DIMS:
        bwd, total = _sparse_bwd(embed_dim, torch.float32)
        out.append(bwd)
        if embed_dim == 256:
            out.append(total)
    out.append(_sparse_bwd(256, torch.bfloat16)[0])
    for out_dtype in OUT_DTYPES:
        out.append(_dense(out_dtype, torch.float32))
    out.append(_dense(torch.bfloat16, torch.bfloat16))
    for out_dtype, weight_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                    (torch.bfloat16, torch.bfloat16)):
        out.append(mask.aot_variant(out_dtype, 256, 16, weight_dtype))
    return out


_INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_WIDTH = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


def _memory_bits(opcode: str) -> int:
    width = re.search(r"\.(128|64|U16|S16|U8|S8)\b", opcode)
    return _WIDTH[width.group(1)] if width else 32


def sass_stats(cubin_path: str) -> dict:
    """Registers, stack, local memory, spill instructions (STL/LDL), SASS instructions (no NOPs),
    backward branches, the largest loop body, widest global load and store."""
    usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin_path], check=True,
                           capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin_path], check=True,
                          capture_output=True, text=True).stdout
    instructions = []  # (address, opcode)
    loops = []  # (target, branch address)
    for line in sass.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        address, text = int(match.group(1), 16), match.group(2)
        opcode = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]
        if opcode.startswith("NOP"):
            continue
        instructions.append((address, opcode))
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", text)
            # a branch to itself is the trap after EXIT, not a loop
            if target and int(target.group(1), 16) < address:
                loops.append((int(target.group(1), 16), address))
    body = []
    if loops:
        start, end = max(loops, key=lambda loop: loop[1] - loop[0])
        body = [op for address, op in instructions if start <= address <= end]
    ops = [op for _, op in instructions]
    return {
        "registers": int(fields.get("REG", 0)),
        "stack_bytes": int(fields.get("STACK", 0)),
        "local_bytes": int(fields.get("LOCAL", 0)),
        "spill_instructions": sum(op.startswith(("STL", "LDL")) for op in ops),
        "sass_instructions": len(ops),
        "backward_branches": len(loops),
        "loop_body_instructions": len(body),
        "loop_body_loads": sum(op.startswith("LDG") for op in body),
        "widest_load_bits": max((_memory_bits(op) for op in ops if op.startswith("LDG")),
                                default=0),
        "widest_store_bits": max((_memory_bits(op) for op in ops if op.startswith("STG")),
                                 default=0),
        "sass": sass,
    }


def _arch_capability(arch: str) -> int:
    match = re.fullmatch(r"sm_(\d+)a?", str(arch).strip().lower())
    if not match:
        raise ValueError(f"arch must look like sm_90, got {arch!r}")
    return int(match.group(1))


def compile_variants(archs: Sequence[str] = DEFAULT_ARCHS, dump_dir: Optional[str] = None,
                     select: Optional[Callable[[Variant], bool]] = None) -> List[dict]:
    """Compile every kernel variant (those ``select`` keeps) for each arch -> one row per
    (variant, arch); see the module docstring and docs/kernels.md for the keys. cubin/ptx/sass
    files go to dump_dir (default: a temporary directory)."""
    if not isinstance(sparse._sparse_embed_fwd_kernel, triton.runtime.JITFunction):
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset "
                           "(the interpreter replaces @triton.jit kernels)")
    capabilities = [_arch_capability(arch) for arch in archs]
    if dump_dir is None:
        dump_dir = tempfile.mkdtemp(prefix="sam2_prompt_cubins_")
    dump = Path(dump_dir)
    dump.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in variants() if select is None or select(v)]
    rows = []
    for arch, capability in zip(archs, capabilities):
        arch = f"sm_{capability}"
        target = GPUTarget("cuda", capability, 32)
        model = gpus.gpu_for_arch(arch)
        for variant in chosen:
            kernel, _, args, kwargs = variant.call
            signature, constexprs, attrs, num_warps = _specialise(kernel, args, kwargs)
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=target, options={"num_warps": num_warps})
            stem = (f"{variant.kernel}_{_NAMES[variant.out_dtype]}_"
                    f"w{_NAMES[variant.weight_dtype]}_c{variant.embed_dim}_{arch}")
            (dump / f"{stem}.cubin").write_bytes(compiled.asm["cubin"])
            (dump / f"{stem}.ptx").write_text(compiled.asm["ptx"])
            stats = sass_stats(str(dump / f"{stem}.cubin"))
            (dump / f"{stem}.sass").write_text(stats.pop("sass"))
            rows.append(_row(variant, arch, num_warps, stem, stats, compiled, model))
    return rows


def _row(variant: Variant, arch, num_warps, stem, stats, compiled, model) -> dict:
    elements = variant.elements_counted
    unrolled = 1  # source iterations per pass of the SASS loop body
    if stats["backward_branches"] and variant.loads_per_iteration:
        unrolled = max(1, stats["loop_body_loads"] // variant.loads_per_iteration)
    if stats["backward_branches"] and variant.loop_iterations:
        # every instruction as often as it runs: the whole kernel once, the loop body again for
        # each further pass
        passes = -(-variant.loop_iterations // unrolled)
        counted = "executed"
        instructions = stats["sass_instructions"] + stats["loop_body_instructions"] * (passes - 1)
    elif stats["backward_branches"]:
        counted, instructions = "loop body", stats["loop_body_instructions"]
        elements *= unrolled
    else:
        counted, instructions = "kernel", stats["sass_instructions"]
    lane = instructions * 32 * num_warps / elements

    def modelled(gpu):
        if gpu is None or not variant.elements_per_point:
            return None
        seconds = gpu.modelled_seconds(variant.bytes_per_point,
                                       lane * variant.elements_per_point)
        return round(seconds * 1e12, 1)

    bytes_per_element = (variant.bytes_per_point / variant.elements_per_point
                         if variant.elements_per_point else None)
    return {
        "kernel": variant.kernel, "arch": arch, "out_dtype": _NAMES[variant.out_dtype],
        "weight_dtype": _NAMES[variant.weight_dtype], "embed_dim": variant.embed_dim,
        "num_warps": num_warps, "elements_per_program": variant.elements_counted,
        "cubin": f"{stem}.cubin", "registers": stats["registers"],
        "stack_bytes": stats["stack_bytes"], "local_bytes": stats["local_bytes"],
        "spill_instructions": stats["spill_instructions"],
        "shared_bytes": int(getattr(compiled.metadata, "shared", 0)),
        "sass_instructions": stats["sass_instructions"],
        "backward_branches": stats["backward_branches"],
        "counted": counted, "counted_instructions": instructions,
        "lane_instr_per_element": round(lane, 2),
        "widest_load_bits": stats["widest_load_bits"],
        "widest_store_bits": stats["widest_store_bits"],
        "model_gpu": model.name if model else None,
        "modelled_us_per_mpoint": modelled(model),
        "memory_bound_below": (round(model.breakeven_lane_instr(bytes_per_element), 1)
                               if model and bytes_per_element else None),
        "modelled_h100_us_per_mpoint": modelled(gpus.GPUS["H100"]),
    }


COLUMNS = [("kernel", "kernel"), ("arch", "arch"), ("out_dtype", "out"),
           ("weight_dtype", "weights"), ("embed_dim", "C"), ("num_warps", "warps"),
           ("elements_per_program", "elem"), ("registers", "regs"), ("stack_bytes", "stack"),
           ("local_bytes", "local"), ("spill_instructions", "spill-ins"),
           ("shared_bytes", "smem"), ("sass_instructions", "sass"),
           ("backward_branches", "back-br"), ("counted", "counted"),
           ("lane_instr_per_element", "lane-ins/elem"), ("widest_load_bits", "ld-bits"),
           ("widest_store_bits", "st-bits"), ("model_gpu", "gpu"),
           ("modelled_us_per_mpoint", "us/Mpt"), ("memory_bound_below", "mem-bound<")]


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
    parser.add_argument("--arch", default=",".join(DEFAULT_ARCHS))
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
