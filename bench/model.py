"""`sam2-prompt-bench model`: bytes, launches and a roofline prediction per backend, labelled
as a model (not a measurement)."""

import json
from pathlib import Path
from typing import List

import torch.utils._pytree as pytree
from torch import Tensor

from . import cases as bench_cases
from . import measure
from .cli import GPUS, UsageError
from .table import human_bytes, seconds, table


def model_rows(case, bandwidth: float, launch_s: float) -> List[dict]:
    """Per backend: launches, bytes read and written, bytes allocated, predicted time.

    Eager backends are counted, not assumed: one call on CPU tensors under a TorchDispatchMode
    (aten compute ops ~ CUDA kernel launches, bytes each reads and writes) and torch.profiler
    (allocations). The fused Triton kernel is 1 launch reading the inputs and writing the output
    once. Predicted time = max(bytes / bandwidth, launches x launch latency)."""
    inputs = case.inputs("cpu")
    input_bytes = sum(measure.tensor_bytes(t) for t in pytree.tree_leaves(inputs) if isinstance(t, Tensor))
    counted = []
    for backend in ("upstream", "torch"):
        fn = bench_cases.build(case, backend, "cpu")
        if fn is None:
            continue
        traffic = measure.traffic(fn, inputs)
        allocated = measure.bytes_allocated(fn, inputs, "cpu")["bytes_allocated"]
        counted.append((backend, traffic["launches"], traffic["read_bytes"], traffic["written_bytes"],
                        allocated, "counted: aten ops of one eager call on CPU"))
    launches = int(case.tokens > 0) + int(case.masks)  # the sparse kernel, the mask kernel
    counted.append(("triton", launches, input_bytes, case.output_bytes(), case.output_bytes(),
                    "fused kernels: read the inputs, write the outputs once"
                    + (" (one per output)" if launches > 1 else "")))
    rows = []
    for backend, launches, read, written, allocated, how in counted:
        memory_s, launch_total_s = (read + written) / bandwidth, launches * launch_s
        predicted = max(memory_s, launch_total_s)
        rows.append({"backend": backend, "launches": launches, "read_bytes": read,
                     "written_bytes": written, "bytes_allocated": allocated,
                     "traffic_x_output": (read + written) / case.output_bytes(),
                     "alloc_x_output": allocated / case.output_bytes(),
                     "predicted_s": predicted, "bound": "memory" if memory_s >= launch_total_s else "launch",
                     "predicted_points_per_s": case.batch * case.points / predicted, "how": how})
    return rows


def cmd_model(args) -> int:
    bandwidth, described = GPUS[args.gpu].bytes_per_s, GPUS[args.gpu].described
    if args.bandwidth_tbs:
        bandwidth, described = args.bandwidth_tbs * 1e12, f"{args.gpu} at {args.bandwidth_tbs} TB/s (given)"
    if args.points == 0 and args.boxes == 0 and not args.masks:
        raise UsageError("give --points, --boxes or --masks (a prompt of none has nothing to model)")
    case = bench_cases.make(args.batch, args.points, args.boxes, args.masks, embed_dim=args.embed_dim)
    rows = model_rows(case, bandwidth, args.launch_us * 1e-6)
    print(f"MODEL (not a measurement) of one forward on {described}, {args.launch_us:g} us per launch:\n"
          f"  predicted time = max((bytes read + written) / bandwidth, launches x {args.launch_us:g} us)\n"
          f"  case B={case.batch}, N={case.points}, K={case.boxes}, masks={case.masks}, "
          f"C={case.embed_dim}, fp32: outputs {human_bytes(case.output_bytes())} (sparse "
          f"[{case.batch}, {case.tokens}, {case.embed_dim}]"
          + (f", dense [{case.batch}, {case.embed_dim}, {bench_cases.EMB_SIZE[0]}, "
             f"{bench_cases.EMB_SIZE[1]}])\n" if case.masks else ")\n"))
    if case.masks:
        print("  The torch row counts the CPU fast path, which works through the mask pixels in "
              "chunks (one set of ops per chunk); on a GPU it takes all pixels in one chunk.\n")
    head = ["backend", "launches", "read", "written", "traffic/out", "allocated", "alloc/out",
            "predicted", "bound", "prompts/s", "points/s", "how"]
    lines = [head]
    for r in rows:
        lines.append([r["backend"], str(r["launches"]), human_bytes(r["read_bytes"]),
                      human_bytes(r["written_bytes"]), f"{r['traffic_x_output']:.1f}x",
                      human_bytes(r["bytes_allocated"]), f"{r['alloc_x_output']:.1f}x",
                      seconds(r["predicted_s"]), r["bound"], f"{case.batch / r['predicted_s']:.3g}",
                      f"{r['predicted_points_per_s']:.3g}" if case.points else "-", r["how"]])
    print(table(lines, left_last=True))
    print("\nNot modelled: host-side overhead of eager PyTorch (several us per op, which dominates "
          "small batches), caches, and compiled backends (Inductor's kernels: measure with `run`).")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": {"gpu": described, "bandwidth_bytes_per_s": bandwidth, "launch_s": args.launch_us * 1e-6,
                      "formula": "max((read_bytes + written_bytes) / bandwidth, launches * launch_s)"},
            "case": case.as_dict(), "machine": measure.machine(), "results": rows}, indent=2))
    return 0
