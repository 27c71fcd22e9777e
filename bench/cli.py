"""sam2-prompt-bench: our PromptEncoder against Meta's, side by side in one process.

    sam2-prompt-bench                      = run --quick on the best device (the README's main job)
    sam2-prompt-bench run [--quick|--foundation] [--batch ...] [--points ...] [--backends ...]
                          [--device cpu|cuda] [--json F] [--csv F] [--plot PNG]
    sam2-prompt-bench sass --arch sm_80,sm_90 [--json F] [--dump-dir D]   static kernel report
    sam2-prompt-bench model [--gpu H100|A100] [--batch B] [--points N]     roofline model
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import torch
import torch.utils._pytree

from . import cases as bench_cases
from . import measure

DEFAULT_BACKENDS = ("upstream", "torch", "triton")
GPUS = {  # achievable DRAM bandwidth (bytes/s) and a per-launch floor (s): a stated model
    "H100": (3.0e12, 3e-6),
    "A100": (1.8e12, 3e-6),
}


# ----------------------------------------------------------------------------- run
def run_cases(case_list, backends, device, min_run_time=0.2, progress=True) -> List[dict]:
    """One row per (case, backend) that can run here; speedups against the upstream row."""
    rows = []
    work = [(c, b) for c in case_list for b in backends]
    bar = None
    if progress and len(work) > 4:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(work), desc="benchmark", unit="row", file=sys.stderr)
        except ModuleNotFoundError:
            bar = None
    peak = measure.peak_bandwidth(device)
    for case in case_list:
        args = case.inputs(device)
        baseline, reference_out = None, None
        for backend in backends:
            if bar:
                bar.set_postfix_str(f"{case.name} {backend}")
            fn = bench_cases.build(case, backend, device)
            if fn is None:
                if bar:
                    bar.update()
                continue
            warmup_s = measure.warm_up(fn, args)
            with torch.no_grad():
                sparse = fn(*args)[0]
            if reference_out is None:
                reference_out = sparse
            diff = (sparse.float() - reference_out.float()).abs().max().item() if sparse.numel() else 0.0
            timing = measure.time_call(fn, args, device, case.output_bytes(), min_run_time)
            allocated = measure.bytes_allocated(fn, args, device)
            moved = case.output_bytes() + sum(t.numel() * t.element_size() for t in _tensors(args))
            row = {
                "case": case.name, "backend": backend, "device": str(device), "dtype": case.dtype,
                "batch": case.batch, "points": case.points, "boxes": case.boxes,
                "masks": case.masks, "embed_dim": case.embed_dim, **timing,
                "prompts_per_s": case.batch / timing["median_s"],
                "points_per_s": case.batch * case.points / timing["median_s"],
                "gb_per_s": moved / timing["median_s"] / 1e9 if peak else None,
                "pct_peak_bw": 100 * moved / timing["median_s"] / peak if peak else None,
                "bytes_allocated": allocated,
                "alloc_x_output": allocated / case.output_bytes(),
                "warmup_s": warmup_s,
                "max_abs_diff": diff,
                "speedup_vs_upstream": None,
            }
            if backend == "upstream":
                baseline = timing["median_s"]
            if baseline:
                row["speedup_vs_upstream"] = baseline / timing["median_s"]
            rows.append(row)
            if bar:
                bar.update()
    if bar:
        bar.close()
    return rows


def _tensors(args):
    return [t for t in torch.utils._pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]


def format_rows(rows: List[dict]) -> str:
    head = ["case", "backend", "median", "q20-q80", "points/s", "alloc/out", "speedup", "max|diff|"]
    lines = [head]
    for r in rows:
        lines.append([
            r["case"], r["backend"], _seconds(r["median_s"]),
            f"{_seconds(r['q20_s'])}-{_seconds(r['q80_s'])}", f"{r['points_per_s']:.3g}",
            f"{r['alloc_x_output']:.2f}x",
            "" if r["speedup_vs_upstream"] is None else f"{r['speedup_vs_upstream']:.2f}x",
            f"{r['max_abs_diff']:.1e}",
        ])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def check_targets(rows: List[dict]) -> List[str]:
    """The foundation issue's targets for our PyTorch path, as PASS/FAIL lines."""
    lines = []
    for r in rows:
        if r["backend"] != "torch":
            continue
        target = bench_cases.TARGETS.get(r["case"])
        if target is not None and r["speedup_vs_upstream"] is not None:
            ok = r["speedup_vs_upstream"] >= target
            lines.append(f"{'PASS' if ok else 'FAIL'}  {r['case']}: {r['speedup_vs_upstream']:.2f}x "
                         f"faster than upstream (target >= {target}x)")
        ok = r["alloc_x_output"] <= bench_cases.ALLOC_TARGET
        lines.append(f"{'PASS' if ok else 'FAIL'}  {r['case']}: allocates {r['alloc_x_output']:.2f}x "
                     f"the output's bytes (target <= {bench_cases.ALLOC_TARGET}x)")
    return lines


