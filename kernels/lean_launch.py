"""A lean launch of an already compiled Triton kernel, for small, launch-bound calls.

``kernel[grid](*args)`` (``JITFunction.run``) binds and specialises the arguments (a generated
binder calling Triton's native specialiser once per argument), builds a string cache key,
re-checks every module-level global the kernel reads (``!=`` on ``tl.constexpr`` objects),
computes launch metadata, then launches the cached ``CompiledKernel``. ``launch`` keeps what
decides which binary runs and drops the rest:

- **The key.** For each call shape (number of positional arguments, keyword names) a small
  function is generated from the first call's argument types: it checks that every argument has
  the same type again and returns what Triton's specialisation is a function of, never less:
  pointer dtypes, whether each pointer Triton aligns is 16-byte aligned, for ints whether they
  equal 1, are divisible by 16 and fit 32 / 64 bits (unless ``do_not_specialize``), bools and
  constexprs by value, options (num_warps, ...) by value. To it are added the knobs ``run``
  folds into the options, the driver and device. Two calls with equal keys are two calls Triton
  would give the same binary; a key can only be finer than Triton's, which costs a cache entry,
  never a wrong binary. Any other argument type (descriptors, tuples, ...) takes ``run``.
- **The binary** comes from ``kernel.run`` itself, which launches it: the first call of every
  key, and every call while in doubt (the interpreter, launch hooks, pre-run hooks, pipeline
  inspection hooks, async compilation, a changed global, a changed argument type).
- **Staleness.** The kernel's ``cache_key`` (a hash of its source, its callees' and its constexpr
  globals) is checked on every call: an edited kernel forgets its binaries. The globals ``run``
  re-checks are compared with the objects last found equal to their recorded values (an identity
  test; a rebound global is compared by value, and a changed one takes ``run``, which raises).

Nothing here imports the module layer; the caches are per process, bounded, never pickled.
"""

import threading
import weakref
from collections import OrderedDict

import triton
import triton.language as tl
from triton import knobs
from triton.runtime import _async_compile
from triton.runtime.driver import driver

MAX_BINARIES_PER_KERNEL = 32  # least recently used binaries beyond this are forgotten
MAX_CALL_SHAPES = 8  # distinct (positional count, keyword names) per kernel with a key function
_MISSING = object()
_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)


class _KernelCache:
    """Per JIT kernel: key -> CompiledKernel (LRU), key functions by call shape, the globals."""

    def __init__(self):
        self.binaries = OrderedDict()
        self.keyers = {}
        self.lock = threading.Lock()
        self.source_key = None
        self.lookups, self.recorded, self.seen = [], [], None

    def refresh(self, kernel):
        """(Re)read the kernel's source hash and the globals it read when it was hashed."""
        self.source_key = kernel.cache_key  # computes used_global_vals too
        self.lookups = [(scope.get, name) for (name, _), (_, scope)
                        in kernel.used_global_vals.items()]
        self.recorded = [value for value, _ in kernel.used_global_vals.values()]
        self.seen = None  # the objects last found equal to the recorded values
        self.binaries.clear()
        self.keyers.clear()

    def globals_unchanged(self) -> bool:
        """The check ``run`` makes (each global still equals its recorded value), as one list
        comparison with the objects last found equal (identity first); a change is compared by
        value again."""
        current = [get(name, _MISSING) for get, name in self.lookups]
        if current == self.seen:
            return True
        if all(map(_equal, current, self.recorded)):
            self.seen = current
            return True
        return False

    def remember(self, key, compiled) -> None:
        with self.lock:
            self.binaries[key] = compiled
            while len(self.binaries) > MAX_BINARIES_PER_KERNEL:
                self.binaries.popitem(last=False)


def _equal(current, recorded) -> bool:
    if isinstance(recorded, tl.constexpr):  # Triton records copies of constexpr globals
        return type(current) is type(recorded) and current.value == recorded.value
    return current is not _MISSING and bool(current == recorded)


_caches = {}  # id(kernel) -> (weak reference to the kernel, its _KernelCache)
_caches_lock = threading.Lock()


def _cache_for(kernel) -> _KernelCache:
    entry = _caches.get(id(kernel))
    if entry is None or entry[0]() is not kernel:
        with _caches_lock:
            key = id(kernel)
            entry = (weakref.ref(kernel, lambda _: _caches.pop(key, None)), _KernelCache())
            _caches[key] = entry
    return entry[1]


def _source_key(kernel, cache: _KernelCache) -> str:
    """The kernel's cache_key, read through the hash it caches (None after a source edit)."""
    cached = getattr(kernel, "hash", None)
    if cached is not None and cached is cache.source_key:
        return cached
    return kernel.cache_key


def _key_terms(name: str, value, param) -> list:
    """Python expressions, over the argument ``name``, that determine Triton's specialisation of
    ``value`` (None: a type this module does not key)."""
    kind = type(value)
    if param is None or param.is_constexpr or kind is bool:  # options, constexprs, bools
        try:
            hash(value)
        except TypeError:
            return None
        return [name]
    if kind is int:
        ranges = [f"{_INT32[0]} <= {name} <= {_INT32[1]}", f"{_INT64[0]} <= {name} <= {_INT64[1]}"]
        if param.do_not_specialize:
            return ranges
        return [f"{name} == 1", f"{name} % 16 == 0", *ranges]
    if kind is float or value is None:
        return []  # fp32 / constexpr None whatever the value
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):  # a tensor: a pointer argument
        if param.do_not_specialize_on_alignment:
            return [f"{name}.dtype"]
        return [f"{name}.dtype", f"{name}.data_ptr() % 16 == 0"]
    return None


