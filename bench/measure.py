"""Timing, allocation and traffic measurements with the field's tools.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (median and quantiles of the block times).
CUDA: ``triton.testing.do_bench`` (median, q20, q80), or ``do_bench_cudagraph`` for small,
launch-bound cases. Allocations: ``torch.profiler`` with ``profile_memory`` on CPU, the caching
allocator's peak on CUDA. Warm-up (and compilation) is timed once, separately.
"""

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
import torch.utils.benchmark
from torch.utils._python_dispatch import TorchDispatchMode

import sam2_prompt

LAUNCH_BOUND_BYTES = 4 << 20  # below this output size a CUDA case is timed with CUDA graphs


def warm_up(fn: Callable, args) -> float:
    """Seconds for the first calls (compilation, caches), excluded from the timings."""
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_call(fn: Callable, args, device, output_bytes: int, min_run_time: float) -> Dict[str, float]:
    """median_s, q20_s, q80_s of one call under no_grad."""
    def call():
        with torch.no_grad():
            fn(*args)

    if torch.device(device).type == "cuda":
        import triton.testing

        if output_bytes < LAUNCH_BOUND_BYTES:
            median, q20, q80 = triton.testing.do_bench_cudagraph(call, quantiles=[0.5, 0.2, 0.8])
        else:
            median, q20, q80 = triton.testing.do_bench(call, quantiles=[0.5, 0.2, 0.8])
        return {"median_s": median / 1e3, "q20_s": q20 / 1e3, "q80_s": q80 / 1e3}
    timer = torch.utils.benchmark.Timer("call()", globals={"call": call})
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    times = np.asarray(measurement.times)
    return {"median_s": float(measurement.median), "q20_s": float(np.quantile(times, 0.2)),
            "q80_s": float(np.quantile(times, 0.8))}


def bytes_allocated(fn: Callable, args, device) -> int:
    """Bytes allocated by one call (CPU: the profiler's allocation events; CUDA: peak growth)."""
    with torch.no_grad():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(*args)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            fn(*args)
    # An op's memory usage includes its children's (aten::to -> _to_copy -> empty_strided):
    # count each allocation once, as the self usage of the op that made it.
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


class OpTraffic(TorchDispatchMode):
    """Counts compute ops (would-be kernel launches) and the bytes they read and write."""

    VIEWS = {"view", "_unsafe_view", "reshape", "expand", "slice", "select", "unsqueeze",
             "squeeze", "permute", "transpose", "t", "as_strided", "alias", "detach", "split",
             "unbind", "narrow", "lift_fresh", "empty", "new_empty", "empty_strided"}

    def __init__(self):
        super().__init__()
        self.launches = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in self.VIEWS:
            return out
        self.launches += 1
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs, out))
                   if isinstance(a, torch.Tensor)]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def traffic(fn: Callable, args) -> Dict[str, int]:
    """Compute ops and bytes each reads/writes in one eager call (on CPU tensors, as a model)."""
    with torch.no_grad(), OpTraffic() as mode:
        fn(*args)
    return {"launches": mode.launches, "bytes": mode.bytes}


def peak_bandwidth(device) -> float:
    """The device's DRAM bandwidth in bytes/s (spec sheet), or 0 when unknown (CPUs)."""
    if torch.device(device).type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, bw in (("H200", 4.8e12), ("H100", 3.35e12), ("A100", 2.0e12), ("L40", 0.864e12),
                    ("A10", 0.6e12), ("4090", 1.008e12)):
        if key in name:
            return bw
    return 0.0


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "sam2_prompt": sam2_prompt.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ModuleNotFoundError:
        info["triton"] = None
    try:
        from importlib.metadata import version

        info["sam2"] = version("sam2")
    except Exception:  # noqa: BLE001 - not installed
        info["sam2"] = None
    try:
        root = Path(sam2_prompt.__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info
