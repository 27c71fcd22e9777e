"""sam2-prompt-bench: our PromptEncoder against Meta's, side by side in one process.

    sam2-prompt-bench                        run --quick on the best device (the README's main job)
    sam2-prompt-bench run [--quick | --foundation] [--batch 1,64 --points 1,4 --boxes 0,1 --masks
                          --embed-dim 256 --dtype float32,bfloat16] [--device cpu|cuda]
                          [--backends upstream,torch,...] [--cases NAME,...] [--check-targets]
                          [--json F] [--csv F] [--plot PNG]
    sam2-prompt-bench sass [--arch sm_80,sm_90] [--json F] [--dump-dir D]   static kernel report
    sam2-prompt-bench model [--gpu H100|A100|H200] [--batch B --points N --boxes K] [--json F]
                                                                           roofline MODEL
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.utils._pytree as pytree

from . import cases as bench_cases
from . import measure

DEFAULT_BACKENDS = ("upstream", "torch", "triton")
# For `model`: spec-sheet peak DRAM bandwidth (bytes/s) of the SXM parts, and how it is described.
GPUS = {
    "H100": (3.35e12, "H100 SXM5, HBM3, 3.35 TB/s (spec sheet)"),
    "A100": (2.0e12, "A100 80GB SXM4, HBM2e, 2.0 TB/s (spec sheet: 2.04)"),
    "H200": (4.8e12, "H200 SXM, HBM3e, 4.8 TB/s (spec sheet)"),
}
LAUNCH_US = 4.0  # `model`'s stated cost of one kernel launch (eager host overhead per op is larger)
MEMORY_FACTOR = 16  # a case needs about this many times its output in memory (Meta's code: ~15x)


# ----------------------------------------------------------------------------- run
def run_cases(case_list, backends, device, *, min_run_time=0.2, min_samples=5, threads=None,
              compile_options=None, progress=True) -> List[dict]:
    """One row per (case, backend) that can run here. Each backend's outputs are checked against
    the case's oracle (see cases.oracle) before it is timed; speedups are against the upstream
    (eager) row of the same case."""
    work = [(c, b) for c in case_list for b in backends
            if bench_cases.unavailable(c, b, device) is None]
    bar = _progress_bar(len(work)) if progress else None
    peak = measure.peak_bandwidth(device)
    threads = threads or torch.get_num_threads()
    rows = []
    for case in case_list:
        args = case.inputs(device)
        oracle_name, expected = bench_cases.oracle(case, device)
        input_bytes = sum(measure.tensor_bytes(t) for t in _tensors(args))
        case_rows = []
        for backend in backends:
            fn = bench_cases.build(case, backend, device, compile_options)
            if fn is None:
                continue
            if bar is not None:
                bar.set_postfix_str(f"{case.name} {backend}")
            first_s, outputs = measure.first_call(fn, args, device)
            outputs = bench_cases.keep(outputs)
            diff = bench_cases.check_agreement(case, backend, outputs, expected)
            output_bytes = case.output_bytes(outputs[0].dtype)  # Meta's module writes fp32
            moved = input_bytes + output_bytes  # the least traffic: inputs read, outputs written once
            warm_s = measure.warm_up(fn, args, device)
            timing = measure.time_call(fn, args, device, output_bytes,
                                       min_run_time=min_run_time, min_samples=min_samples,
                                       per_call_s=warm_s, threads=threads,
                                       graph=not backend.endswith("-compiled"))
            allocated = measure.bytes_allocated(fn, args, device)
            median = timing["median_s"]
            case_rows.append({
                "case": case.name, "backend": backend, "device": str(device),
                "dtype": str(outputs[0].dtype).replace("torch.", ""),
                "batch": case.batch, "points": case.points, "boxes": case.boxes, "masks": case.masks,
                "embed_dim": case.embed_dim, "tokens": case.tokens, "output_bytes": output_bytes,
                "threads": threads if torch.device(device).type == "cpu" else None,
                **timing,
                "prompts_per_s": case.batch / median,
                "points_per_s": case.batch * case.points / median,
                "gb_per_s": moved / median / 1e9,
                "pct_peak_bw": 100 * moved / median / peak if peak else None,
                **allocated,
                "alloc_x_output": allocated["bytes_allocated"] / max(output_bytes, 1),
                "first_call_s": first_s, "warmup_s_per_call": warm_s,
                "max_abs_diff": diff, "oracle": oracle_name,
                "speedup_vs_upstream": None,
            })
            if bar is not None:
                bar.update()
        baseline = next((r["median_s"] for r in case_rows if r["backend"] == "upstream"), None)
        for row in case_rows:
            row["speedup_vs_upstream"] = baseline / row["median_s"] if baseline else None
        rows += case_rows
    if bar is not None:
        bar.close()
    return rows


def _progress_bar(total: int):
    """A tqdm bar on stderr that appears only once the sweep has run for a few seconds."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, desc="benchmark", unit="row", file=sys.stderr, delay=3.0, leave=False)