def _make_keyer(kernel, args, kwargs):
    """For calls shaped like (args, kwargs): a function (*args, **kwargs) -> (key, the argument
    values in parameter order) or None when an argument's type differs from this call's; None
    when the call has arguments this module does not key."""
    params = {param.name: param for param in kernel.params}
    names = [param.name for param in kernel.params]
    positional = [f"p{i}" for i in range(len(args))]
    values = dict(zip(names, positional))
    for name in names[len(args):]:
        if name in kwargs:
            values[name] = name
        elif params[name].has_default:
            values[name] = f"default_{name}"
        else:
            return None
    namespace, guards, terms = {}, [], []
    observed = list(zip(positional, args, kernel.params)) + [
        (name, value, params.get(name)) for name, value in kwargs.items()]
    for index, (name, value, param) in enumerate(observed):
        found = _key_terms(name, value, param)
        if found is None:
            return None
        namespace[f"T{index}"] = type(value)
        guards.append(f"type({name}) is T{index}")
        terms += found
    for name in names[len(args):]:
        if name not in kwargs:
            namespace[f"default_{name}"] = params[name].default
    signature = ", ".join(positional + (["*", *kwargs] if kwargs else []))
    ordered = ", ".join(values[name] for name in names)
    source = (f"def keyer({signature}):\n"
              f"    if not ({' and '.join(guards) or 'True'}):\n"
              f"        return None\n"
              f"    return ({', '.join(terms)},), ({ordered},)\n")
    exec(source, namespace)
    return namespace["keyer"]


def _in_doubt(kernel) -> bool:
    """Anything that makes ``run`` do more than bind, look up and launch."""
    runtime = knobs.runtime
    return bool(kernel.pre_run_hooks or runtime.launch_enter_hook.calls
                or runtime.launch_exit_hook.calls
                or runtime.add_stages_inspection_hook is not None
                or _async_compile.active_mode.get() is not None)


def is_lean(kernel) -> bool:
    """Whether ``launch`` can take the direct path for ``kernel`` at all (a compiled JIT kernel,
    not the interpreter's function)."""
    return isinstance(kernel, triton.runtime.JITFunction)


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, launching the cached binary directly when this exact
    specialisation ran before. grid: a tuple of 1 to 3 ints (a callable grid takes ``run``).
    Returns the CompiledKernel (None on the interpreter)."""
    if not is_lean(kernel) or callable(grid) or _in_doubt(kernel):
        return kernel[grid](*args, **kwargs)
    cache = _cache_for(kernel)
    source_key = _source_key(kernel, cache)
    if source_key != cache.source_key:
        with cache.lock:
            cache.refresh(kernel)
    if not cache.globals_unchanged():  # a global changed since compiled: run decides (raises)
        return kernel[grid](*args, **kwargs)

    active = driver.active
    device = active.get_current_device()
    shape = (len(args), *kwargs)
    keyer = cache.keyers.get(shape, _MISSING)
    found = keyer(*args, **kwargs) if keyer is not _MISSING and keyer is not None else None
    if found is not None:
        key = (type(active), device, kernel.debug, knobs.runtime.debug,
               knobs.compilation.instrumentation_mode,
               knobs.compilation.fpsan_homomorphic_casts, found[0])
        compiled = cache.binaries.get(key)
        if compiled is not None:
            stream = active.get_current_stream(device)
            grid_y = grid[1] if len(grid) > 1 else 1
            grid_z = grid[2] if len(grid) > 2 else 1
            compiled.run(grid[0], grid_y, grid_z, stream, compiled.function,
                         compiled.packed_metadata, None, None, None, *found[1])
            return compiled

    compiled = kernel.run(*args, grid=grid, warmup=False, **kwargs)  # compiles or finds; launches
    if compiled is None or kernel.cache_key != source_key:
        return compiled
    if keyer is _MISSING and len(cache.keyers) < MAX_CALL_SHAPES:
        keyer = cache.keyers[shape] = _make_keyer(kernel, args, kwargs)
    if keyer is not _MISSING and keyer is not None:
        found = keyer(*args, **kwargs)
        if found is not None:
            cache.remember((type(active), device, kernel.debug, knobs.runtime.debug,
                            knobs.compilation.instrumentation_mode,
                            knobs.compilation.fpsan_homomorphic_casts, found[0]), compiled)
    return compiled


def cached_binaries(kernel) -> int:
    """How many binaries ``launch`` holds for ``kernel`` (for tests)."""
    entry = _caches.get(id(kernel))
    return 0 if entry is None or entry[0]() is not kernel else len(entry[1].binaries)


def forget_binaries() -> None:
    """Drop every cached binary and key function (the next launch of each key takes ``run``)."""
    with _caches_lock:
        for _, cache in list(_caches.values()):
            with cache.lock:
                cache.binaries.clear()
                cache.keyers.clear()
