"""`sam2-prompt-bench run`: the backends timed side by side, the table, its legend, and (when
asked) the foundation targets."""

import csv
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.utils._pytree as pytree

from . import cases as bench_cases
from . import measure
from .cli import FOUNDATION_BACKENDS, DEFAULT_BACKENDS, UsageError
from .table import seconds, table

MEMORY_FACTOR = 16  # a case needs about this many times its output in memory (Meta's code: ~15x)

# column -> what it means, printed under the table for the columns it shows
LEGEND = {
    "median": "time per call under no_grad (CPU: torch.utils.benchmark; CUDA: triton do_bench)",
    "q20-q80": "20th-80th percentile of the timings",
    "graph": "CUDA: median when replayed from a CUDA graph (device time, no launch overhead)",
    "prompts/s": "batch / median",
    "points/s": "batch x points / median",
    "GB/s": "least traffic (inputs read + outputs written once) / median",
    "%peak": "GB/s as a share of the device's peak DRAM bandwidth",
    "alloc/out": "bytes one call allocates / bytes of its output",
    "1st call": "the first call, compilation included (never in the timings)",
    "speedup": "baseline's median / this row's median, same case (higher is faster); the baseline "
               "is upstream eager, or for transformers-* / ultralytics-* rows that package's encoder",
    "max|diff|": "largest |difference| from the oracle (Meta's eager fp32 module, else the fp64 "
                 "reference; for transformers-* / ultralytics-* rows that package's encoder)",
}


# ----------------------------------------------------------------------------- measuring
def run_cases(case_list, backends, device, *, min_run_time=0.2, min_samples=5, threads=None,
              compile_options=None, progress=True) -> List[dict]:
    """One row per (case, backend) that can run here. Each backend's outputs are checked against
    its oracle (cases.oracle: Meta's module, or another pipeline's own encoder for that pipeline's
    rows) before it is timed; speedups are against the eager baseline row of the same case
    (cases.baseline: Meta's, or that pipeline's encoder)."""
    work = [(c, b) for c in case_list for b in backends
            if bench_cases.unavailable(c, b, device) is None]
    bar = _progress_bar(len(work)) if progress else None
    peak = measure.peak_bandwidth(device)
    threads = threads or torch.get_num_threads()
    rows = []
    for case in case_list:
        oracles = {}  # baseline backend -> (name, outputs): one oracle per convention
        case_rows = []
        for backend in backends:
            fn = bench_cases.build(case, backend, device, compile_options)
            if fn is None:
                continue
            if bar is not None:
                bar.set_postfix_str(f"{case.name} {backend}")
            args = bench_cases.backend_inputs(case, backend, device)
            baseline = bench_cases.baseline(backend)
            if baseline not in oracles:
                oracles[baseline] = bench_cases.oracle(case, device, baseline)
            oracle_name, expected = oracles[baseline]
            first_s, outputs = measure.first_call(fn, args, device)
            outputs = bench_cases.keep(outputs)
            diff = bench_cases.check_agreement(case, backend, outputs, expected)
            # the bytes of the outputs in this row's convention and dtype (Meta's module: fp32)
            output_bytes = case.output_bytes(outputs[0].dtype, bench_cases.tokens(case, backend))
            input_bytes = sum(measure.tensor_bytes(t) for t in _tensors(args))
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
                "embed_dim": case.embed_dim, "tokens": bench_cases.tokens(case, backend),
                "output_bytes": output_bytes,
                "threads": threads if torch.device(device).type == "cpu" else None,
                **timing,
                "prompts_per_s": case.batch / median,
                "points_per_s": case.batch * case.points / median,
                "gb_per_s": moved / median / 1e9,
                "pct_peak_bw": 100 * moved / median / peak if peak else None,
                **allocated,
                "alloc_x_output": allocated["bytes_allocated"] / max(output_bytes, 1),
                "first_call_s": first_s, "warmup_s_per_call": warm_s,
                "max_abs_diff": diff, "oracle": oracle_name, "baseline": baseline,
                "speedup_vs_upstream": None,
            })
            if bar is not None:
                bar.update()
        medians = {r["backend"]: r["median_s"] for r in case_rows}
        for row in case_rows:
            reference_s = medians.get(row["baseline"])
            row["speedup_vs_upstream"] = reference_s / row["median_s"] if reference_s else None
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