def _tensors(args):
    return [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]


def format_rows(rows: List[dict]) -> str:
    """The rows as a fixed-width table (CUDA adds GB/s as % of peak and the CUDA-graph median)."""
    cuda = any(r["device"].startswith("cuda") for r in rows)
    compiled = any(r["backend"].endswith("-compiled") for r in rows)
    dtypes = len({r["dtype"] for r in rows}) > 1
    head = ["case", "backend"] + (["dtype"] if dtypes else []) + ["median", "q20-q80"]
    head += ["graph"] if cuda else []
    head += ["prompts/s", "points/s", "GB/s"] + (["%peak"] if cuda else [])
    head += ["alloc/out"] + (["1st call"] if compiled else []) + ["speedup", "max|diff|"]
    lines = [head]
    for r in rows:
        line = [r["case"], r["backend"]] + ([r["dtype"]] if dtypes else [])
        line += [_seconds(r["median_s"]), f"{_seconds(r['q20_s'])}-{_seconds(r['q80_s'])}"]
        if cuda:
            line.append(_seconds(r["graph_median_s"]) if r.get("graph_median_s") else "-")
        line += [f"{r['prompts_per_s']:.3g}", f"{r['points_per_s']:.3g}" if r["points"] else "-",
                 f"{r['gb_per_s']:.3g}"]
        if cuda:
            line.append("-" if r["pct_peak_bw"] is None else f"{r['pct_peak_bw']:.1f}")
        line.append(f"{r['alloc_x_output']:.2f}x")
        if compiled:
            line.append(_seconds(r["first_call_s"]))
        line += ["-" if r["speedup_vs_upstream"] is None else f"{r['speedup_vs_upstream']:.2f}x",
                 f"{r['max_abs_diff']:.1e}"]
        lines.append(line)
    return _table(lines)


def _table(lines: List[list], left_last: bool = False) -> str:
    """Rows of cells (the first one the header) in right-aligned columns, a rule under the
    header; ``left_last``: the last column (free text) left as it is."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    last = len(widths) - 1 if left_last else len(widths)
    out = ["  ".join(str(c) if i == last else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _seconds(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3f} s"
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def check_targets(rows: List[dict]) -> List[Tuple[bool, str]]:
    """The foundation issue's targets for our PyTorch path on a CPU, as (passed, line) pairs:
    speedup over Meta's eager module and bytes allocated per call, for the foundation cases."""
    results = []
    for r in rows:
        target = bench_cases.TARGETS.get(r["case"])
        if target is None or r["backend"] != "torch" or not r["device"].startswith("cpu"):
            continue
        what = f"{r['case']} (B={r['batch']}, N={r['points']})"
        if r["speedup_vs_upstream"] is None:
            results.append((False, f"{what}: no upstream row to compare with"))
        else:
            ok = r["speedup_vs_upstream"] >= target
            results.append((ok, f"{what}: {r['speedup_vs_upstream']:.2f}x faster than upstream eager "
                                f"(target >= {target:g}x)"))
        ok = r["alloc_x_output"] <= bench_cases.ALLOC_TARGET
        results.append((ok, f"{what}: allocates {r['alloc_x_output']:.2f}x the output's bytes per "
                            f"call (target <= {bench_cases.ALLOC_TARGET:g}x)"))
    return results


def write_outputs(rows, args, info, settings):
    if args.json:
        payload = {"machine": info, "settings": settings, "results": rows}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if args.csv:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        plot(rows, args.plot, measure.machine_line(info, settings["device"]))


def _require_matplotlib():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise SystemExit("--plot needs matplotlib, which is not installed: "
                         "pip install 'sam2-prompt[plot]' (or pip install matplotlib)")
    matplotlib.use("Agg")