def write_outputs(rows, args):
    payload = {"machine": measure.machine(), "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if args.csv and rows:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        plot(rows, args.plot)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise SystemExit("--plot needs matplotlib: pip install 'sam2-prompt[plot]'")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        ax.plot(range(len(mine)), [r["points_per_s"] for r in mine], marker="o", label=backend)
    names = [r["case"] for r in rows if r["backend"] == rows[0]["backend"]]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("points / s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def cmd_run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backends = args.backends.split(",") if args.backends else list(DEFAULT_BACKENDS)
    unknown = sorted(set(backends) - set(bench_cases.BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; choose from {bench_cases.BACKENDS}")
    if args.foundation:
        case_list = bench_cases.FOUNDATION
    elif args.quick:
        case_list = bench_cases.QUICK
    else:
        case_list = bench_cases.sweep(
            batches=_ints(args.batch, (1, 8, 64, 1024, 16384, 65536)),
            points=_ints(args.points, (1, 4, 16)),
            boxes=_ints(args.boxes, (0, 1)),
            masks=(False, True) if args.masks else (False,),
            embed_dims=_ints(args.embed_dim, (256,)),
            dtypes=tuple(args.dtype.split(",")))
    if args.cases:
        case_list = [c for c in case_list if any(key in c.name for key in args.cases.split(","))]
    if bench_cases.upstream_class() is None:
        print("note: Meta's sam2 is not installed: no upstream rows, no speedups", file=sys.stderr)
    rows = run_cases(case_list, backends, device, args.min_run_time)
    info = measure.machine()
    print(f"\nmachine: {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads)"
          f"{', ' + info['gpu'] if info['gpu'] else ''}; torch {info['torch']}, "
          f"triton {info['triton']}, sam2 {info['sam2']}, sam2-prompt {info['sam2_prompt']} "
          f"({info['git_commit']}); device {device}")
    print(format_rows(rows))
    if args.foundation or args.quick:
        print("\n" + "\n".join(check_targets(rows)))
    write_outputs(rows, args)
    return 0


def _ints(text: Optional[str], default):
    return tuple(int(v) for v in text.split(",")) if text else default


# ----------------------------------------------------------------------------- sass
def cmd_sass(args) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces @triton.jit kernels: compile in a clean child process.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "sam2_prompt.bench.cli", *sys.argv[1:]], env=env)
    from sam2_prompt.kernels import aot

    rows = aot.compile_variants(args.arch.split(","), args.dump_dir)
    print(aot.format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"kernels": rows}, indent=2))
    return 0


# ----------------------------------------------------------------------------- model
def cmd_model(args) -> int:
    """Bytes, launches and a roofline prediction per backend, labelled as a model."""
    bandwidth, launch_floor = GPUS[args.gpu]
    case = bench_cases.Case("model", args.batch, args.points, args.boxes, embed_dim=args.embed_dim)
    inputs = case.inputs("cpu")
    input_bytes = sum(t.numel() * t.element_size() for t in _tensors(inputs))
    rows = []
    for backend in ("upstream", "torch"):
        fn = bench_cases.build(case, backend, "cpu")
        if fn is None:
            continue
        counted = measure.traffic(fn, inputs)
        rows.append((backend, counted["launches"], counted["bytes"], "counted on CPU (eager ops)"))
    rows.append(("triton", 1, input_bytes + case.output_bytes(), "one fused kernel: inputs + output"))
    print(f"MODEL (not a measurement): {args.gpu}, {bandwidth / 1e12:.1f} TB/s achievable DRAM "
          f"bandwidth, {launch_floor * 1e6:.0f} us per launch;\n"
          f"predicted time = max(bytes / bandwidth, launches x {launch_floor * 1e6:.0f} us). "
          f"Case: B={case.batch}, N={case.points}, K={case.boxes}, C={case.embed_dim}, "
          f"output {case.output_bytes() / 1e6:.1f} MB.\n")
    print(f"{'backend':10s} {'launches':>9s} {'MB moved':>10s} {'predicted':>12s}  how")
    for backend, launches, moved, how in rows:
        predicted = max(moved / bandwidth, launches * launch_floor)
        print(f"{backend:10s} {launches:9d} {moved / 1e6:10.2f} {_seconds(predicted):>12s}  {how}")
    return 0


# ----------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam2-prompt-bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="time the backends side by side")
    run.add_argument("--quick", action="store_true", help="a small set of cases (< 60 s on 2 CPU cores)")
    run.add_argument("--foundation", action="store_true", help="only the foundation targets")
    run.add_argument("--batch", help="prompts per batch, e.g. 1,64,16384")
    run.add_argument("--points", help="points per prompt, e.g. 1,4,16")
    run.add_argument("--boxes", help="boxes per prompt, e.g. 0,1,2")
    run.add_argument("--masks", action="store_true", help="also cases with a mask prompt")
    run.add_argument("--embed-dim", help="embedding widths, e.g. 256,64")
    run.add_argument("--dtype", default="float32", help="output dtypes: float32,bfloat16")
    run.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    run.add_argument("--backends", help=f"comma list of {','.join(bench_cases.BACKENDS)}")
    run.add_argument("--cases", help="keep cases whose name contains one of these, comma list")
    run.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timing (CPU)")
    run.add_argument("--json")
    run.add_argument("--csv")
    run.add_argument("--plot", help="write a PNG (needs matplotlib)")
    sass = sub.add_parser("sass", help="compile every kernel variant ahead of time and report")
    sass.add_argument("--arch", default="sm_80,sm_90")
    sass.add_argument("--json")
    sass.add_argument("--dump-dir")
    model = sub.add_parser("model", help="bytes, launches and a roofline prediction per backend")
    model.add_argument("--gpu", choices=sorted(GPUS), default="H100")
    model.add_argument("--batch", type=int, default=16384)
    model.add_argument("--points", type=int, default=4)
    model.add_argument("--boxes", type=int, default=0)
    model.add_argument("--embed-dim", type=int, default=256)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:  # the main job: the quick benchmark on the best device
        args = parser().parse_args(["run", "--quick"])
    return {"run": cmd_run, "sass": cmd_sass, "model": cmd_model}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
