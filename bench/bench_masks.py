"""The mask path on the CPU: Meta's ``mask_downscaling`` against ``sam2_prompt.masks``, one run.

    python -m sam2_prompt.bench.bench_masks [--batch 64] [--grid 64] [--threads 1]
                                            [--rounds 3] [--after-idle SECONDS] [--json PATH]

One process, ``torch.set_num_threads(--threads)`` (1 by default), ``torch.inference_mode()``,
the same seeded weights for every path (Meta's module, N(0, 1) parameters); every path is first
checked against Meta's output (max abs difference printed); "output first touch" (allocating
the output and writing it once) is the floor of any path returning a fresh output, "first touch,
huge pages" the same after the huge-page hint (which the fast path gives its output in a batch
job's steady state, when the previous output was freed less than a second before). Times: ``torch.utils.benchmark``
blocked_autorange (bench/measure.py ``time_call``), the paths interleaved over ``--rounds``
rounds so that a noisy machine slows all of them alike; the speedup is the median of the
per-round ratios. Bytes allocated per call: torch.profiler's allocation events
(``bytes_allocated``). Launches and bytes read / written: one kernel per aten compute op
(``traffic``); the fused kernel's row is its model (``kernels.mask.fused_traffic``).
``--after-idle S`` adds single calls of the fast path, each after S seconds asleep, with the hint
forced on every call and with the fast path's own policy (which declines it after a pause),
interleaved: what a call costs when the memory it gets has been free for a while (on a VM whose
host reclaims free guest memory, more with huge pages).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from sam2_prompt import masks as mask_path
from sam2_prompt.huge_pages import HUGE_PAGES_ENV, huge_page_hint
from sam2_prompt.bench import measure

EMBED_DIM, MASK_CHANS, EPS = 256, 16, 1e-6


def seeded_meta(embed_dim: int, grid: int, mask_chans: int):
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as MetaPromptEncoder

    torch.manual_seed(0)
    meta = MetaPromptEncoder(embed_dim, (grid, grid), (16 * grid, 16 * grid), mask_chans)
    with torch.no_grad():
        for param in meta.parameters():
            torch.nn.init.normal_(param)
    return meta.eval()


def mask_weights(meta) -> tuple:
    """Meta's mask_downscaling parameters in the mask functions' order, detached."""
    seq = meta.mask_downscaling
    return tuple(p.detach() for p in (seq[0].weight, seq[0].bias, seq[1].weight, seq[1].bias,
                                      seq[3].weight, seq[3].bias, seq[4].weight, seq[4].bias,
                                      seq[6].weight, seq[6].bias))


def _hinted(t):
    huge_page_hint(t)
    return t


def paths(meta, out_shape):
    weights = mask_weights(meta)
    return {
        # the floor of any path returning a fresh output: allocating it and touching every page
        "output first touch": lambda m: torch.empty(out_shape).fill_(0.0),
        # the same with the huge-page hint the fast path gives its output in a batch job's steady
        # state (sam2_prompt.huge_pages), here on every call
        "first touch, huge pages": lambda m: _hinted(torch.empty(out_shape)).fill_(0.0),
        "meta mask_downscaling": meta.mask_downscaling,
        "ours mask_embed_fast": lambda m: mask_path.mask_embed_fast(m, *weights, EPS, EPS,
                                                                    torch.float32),
        "ours mask_embed_reference": lambda m: mask_path.mask_embed_reference(
            m, *weights, EPS, EPS, torch.float32),
    }


def after_idle(fn, masks, idle_s: float, calls: int = 2, held: int = 4) -> dict:
    """ms per call of fn (the fast path) in three modes: the hint forced, the fast path's own
    policy, the hint off (SAM2_PROMPT_HUGE_PAGES=0). "idle": single calls, each after idle_s
    seconds asleep, the modes in turn; "held": after idle_s asleep, ``held`` calls in a row
    whose outputs are all kept until the last."""
    modes = {"hint forced": (huge_page_hint, "1"), "policy": (mask_path.advise_huge_pages, "1"),
             "no hint": (mask_path.advise_huge_pages, "0")}
    times = {"idle": {name: [] for name in modes}, "held": {name: [] for name in modes}}
    saved = mask_path.advise_huge_pages, os.environ.get(HUGE_PAGES_ENV)

    def timed(kept):
        start = time.perf_counter()
        kept.append(fn(masks))
        return (time.perf_counter() - start) * 1e3

    try:
        for rep in range(calls + 1):
            for name, (advise, enabled) in modes.items():
                mask_path.advise_huge_pages = advise
                os.environ[HUGE_PAGES_ENV] = enabled
                time.sleep(idle_s)
                if rep < calls:
                    times["idle"][name].append(timed([]))
                else:
                    kept = []
                    times["held"][name] = [timed(kept) for _ in range(held)]
    finally:
        mask_path.advise_huge_pages = saved[0]
        if saved[1] is None:
            os.environ.pop(HUGE_PAGES_ENV, None)
        else:
            os.environ[HUGE_PAGES_ENV] = saved[1]
    return times


def run(batch: int, grid: int, threads: int, rounds: int, min_run_time: float,
        idle_s: float = 0.0) -> dict:
    torch.set_num_threads(threads)
    meta = seeded_meta(EMBED_DIM, grid, MASK_CHANS)
    masks = torch.randn(batch, 1, 4 * grid, 4 * grid, generator=torch.Generator().manual_seed(1))
    out_bytes = batch * EMBED_DIM * grid * grid * 4
    rows = {}
    with torch.inference_mode():
        expected = meta.mask_downscaling(masks)
        out_shape = (batch, EMBED_DIM, grid, grid)
        for name, fn in paths(meta, out_shape).items():
            traffic = measure.traffic(fn, (masks,))
            alloc = measure.bytes_allocated(fn, (masks,), "cpu")["bytes_allocated"]
            diff = (fn(masks) - expected).abs().max().item() if "touch" not in name else None
            rows[name] = {"path": name, "max_abs_diff": diff, "bytes_allocated": alloc,
                          "alloc_over_output": alloc / out_bytes if out_bytes else None,
                          "launches": traffic["launches"], "read_bytes": traffic["read_bytes"],
                          "written_bytes": traffic["written_bytes"], "medians_ms": []}
        for _ in range(rounds):
            for name, fn in paths(meta, out_shape).items():
                timing = measure.time_call(fn, (masks,), "cpu", out_bytes,
                                           min_run_time=min_run_time, threads=threads)
                rows[name]["medians_ms"].append(timing["median_s"] * 1e3)
        idle = after_idle(paths(meta, out_shape)["ours mask_embed_fast"], masks, idle_s) \
            if idle_s > 0 else None
    meta_ms = rows["meta mask_downscaling"]["medians_ms"]
    for row in rows.values():
        row["median_ms"] = statistics.median(row["medians_ms"])
        ratios = [m / t for m, t in zip(meta_ms, row["medians_ms"])]
        row["speedup_vs_meta"] = statistics.median(ratios)
    try:
        from sam2_prompt.kernels.mask import fused_traffic
    except ModuleNotFoundError:  # no Triton: no model row
        pass
    else:
        rows["fused kernel (model)"] = {"path": "fused kernel (model)", **fused_traffic(
            batch, 4 * grid, 4 * grid, EMBED_DIM, MASK_CHANS, torch.float32, torch.float32)}
    return {"batch": batch, "grid": grid, "threads": threads, "rounds": rounds,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "output_bytes": out_bytes, "rows": list(rows.values()),
            "after_idle": idle and {"idle_s": idle_s, "fast_path_ms": idle}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--grid", type=int, default=64, help="embedding grid side (masks: 4x)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--after-idle", type=float, default=0.0, metavar="SECONDS",
                        help="also time single fast-path calls after this long asleep: the "
                             "huge-page hint forced, the fast path's policy, no hint [0: not run]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = run(args.batch, args.grid, args.threads, args.rounds, args.min_run_time,
                 args.after_idle)
    side = 4 * args.grid
    print(f"# {args.batch} masks of {side}x{side}, C={EMBED_DIM}, c={MASK_CHANS}, "
          f"{args.threads} thread(s), torch {result['torch']}, {result['machine']}; "
          f"output {result['output_bytes'] / 1e6:.1f} MB")
    for r in result["rows"]:
        line = f"{r['path']:27s}"
        if "median_ms" in r:
            rounds = ", ".join(f"{t:.1f}" for t in r["medians_ms"])
            line += (f" {r['median_ms']:8.1f} ms (rounds: {rounds})  x{r['speedup_vs_meta']:.2f}"
                     f" vs Meta  alloc {r['bytes_allocated'] / 1e6:7.1f} MB"
                     f" ({r['alloc_over_output']:.3f}x out)")
            if r["max_abs_diff"] is not None:
                line += f"  max|diff| {r['max_abs_diff']:.1e}"
        line += (f"  launches {r['launches']:4d}  read {r['read_bytes'] / 1e6:7.1f} MB"
                 f"  written {r['written_bytes'] / 1e6:7.1f} MB")
        print(line)
    if result["after_idle"]:
        for kind, what in (("idle", "single calls"), ("held", "calls in a row, outputs held")):
            for name, times in result["after_idle"]["fast_path_ms"][kind].items():
                print(f"fast path after {args.after_idle:g} s idle, {what}, {name}: "
                      + ", ".join(f"{t:.1f}" for t in times) + " ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