def plot(rows, path, title=""):
    """Time per call (log scale) and speedup against upstream, per case and backend."""
    _require_matplotlib()
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["case"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / len(backends)
    fig, (ax_time, ax_speed) = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(names)), 8), sharex=True)
    for i, backend in enumerate(backends):
        mine = {r["case"]: r for r in rows if r["backend"] == backend}
        xs = [j + (i - (len(backends) - 1) / 2) * width for j, n in enumerate(names) if n in mine]
        ax_time.bar(xs, [mine[n]["median_s"] * 1e3 for n in names if n in mine], width, label=backend)
        ax_speed.bar(xs, [mine[n]["speedup_vs_upstream"] or 0 for n in names if n in mine], width,
                     label=backend)
    ax_time.set_yscale("log")
    ax_time.set_ylabel("median time per call (ms)")
    ax_time.legend()
    ax_speed.axhline(1.0, color="grey", linewidth=0.8)
    ax_speed.set_ylabel("speedup vs upstream eager")
    ax_speed.set_xticks(range(len(names)), names, rotation=30, ha="right")
    fig.suptitle(textwrap.fill(title, 120), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _available_bytes(device) -> Optional[int]:
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def select_cases(args) -> List["bench_cases.Case"]:
    if args.foundation:
        case_list = list(bench_cases.FOUNDATION)
    elif args.quick:
        case_list = list(bench_cases.QUICK)
    else:
        d = bench_cases.SWEEP_DEFAULTS
        case_list = bench_cases.sweep(
            batches=_ints(args.batch, d["batches"]), points=_ints(args.points, d["points"]),
            boxes=_ints(args.boxes, d["boxes"]), masks=(False, True) if args.masks else (False,),
            embed_dims=_ints(args.embed_dim, d["embed_dims"]), dtypes=tuple(args.dtype.split(",")))
    if args.cases:
        keys = args.cases.split(",")
        case_list = [c for c in case_list if any(key in c.name for key in keys)]
    return case_list


def cmd_run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    backends = args.backends.split(",") if args.backends else list(
        ("upstream", "torch") if args.foundation else DEFAULT_BACKENDS)
    unknown = [b for b in backends if b not in bench_cases.BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; choose from {', '.join(bench_cases.BACKENDS)}")
    bad_dtypes = [d for d in args.dtype.split(",") if d not in bench_cases.TOLERANCES]
    if bad_dtypes:
        raise SystemExit(f"unknown --dtype {bad_dtypes}; choose from {', '.join(bench_cases.TOLERANCES)}")
    if args.plot:
        _require_matplotlib()  # before the sweep, not after it
    threads_before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        # torch.utils.benchmark's convention: 1 thread unless asked (on a shared or busy machine,
        # more threads than idle cores turn every OpenMP barrier into a scheduler time slice).
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device, backends)
    finally:
        torch.set_num_threads(threads_before)


def _run(args, device, backends) -> int:
    case_list = select_cases(args)
    if not case_list:
        raise SystemExit("no case selected (check --cases and the sweep options)")
    notes = []
    available = _available_bytes(device)
    if available:
        largest = {c: max(c.output_bytes(), c.output_bytes(torch.float32)) for c in case_list}
        too_big = [c for c in case_list if MEMORY_FACTOR * largest[c] > available]
        for case in too_big:
            notes.append(f"skipped {case.name}: its output is {largest[case] / 1e9:.2f} GB and "
                         f"the backends need ~{MEMORY_FACTOR}x that; {available / 1e9:.1f} GB free")
        case_list = [c for c in case_list if c not in too_big]
    for backend in backends:
        reasons = {bench_cases.unavailable(c, backend, device) for c in case_list}
        reasons.discard(None)
        if reasons:
            notes.append(f"no {backend} rows: {'; '.join(sorted(reasons))}")
    for note in notes:
        print(f"note: {note}", flush=True)
    compile_options = dict(bench_cases.COMPILE_OPTIONS, mode=args.compile_mode)
    rows = run_cases(case_list, backends, device, min_run_time=args.min_run_time,
                     min_samples=args.min_samples, compile_options=compile_options,
                     progress=not args.no_progress)
    info = measure.machine()
    settings = {"command": ["sam2-prompt-bench", *(args.argv or [])], "device": str(device),
                "backends": backends, "compile_options": compile_options,
                "threads": torch.get_num_threads() if torch.device(device).type == "cpu" else None,
                "min_run_time": args.min_run_time, "min_samples": args.min_samples,
                "oracles": sorted({r["oracle"] for r in rows}), "notes": notes}
    print()
    targets = check_targets(rows)
    if targets:
        print("Foundation targets (our PyTorch path on CPU, embed_dim 256, no_grad, forward(points=...)):")
        for ok, line in targets:
            print(f"  {'PASS' if ok else 'FAIL'}  {line}")
        print()
    elif args.check_targets or args.foundation:
        print("Foundation targets: not checked (they are for the PyTorch path on CPU, against "
              "upstream: run on --device cpu with the upstream and torch backends)\n")
    print(measure.machine_line(info, device))
    print(format_rows(rows))
    write_outputs(rows, args, info, settings)
    if (args.check_targets or args.foundation) and (not targets or not all(ok for ok, _ in targets)):
        return 1
    return 0


def _ints(text: Optional[str], default):
    return tuple(int(v) for v in text.split(",")) if text else default


# ----------------------------------------------------------------------------- sass
def cmd_sass(args) -> int:
    """The kernel engineer's static report: compile_variants + format_table."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces @triton.jit kernels: compile in a clean child process.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = ["sass", "--arch", args.arch] + (["--json", args.json] if args.json else []) + \
            (["--dump-dir", args.dump_dir] if args.dump_dir else [])
        return subprocess.call([sys.executable, "-m", "sam2_prompt.bench.cli", *argv], env=env)
    # Triton 3.9 warns when this is unset; 1 is its current default (the kernels use explicit FMAs).
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    try:
        from sam2_prompt.kernels import aot
    except ModuleNotFoundError as err:
        raise SystemExit(f"sass needs Triton and sam2_prompt.kernels.aot ({err}): "
                         "pip install 'sam2-prompt[triton]'")
    rows = aot.compile_variants(tuple(args.arch.split(",")), args.dump_dir)
    print(aot.format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": measure.machine(), "kernels": rows}, indent=2))
    return 0


# ----------------------------------------------------------------------------- model
def model_rows(case, bandwidth: float, launch_s: float) -> List[dict]:
    """Per backend: launches, bytes read and written, bytes allocated, predicted time.

    Eager backends are counted, not assumed: one call on CPU tensors under a TorchDispatchMode
    (aten compute ops ~ CUDA kernel launches, bytes each reads and writes) and torch.profiler
    (allocations). The fused Triton kernel is 1 launch reading the inputs and writing the output
    once. Predicted time = max(bytes / bandwidth, launches x launch latency)."""
    inputs = case.inputs("cpu")
    input_bytes = sum(measure.tensor_bytes(t) for t in _tensors(inputs))
    counted = []
    for backend in ("upstream", "torch"):
        fn = bench_cases.build(case, backend, "cpu")
        if fn is None:
            continue
        traffic = measure.traffic(fn, inputs)
        allocated = measure.bytes_allocated(fn, inputs, "cpu")["bytes_allocated"]
        counted.append((backend, traffic["launches"], traffic["read_bytes"], traffic["written_bytes"],
                        allocated, "counted: aten ops of one eager call on CPU"))
    counted.append(("triton", 1, input_bytes, case.output_bytes(), case.output_bytes(),
                    "fused kernel: reads the inputs, writes the output once"))
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
    """Bytes, launches and a roofline prediction per backend, labelled as a model."""
    bandwidth, described = GPUS[args.gpu]
    if args.bandwidth_tbs:
        bandwidth, described = args.bandwidth_tbs * 1e12, f"{args.gpu} at {args.bandwidth_tbs} TB/s (given)"
    case = bench_cases.make(args.batch, args.points, args.boxes, embed_dim=args.embed_dim)
    if case.tokens == 0:
        raise SystemExit("model: give --points or --boxes")
    rows = model_rows(case, bandwidth, args.launch_us * 1e-6)
    print(f"MODEL (not a measurement) of one forward on {described}, {args.launch_us:g} us per launch:\n"
          f"  predicted time = max((bytes read + written) / bandwidth, launches x {args.launch_us:g} us)\n"
          f"  case B={case.batch}, N={case.points}, K={case.boxes}, C={case.embed_dim}, fp32: output "
          f"[{case.batch}, {case.tokens}, {case.embed_dim}] = {_bytes(case.output_bytes())}\n")
    head = ["backend", "launches", "read", "written", "traffic/out", "allocated", "alloc/out",
            "predicted", "bound", "prompts/s", "points/s", "how"]
    lines = [head]
    for r in rows:
        lines.append([r["backend"], str(r["launches"]), _bytes(r["read_bytes"]), _bytes(r["written_bytes"]),
                      f"{r['traffic_x_output']:.1f}x", _bytes(r["bytes_allocated"]),
                      f"{r['alloc_x_output']:.1f}x", _seconds(r["predicted_s"]), r["bound"],
                      f"{case.batch / r['predicted_s']:.3g}",
                      f"{r['predicted_points_per_s']:.3g}" if case.points else "-", r["how"]])
    print(_table(lines, left_last=True))
    print("\nNot modelled: host-side overhead of eager PyTorch (several us per op, which dominates "
          "small batches), caches, and compiled backends (Inductor's kernels: measure with `run`).")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": {"gpu": described, "bandwidth_bytes_per_s": bandwidth, "launch_s": args.launch_us * 1e-6,
                      "formula": "max((read_bytes + written_bytes) / bandwidth, launches * launch_s)"},
            "case": case.as_dict(), "machine": measure.machine(), "results": rows}, indent=2))
    return 0


# ----------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam2-prompt-bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="With no command: run --quick on CUDA if available, else CPU.")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="time the backends side by side (checks their outputs agree)")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="the quick case set (< 60 s on 2 CPU cores)")
    which.add_argument("--foundation", action="store_true",
                       help="only the foundation cases; check their targets (exit 1 on FAIL)")
    sweep = run.add_argument_group("sweep (without --quick/--foundation; defaults in brackets)")
    d = bench_cases.SWEEP_DEFAULTS
    sweep.add_argument("--batch", help=f"prompts per batch [{_csv(d['batches'])}]")
    sweep.add_argument("--points", help=f"points per prompt [{_csv(d['points'])}]")
    sweep.add_argument("--boxes", help=f"boxes per prompt [{_csv(d['boxes'])}]")
    sweep.add_argument("--masks", action="store_true", help="also cases with a mask prompt")
    sweep.add_argument("--embed-dim", help=f"embedding widths [{_csv(d['embed_dims'])}]")
    sweep.add_argument("--dtype", default="float32",
                       help="our module's (output) dtypes: float32,bfloat16,float16 [float32]; "
                            "Meta's module stays fp32")
    run.add_argument("--device", help="cpu or cuda (default: cuda if available, else cpu)")
    run.add_argument("--backends", help=f"comma list of {','.join(bench_cases.BACKENDS)} "
                                        f"[{','.join(DEFAULT_BACKENDS)}]")
    run.add_argument("--cases", help="keep the cases whose name contains one of these (comma list)")
    run.add_argument("--check-targets", action="store_true",
                     help="exit 1 unless the foundation targets pass")
    run.add_argument("--compile-mode", default=bench_cases.COMPILE_OPTIONS["mode"],
                     help="torch.compile mode of the *-compiled backends [max-autotune, as SAM-2's "
                          "VOS predictor]")
    run.add_argument("--threads", type=int, default=1,
                     help="CPU threads (torch.set_num_threads) for the run [1, as torch.utils.benchmark]")
    run.add_argument("--min-run-time", type=float, default=0.2, help="CPU: seconds per timing [0.2]")
    run.add_argument("--min-samples", type=int, default=5, help="CPU: at least this many timed blocks [5]")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", help="write {machine, settings, results} here")
    run.add_argument("--csv", help="write the results here")
    run.add_argument("--plot", help="write a PNG here (needs matplotlib: the 'plot' extra)")
    sass = sub.add_parser("sass", help="compile every kernel variant ahead of time; static SASS report")
    sass.add_argument("--arch", default="sm_80,sm_90")
    sass.add_argument("--json", help='write {"machine", "kernels": [rows]} here')
    sass.add_argument("--dump-dir", help="keep the cubin/ptx/sass files here")
    model = sub.add_parser("model", help="MODEL: bytes, launches and a roofline prediction per backend")
    model.add_argument("--gpu", choices=sorted(GPUS), default="H100")
    model.add_argument("--bandwidth-tbs", type=float, help="override the GPU's bandwidth (TB/s)")
    model.add_argument("--launch-us", type=float, default=LAUNCH_US, help=f"us per launch [{LAUNCH_US:g}]")
    model.add_argument("--batch", type=int, default=16384)
    model.add_argument("--points", type=int, default=4)
    model.add_argument("--boxes", type=int, default=0)
    model.add_argument("--embed-dim", type=int, default=256)
    model.add_argument("--json", help="write the model's rows here")
    return p


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # the main job: the quick benchmark on the best device
        argv = ["run", "--quick"]
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return 2
    args.argv = argv
    return {"run": cmd_run, "sass": cmd_sass, "model": cmd_model}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
