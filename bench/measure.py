"""Timing, allocation and traffic measurements with the field's tools.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (median, IQR and q20/q80 of the block means).
CUDA: ``triton.testing.do_bench`` (median, q20, q80 of per-call CUDA-event times, L2 flushed), and
``do_bench_cudagraph`` as well for small, launch-bound cases (the same calls replayed from a CUDA
graph: the device time without the host's launch overhead). The first call (compilation, caches)
and warm-up are timed once, separately, and never enter the timings. Allocations: the
``torch.profiler`` allocation events on CPU, the caching allocator's statistics on CUDA.
"""

import contextlib
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.utils._pytree as pytree
import torch.utils.benchmark
from torch.utils._python_dispatch import TorchDispatchMode

import sam2_prompt
from sam2_prompt.kernels import gpus

LAUNCH_BOUND_BYTES = 4 << 20  # CUDA cases with a smaller output are also timed from a CUDA graph


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def first_call(fn: Callable, args, device):
    """(seconds, outputs) of the first call: compilation for compiled backends, cache fills for
    the others."""
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        outputs = fn(*args)
    _sync(device)
    return time.perf_counter() - start, outputs


def warm_up(fn: Callable, args, device, calls: int = 3, budget_s: float = 1.0) -> float:
    """Seconds per warm-up call after the first (at least one, at most ``calls`` or ~budget_s)."""
    done, start = 0, time.perf_counter()
    with torch.no_grad():
        while done < calls and (done == 0 or time.perf_counter() - start < budget_s):
            fn(*args)
            _sync(device)
            done += 1
    return (time.perf_counter() - start) / done


def time_call(fn: Callable, args, device, output_bytes: int, *, min_run_time: float = 0.2,
              min_samples: int = 5, per_call_s: float = 0.0, threads: Optional[int] = None,
              graph: bool = True) -> Dict[str, object]:
    """Median and spread of one call under no_grad.

    CPU: blocked_autorange runs for max(min_run_time, min_samples x per_call_s) seconds, so slow
    calls still give ``min_samples`` samples. CUDA: do_bench; with ``graph`` and an output under
    LAUNCH_BOUND_BYTES also do_bench_cudagraph (``graph_*`` keys)."""
    def call():
        with torch.no_grad():
            fn(*args)

    if torch.device(device).type == "cuda":
        import triton.testing

        median, q20, q80 = triton.testing.do_bench(call, quantiles=[0.5, 0.2, 0.8])
        result = {"median_s": median / 1e3, "q20_s": q20 / 1e3, "q80_s": q80 / 1e3,
                  "iqr_s": None, "samples": None, "timer": "triton.testing.do_bench"}
        if graph and output_bytes < LAUNCH_BOUND_BYTES:
            try:
                median, q20, q80 = triton.testing.do_bench_cudagraph(call, quantiles=[0.5, 0.2, 0.8])
            except RuntimeError as err:  # a forward that cannot be captured: say so, keep the row
                result["graph_error"] = str(err).splitlines()[0][:200]
            else:
                result.update({"graph_median_s": median / 1e3, "graph_q20_s": q20 / 1e3,
                               "graph_q80_s": q80 / 1e3})
                result["timer"] += " + do_bench_cudagraph"
        return result
    timer = torch.utils.benchmark.Timer("call()", globals={"call": call},
                                        num_threads=threads or torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=max(min_run_time, 1.05 * min_samples * per_call_s))
    times = np.asarray(measurement.times)
    return {"median_s": float(measurement.median), "q20_s": float(np.quantile(times, 0.2)),
            "q80_s": float(np.quantile(times, 0.8)), "iqr_s": float(measurement.iqr),
            "samples": len(times), "timer": "torch.utils.benchmark.Timer.blocked_autorange"}


