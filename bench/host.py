"""`sam2-prompt-bench host`: the host time of one eager forward, measured without a GPU.

On a GPU, small calls (a click, a video frame's objects, a mask generator's batch) are bound by
the host: what Python and PyTorch do before the GPU sees the launch. This command measures that
on any machine, as CPU time of the calling thread (``time.thread_time_ns``: other processes on a
busy machine inflate it little), the best of several rounds, the backends' rounds alternated so
that a busy machine slows them alike:

- ``triton``: our module on the Triton path exactly as a CUDA call takes it (its forward, the gate
  choosing Triton, the op layer's eager branch, the launcher, the cached binary's launch), on CPU
  tensors inside ``ops.fake_cuda_launches``: the kernels are compiled for a real architecture
  (``--arch``), and only the final launch is a no-op (``kernels.fake_driver``). Its outputs are
  never written; the interpreted kernels' results are tested separately.
- ``torch``: our module's PyTorch path on the CPU, compute included.
- ``upstream``: Meta's eager module on the CPU, compute included.

Every module has the same seeded weights, and every call runs under ``torch.no_grad()`` with one
torch thread, as ``run`` does.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

from .cli import UsageError
from .table import table

CASES = (("click", 1, 1), ("64x1", 64, 1), ("1024x4", 1024, 4))  # (name, prompts B, points N)
BACKENDS = ("triton", "torch", "upstream")
# The targets for one click: the Triton path's host time over each baseline's whole call
TARGETS = {("click", "torch"): 0.3, ("click", "upstream"): 0.12}
ROUND_SECONDS = 0.02  # each backend's share of a round; calls per round follow from it


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cmd_host(args) -> int:
    if _interpreting():
        # The interpreter replaces the @triton.jit kernels: measure in a child process without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "sam2_prompt.bench.cli", *args.argv],
                               env=env)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's notice; same code
    import torch

    from sam2_prompt import ops

    if not ops.HAS_TRITON:
        raise UsageError("host needs Triton to compile the kernels: pip install "
                         "'sam2-prompt[triton]'")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, notes = measure_host(args.rounds, capability=int(args.arch[3:]))
    finally:
        torch.set_num_threads(threads)
    for note in notes:
        print(f"note: {note}")
    print(format_rows(rows, args.arch))
    if args.json:
        from . import measure

        settings = {"command": ["sam2-prompt-bench", *args.argv], "arch": args.arch,
                    "rounds": args.rounds, "threads": 1, "notes": notes}
        Path(args.json).write_text(json.dumps(
            {"machine": measure.machine(), "settings": settings, "results": rows}, indent=2))
    if args.check_targets:
        return report_targets(rows)
    return 0


# ----------------------------------------------------------------------------- measuring
def thread_us(fn: Callable[[], object], calls: int) -> float:
    """Thread CPU time of one ``fn()`` call over ``calls`` calls, in microseconds."""
    start = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - start) / calls / 1e3


def python_calls(fn: Callable[[], object]) -> int:
    """Python function calls one ``fn()`` call makes (its own frame not counted)."""
    count = [0]

    def profiler(frame, event, arg):
        if event == "call":
            count[0] += 1

    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count[0] - 1


def _modules():
    """{backend: module} with one seeded state dict (Meta's module when sam2 is installed)."""
    from sam2_prompt import PromptEncoder

    from . import cases as bench_cases

    case = bench_cases.make(1, 1)
    upstream, state = bench_cases.seeded_state(case)
    modules = {}
    for backend in ("triton", "torch"):
        ours = PromptEncoder(case.embed_dim, bench_cases.EMB_SIZE, bench_cases.IMAGE,
                             bench_cases.MASK_CHANS, backend=backend)
        ours.load_state_dict(state)
        modules[backend] = ours.eval()
    if upstream is not None:
        modules["upstream"] = upstream.eval()
    return modules


def measure_host(rounds: int, capability: int = 90, cases=CASES):
    """(rows, notes): one row per (case, backend) with ``host_us`` (best round) and
    ``python_calls`` (one call, counted). Rounds alternate the backends."""
    import torch

    from sam2_prompt import ops

    from . import cases as bench_cases

    modules = _modules()
    notes = [] if "upstream" in modules else ["no upstream rows: Meta's sam2 is not installed "
                                              "(pip install sam2==1.1.0)"]
    rows = []
    with ops.fake_cuda_launches(capability) as fake, torch.no_grad():
        for name, batch, points in cases:
            inputs = bench_cases.make(batch, points).inputs("cpu")
            calls: Dict[str, Callable[[], object]] = {
                backend: (lambda module: lambda: module(*inputs))(module)
                for backend, module in modules.items()}
            launches = fake.launches
            counts = {}
            for backend, fn in calls.items():  # compile / fill caches, then count calls
                fn()
                counts[backend] = python_calls(fn)
            if fake.launches - launches != 2:
                raise RuntimeError(f"the Triton path launched {fake.launches - launches} kernels "
                                   f"for 2 calls of {name}: it is not the path a CUDA call takes")
            per_round = {backend: max(3, int(ROUND_SECONDS / max(thread_us(fn, 3) * 1e-6, 1e-7)))
                         for backend, fn in calls.items()}
            best = dict.fromkeys(calls, float("inf"))
            for _ in range(rounds):
                for backend, fn in calls.items():
                    best[backend] = min(best[backend], thread_us(fn, per_round[backend]))
            for backend in calls:
                rows.append({"case": name, "batch": batch, "points": points, "backend": backend,
                             "host_us": round(best[backend], 2),
                             "python_calls": counts[backend],
                             "calls_per_round": per_round[backend], "rounds": rounds})
    return rows, notes


# ----------------------------------------------------------------------------- printing
def ratios(rows: List[dict]) -> Dict[tuple, float]:
    """{(case, baseline): triton host_us / baseline host_us} for the baselines measured."""
    by = {(r["case"], r["backend"]): r["host_us"] for r in rows}
    return {(case, other): by[(case, "triton")] / by[(case, other)]
            for (case, other) in by if other != "triton" and (case, "triton") in by}


def format_rows(rows: List[dict], arch: str) -> str:
    share = ratios(rows)
    lines = [["case", "backend", "host", "python calls", "triton / this"]]
    for r in rows:
        ratio = share.get((r["case"], r["backend"]))
        lines.append([r["case"], r["backend"], f"{r['host_us']:.1f} us", str(r["python_calls"]),
                      "-" if ratio is None else f"{ratio:.3f}"])
    legend = (f"host: thread CPU time per eager forward (no_grad, 1 thread), best of "
              f"{rows[0]['rounds'] if rows else 0} alternating rounds; triton: the CUDA path with "
              f"kernels compiled for {arch} and a no-op final launch (kernels/fake_driver.py); "
              "torch and upstream: the whole CPU call, compute included")
    return table(lines) + "\n\n" + legend


def check_targets(rows: List[dict]) -> List[tuple]:
    share = ratios(rows)
    results = []
    for (case, baseline), target in TARGETS.items():
        ratio = share.get((case, baseline))
        if ratio is None:
            results.append((False, f"{case}: no {baseline} row to compare with"))
        else:
            results.append((ratio <= target, f"{case}: triton host time {ratio:.3f}x {baseline}'s "
                                             f"whole call (target <= {target:g}x)"))
    return results


def report_targets(rows: List[dict]) -> int:
    results = check_targets(rows)
    print()
    for ok, line in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {line}")
    return 0 if all(ok for ok, _ in results) else 1