# ----------------------------------------------------------------------------- printing
def columns(rows: List[dict]) -> List[str]:
    """The table's columns for these rows (CUDA adds the CUDA-graph median and %peak)."""
    cuda = any(r["device"].startswith("cuda") for r in rows)
    head = ["case", "backend"] + (["dtype"] if len({r["dtype"] for r in rows}) > 1 else [])
    head += ["median", "q20-q80"] + (["graph"] if cuda else [])
    head += ["prompts/s", "points/s", "GB/s"] + (["%peak"] if cuda else [])
    head += ["alloc/out"] + (["1st call"] if any(r["backend"].endswith("-compiled") for r in rows) else [])
    return head + ["speedup", "max|diff|"]


def format_rows(rows: List[dict]) -> str:
    """The rows as a fixed-width table."""
    head = columns(rows)
    lines = [head]
    for r in rows:
        cell = {
            "case": r["case"], "backend": r["backend"], "dtype": r["dtype"],
            "median": seconds(r["median_s"]),
            "q20-q80": f"{seconds(r['q20_s'])}-{seconds(r['q80_s'])}",
            "graph": seconds(r["graph_median_s"]) if r.get("graph_median_s") else "-",
            "prompts/s": f"{r['prompts_per_s']:.3g}",
            "points/s": f"{r['points_per_s']:.3g}" if r["points"] else "-",
            "GB/s": f"{r['gb_per_s']:.3g}",
            "%peak": "-" if r.get("pct_peak_bw") is None else f"{r['pct_peak_bw']:.1f}",
            "alloc/out": f"{r['alloc_x_output']:.2f}x",
            "1st call": seconds(r["first_call_s"]) if r.get("first_call_s") is not None else "-",
            "speedup": "-" if r["speedup_vs_upstream"] is None else f"{r['speedup_vs_upstream']:.2f}x",
            "max|diff|": f"{r['max_abs_diff']:.1e}",
        }
        lines.append([cell[c] for c in head])
    return table(lines)


def legend(rows: List[dict]) -> str:
    """One line per measured column of the table."""
    shown = [c for c in columns(rows) if c in LEGEND]
    width = max(len(c) for c in shown)
    return "\n".join(["Columns:"] + [f"  {c.rjust(width)}  {LEGEND[c]}" for c in shown])


# ----------------------------------------------------------------------------- targets
def check_targets(rows: List[dict]) -> List[Tuple[bool, str]]:
    """The targets for our PyTorch path on a CPU (bench_cases.TARGETS), as (passed, line) pairs:
    speedup over Meta's eager module and bytes allocated per call, for the cases that have them."""
    results = []
    for r in rows:
        target, alloc_target = bench_cases.TARGETS.get(r["case"], (None, None))
        if target is None or r["backend"] != "torch" or not r["device"].startswith("cpu"):
            continue
        what = f"{r['case']} (B={r['batch']}, N={r['points']})"
        if r["speedup_vs_upstream"] is None:
            results.append((False, f"{what}: no upstream row to compare with"))
        else:
            ok = r["speedup_vs_upstream"] >= target
            results.append((ok, f"{what}: {r['speedup_vs_upstream']:.2f}x faster than upstream eager "
                                f"(target >= {target:g}x)"))
        ok = r["alloc_x_output"] <= alloc_target
        results.append((ok, f"{what}: allocates {r['alloc_x_output']:.2f}x the output's bytes per "
                            f"call (target <= {alloc_target:g}x)"))
    return results