@contextlib.contextmanager
def _native_stderr_silenced():
    """Kineto prints profiler_start/stop lines from C++ to fd 2; keep them off the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def bytes_allocated(fn: Callable, args, device) -> Dict[str, Optional[int]]:
    """Bytes one call allocates, summed over its allocations (``bytes_allocated``), and on CUDA
    the growth of the allocator's peak (``peak_bytes``: max_memory_allocated delta)."""
    with torch.no_grad():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
            current = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn(*args)
            torch.cuda.synchronize(device)
            after = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
            return {"bytes_allocated": after - before,
                    "peak_bytes": torch.cuda.max_memory_allocated(device) - current}
        with _native_stderr_silenced(), torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn(*args)
    # An op's memory usage includes its children's (aten::to -> _to_copy -> empty_strided):
    # count each allocation once, as the self usage of the op that made it.
    return {"bytes_allocated": sum(max(e.self_cpu_memory_usage, 0) for e in prof.events()),
            "peak_bytes": None}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of distinct elements a tensor addresses (a broadcast, stride-0 dimension once)."""
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elements *= size
    return elements * t.element_size() if t.numel() else 0


class OpTraffic(TorchDispatchMode):
    """Counts compute ops (would-be kernel launches) and the bytes they read and write.

    Views and bare allocations launch nothing and are not counted; every other aten op counts one
    launch, reading each input tensor once and writing each output once (an ``out=`` tensor is
    the op's output, not also an input)."""

    NO_LAUNCH = {"view", "_unsafe_view", "reshape", "expand", "slice", "select", "unsqueeze",
                 "squeeze", "permute", "transpose", "t", "as_strided", "alias", "detach", "split",
                 "unbind", "narrow", "lift_fresh", "empty", "new_empty", "empty_strided",
                 "empty_like", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel"}

    def __init__(self):
        super().__init__()
        self.launches = 0
        self.read_bytes = 0
        self.written_bytes = 0
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.__name__.split(".")[0]
        if name in self.NO_LAUNCH:
            return out
        inputs = {k: v for k, v in kwargs.items() if k != "out"}
        self.launches += 1
        self.ops.append(name)
        self.read_bytes += sum(tensor_bytes(t) for t in pytree.tree_leaves((args, inputs))
                               if isinstance(t, torch.Tensor))
        self.written_bytes += sum(tensor_bytes(t) for t in pytree.tree_leaves(out)
                                  if isinstance(t, torch.Tensor))
        return out


def traffic(fn: Callable, args) -> Dict[str, object]:
    """One eager call's compute ops and the bytes they read and write (on CPU tensors: a model
    of the CUDA launches, one kernel per aten compute op). Counted on a second call: the first
    fills a module's caches (the folded constants), once per module, as in any pipeline."""
    with torch.no_grad():
        fn(*args)
        with OpTraffic() as mode:
            fn(*args)
    return {"launches": mode.launches, "read_bytes": mode.read_bytes,
            "written_bytes": mode.written_bytes, "ops": mode.ops}


def peak_bandwidth(device) -> float:
    """The device's peak DRAM bandwidth in bytes/s, or 0.0 when unknown (CPUs): 2 x memory clock
    x bus width from the driver (DDR), else the spec sheet for the device's name (kernels/gpus.py,
    the figures of every report)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0.0
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8
    return gpus.bandwidth_for_device_name(props.name)


def machine() -> dict:
    """What the numbers were measured on, and with which versions."""
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
            "cuda": torch.version.cuda, "sam2_prompt": sam2_prompt.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
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
    info["git_commit"], info["git_dirty"] = _git_state(Path(sam2_prompt.__file__).resolve().parents[1])
    return info


def _git_state(root: Path):
    def git(*cmd):
        return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True,
                              timeout=5).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def machine_line(info: dict, device) -> str:
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    commit = info["git_commit"] or "no git"
    if info.get("git_dirty"):
        commit += ", uncommitted changes"
    return (f"machine: {info['cpu']} ({info['cores']} cores, torch threads {info['torch_threads']})"
            f"{gpu}; python {info['python']}, torch {info['torch']}, triton {info['triton']}, "
            f"sam2 {info['sam2']}, sam2-prompt {info['sam2_prompt']} ({commit}); device {device}")
