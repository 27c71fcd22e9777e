"""A fake CUDA driver for Triton: the real binder, compiler (to a real cubin for the chosen arch),
kernel cache and launch path run on a machine without a GPU; only the final launch is a no-op.

For measuring and testing the host side of a launch: what a CUDA call costs on the CPU before the
GPU sees it. With ``fake_cuda_driver()`` active, ``kernel[grid](*cpu_tensors)`` binds and
specialises the arguments, compiles (or finds) the binary, "loads" it (``load_binary`` returns
placeholder handles) and calls ``FakeLauncher``, which checks the argument count, reads each
pointer argument's ``data_ptr()`` as the C launcher does, and counts the launch. TRITON_INTERPRET
must be unset (the interpreter replaces @triton.jit kernels).

Leaving the context restores the previous driver and every JIT kernel's caches, so nothing
compiled or "loaded" under the fake leaks into real launches.
"""

import contextlib
import time
from typing import Callable

from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime.driver import driver

_ARCH_PROPERTIES = {  # what _init_handles asks of a device: shared memory per block (opt-in)
    80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376,
}


class FakeUtils:
    """The subset of the CUDA driver's utils the JIT and CompiledKernel call."""

    def __init__(self, capability: int):
        self.capability = capability

    def load_binary(self, name, kernel, shared, device):
        # (module, function, n_regs, n_spills, n_max_threads): placeholder handles
        return 1, 1, 0, 0, 1024

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        return {"max_shared_mem": _ARCH_PROPERTIES.get(self.capability, 101376),
                "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}


class FakeLauncher:
    """CudaLauncher's stand-in: checks and counts, launches nothing."""

    def __init__(self, src, metadata, fake):
        self.num_args = len(src.fn.arg_names)
        self.pointers = [index for index, kind in enumerate(src.signature.values())
                         if isinstance(kind, str) and kind.startswith("*")]
        self.fake = fake

    def __call__(self, grid_x, grid_y, grid_z, stream, function, packed_metadata,
                 launch_metadata, enter_hook, exit_hook, *args):
        if len(args) != self.num_args:
            raise TypeError(f"launch with {len(args)} arguments, the kernel takes "
                            f"{self.num_args}")
        for index in self.pointers:  # what the C launcher reads of each pointer argument
            args[index].data_ptr()
        if enter_hook is not None:
            enter_hook(launch_metadata)
        self.fake.launches += 1
        if exit_hook is not None:
            exit_hook(launch_metadata)


class FakeCudaDriver(DriverBase):
    """A Triton driver for a CUDA device of the given capability that never touches a GPU."""

    def __init__(self, capability: int = 90):
        super().__init__()
        self.capability = capability
        self.utils = FakeUtils(capability)
        self.launches = 0
        fake = self

        class Launcher(FakeLauncher):
            def __init__(self, src, metadata):
                super().__init__(src, metadata, fake)

        self.launcher_cls = Launcher

    @classmethod
    def is_active(cls):
        return False  # never chosen by Triton on its own

    def map_python_to_cpp_type(self, ty: str) -> str:
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    def get_current_target(self):
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.capability, 10)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("the fake CUDA driver runs nothing: there is nothing to time")


def _jit_functions():
    from triton.runtime.jit import _triton_jit_function_registry

    return list(_triton_jit_function_registry.values())


@contextlib.contextmanager
def fake_cuda_driver(capability: int = 90):
    """Make a FakeCudaDriver Triton's active driver inside the block (yielded). Every JIT kernel
    starts with empty caches there, and gets its own back afterwards; binaries "loaded" under
    the fake are never unloaded through the real driver."""
    from . import lean_launch

    fake = FakeCudaDriver(capability)
    previous = driver._active  # None when no driver was made yet (creating one needs a GPU)
    saved = {}  # by id: a JITFunction's hash follows its source, which may be edited meanwhile
    for kernel in _jit_functions():
        saved[id(kernel)] = kernel, kernel.device_caches
        kernel.device_caches = type(kernel.device_caches)(kernel.create_binder)
    lean_launch.forget_binaries()
    driver.set_active(fake)
    try:
        yield fake
    finally:
        driver.set_active(previous)
        lean_launch.forget_binaries()
        for kernel in _jit_functions():
            for kernel_cache, *_ in kernel.device_caches.values():
                for compiled in kernel_cache.values():
                    compiled.module = None  # placeholder handles: nothing to unload
            if id(kernel) in saved and saved[id(kernel)][0] is kernel:
                kernel.device_caches = saved[id(kernel)][1]
            else:
                kernel.device_caches = type(kernel.device_caches)(kernel.create_binder)


def host_seconds_per_call(fn: Callable[[], object], calls: int = 1000, rounds: int = 5) -> float:
    """Thread CPU time of one ``fn()`` call: the best of ``rounds`` rounds of ``calls`` calls
    (CPU time of this thread only, so other processes on a busy machine inflate it little)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time_ns() - start) / calls)
    return best * 1e-9


def compare_launch_paths(calls: int = 1000, rounds: int = 7, capability: int = 90) -> dict:
    """Host time per launch of the sparse forward for one click, under the fake driver:
    ``kernel[grid](...)`` (JITFunction.run) against ``lean_launch.launch``, the whole validating
    launcher (``sparse_embed_fwd``: checks, allocation, launch) with each, and the op layer's
    eager entry (``launch_checked``: a quick test of the weights, a planned launch).
    Rounds alternate between the paths, so that a busy machine slows them alike; microseconds,
    best round."""
    import torch

    from . import aot, lean_launch, sparse

    click = (torch.rand(1, 1, 2) * 1024, torch.ones(1, 1, dtype=torch.int32),
             torch.zeros(1, 0, 4), True, torch.randn(2, 128), torch.randn(4, 256),
             torch.randn(1, 256), 1024, 1024, torch.float32)
    with aot._recorded_launches() as recorded:
        sparse.sparse_embed_fwd(*click)
    kernel, grid, args, kwargs = recorded[0]

    def through(launch_fn):
        saved = sparse.launch
        sparse.launch = launch_fn
        try:
            return sparse.sparse_embed_fwd(*click)
        finally:
            sparse.launch = saved

    paths = {
        "kernel[grid]": lambda: kernel[grid](*args, **kwargs),
        "lean_launch.launch": lambda: lean_launch.launch(kernel, grid, *args, **kwargs),
        "sparse_embed_fwd, kernel[grid]":
            lambda: through(lambda k, g, *a, **kw: k[g](*a, **kw)),
        "sparse_embed_fwd, lean launch": lambda: through(lean_launch.launch),
        "launch_checked": lambda: sparse.launch_checked(
            *click[:5], (click[5],), *click[6:]),
    }
    best = dict.fromkeys(paths, float("inf"))
    with fake_cuda_driver(capability):
        for fn in paths.values():  # compile, cache, warm up
            fn()
            fn()
        for _ in range(rounds):
            for name, fn in paths.items():
                best[name] = min(best[name], host_seconds_per_call(fn, calls, 1) * 1e6)
    return best


if __name__ == "__main__":
    for name, microseconds in compare_launch_paths().items():
        print(f"{name:34s} {microseconds:8.2f} us per call (thread CPU time, best round)")