def report_targets(rows: List[dict]) -> int:
    """Print the targets' PASS/FAIL lines and a verdict; 0 if every target passed, else 1."""
    targets = check_targets(rows)
    print()
    if not targets:
        print("Targets: NOT CHECKED. They are for the PyTorch path on CPU against upstream: run "
              "on --device cpu with the upstream and torch backends and a case that has targets "
              f"({', '.join(bench_cases.TARGETS)}).")
        return 1
    print("Targets (our PyTorch path on CPU against upstream eager, embed_dim 256, no_grad):")
    for ok, line in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {line}")
    failed = sum(not ok for ok, _ in targets)
    print(f"{failed} of {len(targets)} targets failed" if failed else f"all {len(targets)} targets passed")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- the command
def select_cases(args) -> List["bench_cases.Case"]:
    if args.foundation:
        case_list = list(bench_cases.FOUNDATION)
    elif args.quick:
        case_list = list(bench_cases.QUICK)
    else:
        d = bench_cases.SWEEP_DEFAULTS
        case_list = bench_cases.sweep(
            batches=args.batch or d["batches"], points=args.points or d["points"],
            boxes=args.boxes or d["boxes"], masks=(False, True) if args.masks else (False,),
            embed_dims=args.embed_dim or d["embed_dims"], dtypes=tuple(args.dtype))
    if args.cases:
        keys = args.cases.split(",")
        case_list = [c for c in case_list if any(key in c.name for key in keys)]
    return case_list


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


def cmd_run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is visible to torch {torch.__version__}")
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()  # before the sweep, not after it
    threads_before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        # torch.utils.benchmark's convention: 1 thread unless asked (on a shared or busy machine,
        # more threads than idle cores turn every OpenMP barrier into a scheduler time slice).
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads_before)


def _plan(args, device) -> Tuple[list, list, List[str]]:
    """(cases, backends, notes): what will run, and a note for each thing left out. A backend
    the user named that cannot run any case here is a UsageError; a default one is a note."""
    backends = list(args.backends or (FOUNDATION_BACKENDS if args.foundation else DEFAULT_BACKENDS))
    case_list = select_cases(args)
    if not case_list:
        raise UsageError("no case selected (check --cases and the sweep options)")
    notes = []
    available = _available_bytes(device)
    if available:
        largest = {c: max(c.output_bytes(), c.output_bytes(torch.float32)) for c in case_list}
        too_big = [c for c in case_list if MEMORY_FACTOR * largest[c] > available]
        for case in too_big:
            notes.append(f"skipped {case.name}: its output is {largest[case] / 1e9:.2f} GB and "
                         f"the backends need ~{MEMORY_FACTOR}x that; {available / 1e9:.1f} GB free")
        case_list = [c for c in case_list if c not in too_big]
        if not case_list:
            raise UsageError("every selected case is too large for the free memory: " + "; ".join(notes))
    for backend in list(backends):
        reasons = [bench_cases.unavailable(c, backend, device) for c in case_list]
        why = "; ".join(sorted(set(r for r in reasons if r is not None)))
        if all(r is not None for r in reasons):
            if args.backends:
                raise UsageError(f"backend {backend!r} cannot run on {device}: {why}")
            notes.append(f"no {backend} rows: {why}")
            backends.remove(backend)
        elif why:
            notes.append(f"some cases have no {backend} row: {why}")
    return case_list, backends, notes


def _run(args, device) -> int:
    case_list, backends, notes = _plan(args, device)
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
    print(measure.machine_line(info, device))
    print(format_rows(rows))
    print()
    print(legend(rows))
    write_outputs(rows, args, info, settings)
    if args.check_targets or args.foundation:
        return report_targets(rows)
    return 0


def write_outputs(rows, args, info, settings) -> None:
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
        from .plot import plot

        plot(rows, args.plot, measure.machine_line(info, settings["device"]))
