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

**Planned launches** (``launch_planned``) are for a launcher that knows, from what it has
already computed, everything Triton specialises its kernel's arguments on: it names that as a
``plan`` (a small hashable), and the binary is found by the plan instead of by the key above.
The plan is the caller's claim, so the caller checks once that the kernel's specialisation rules
are the ones its plan assumes, and with ``VERIFY_PLANS`` set (the tests set it) every planned
launch also computes the key above and raises if the plan's binary is not that key's.

Nothing here imports the module layer; the caches are per process, bounded, never pickled.
"""

import operator
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
VERIFY_PLANS = False  # tests: check every planned launch's plan against Triton's specialisation
_MISSING = object()
_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)


class _KernelCache:
    """Per JIT kernel: key -> binary entry (LRU), plan -> (entry, key) (LRU), key functions by
    call shape, the globals. An entry: (CompiledKernel, its launcher, function, packed metadata)."""

    def __init__(self):
        self.binaries = OrderedDict()
        self.planned = OrderedDict()
        self.keyers = {}
        self.lock = threading.Lock()
        self.source_key = None
        self.scopes, self.getters, self.recorded, self.seen = [], [], [], None

    def refresh(self, kernel):
        """(Re)read the kernel's source hash and the globals it read when it was hashed."""
        self.source_key = kernel.cache_key  # computes used_global_vals too
        scopes = {}  # id(scope) -> (scope, names, values): one itemgetter per module
        for (name, _), (value, scope) in kernel.used_global_vals.items():
            found = scopes.setdefault(id(scope), (scope, [], []))
            found[1].append(name)
            found[2].append(value)
        self.recorded = [value for _, _, values in scopes.values() for value in values]
        self.scopes = [scope for scope, _, _ in scopes.values()]
        self.getters = [operator.itemgetter(*names, names[0])  # always a tuple
                        for _, names, _ in scopes.values()]
        self.seen = None  # the objects last found equal to the recorded values
        self.binaries.clear()
        self.planned.clear()
        self.keyers.clear()

    def globals_unchanged(self) -> bool:
        """The check ``run`` makes (each global still equals its recorded value), as one
        comparison with the objects last found equal (identity first); a change is compared by
        value again."""
        try:
            current = list(map(operator.call, self.getters, self.scopes))
        except KeyError:  # a global was deleted
            return False
        if current == self.seen:
            return True
        values = [value for found in current for value in found[:-1]]
        if len(values) == len(self.recorded) and all(map(_equal, values, self.recorded)):
            self.seen = current
            return True
        return False

    def remember(self, table, key, value) -> None:
        with self.lock:
            table[key] = value
            while len(table) > MAX_BINARIES_PER_KERNEL:
                table.popitem(last=False)


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


def _int_class(value: int):
    """Triton's integer type for a value outside int32 (an int32 is keyed as True)."""
    if _INT64[0] <= value <= _INT64[1]:
        return "i64"
    return "u64" if 0 <= value < 2**64 else "out of range"


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
    if kind is int:  # int32 (True), else i64 / u64; then ==1 and %16 unless do_not_specialize
        width = f"({_INT32[0]} <= {name} <= {_INT32[1]} or int_class({name}))"
        if param.do_not_specialize:
            return [width]
        return [f"{name} == 1", f"{name} % 16 == 0", width]
    if kind is float or value is None:
        return []  # fp32 / constexpr None whatever the value
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):  # a tensor: a pointer argument
        if param.do_not_specialize_on_alignment:
            return [f"{name}.dtype"]
        return [f"{name}.dtype", f"{name}.data_ptr() % 16 == 0"]
    return None


def _make_keyer(kernel, args, kwargs):
    """For calls shaped like (args, kwargs): a function (args, kwargs) -> (key, the argument
    values in parameter order), or None when an argument's type differs from this call's; None
    (no function) when the call has arguments this module does not key. Every argument's type is
    compared at once (one tuple of types), then each is keyed by what Triton specialises on."""
    params = {param.name: param for param in kernel.params}
    names = [param.name for param in kernel.params]
    positional = [f"p{i}" for i in range(len(args))]
    keywords = [f"k{i}" for i in range(len(kwargs))]
    values = dict(zip(names, positional))
    values.update((name, local) for name, local in zip(kwargs, keywords) if name in params)
    namespace = {"ARG_TYPES": tuple(map(type, args)),
                 "KWARG_TYPES": tuple(map(type, kwargs.values())), "int_class": _int_class}
    for name in names[len(args):]:
        if name not in kwargs:
            if not params[name].has_default:
                return None
            values[name] = f"default_{name}"
            namespace[f"default_{name}"] = params[name].default
    terms = []
    observed = list(zip(positional, args, kernel.params)) + [
        (local, value, params.get(name))
        for local, (name, value) in zip(keywords, kwargs.items())]
    for local, value, param in observed:
        found = _key_terms(local, value, param)
        if found is None:
            return None
        terms += found
    unpack = "".join(f"    {', '.join(locals_)}, = {source}\n"
                     for locals_, source in ((positional, "args"), (keywords, "kwargs.values()"))
                     if locals_)
    source = ("def keyer(args, kwargs):\n"
              "    if (tuple(map(type, args)) != ARG_TYPES\n"
              "            or tuple(map(type, kwargs.values())) != KWARG_TYPES):\n"
              "        return None\n"
              f"{unpack}"
              f"    return ({', '.join(terms)},), ({', '.join(values[name] for name in names)},)\n")
    exec(source, namespace)
    return namespace["keyer"]


def _direct_cache(kernel, grid):
    """The kernel's cache when a cached binary may be launched directly, else None (``run``
    decides): a compiled JIT kernel (not the interpreter's function), a grid of ints, nothing
    that makes ``run`` do more than bind, look up and launch (pre-run, launch or stage-inspection
    hooks, async compilation), its source hash current and no global it reads changed."""
    if not isinstance(kernel, triton.runtime.JITFunction) or callable(grid):
        return None
    runtime = knobs.runtime
    if (kernel.pre_run_hooks or runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls
            or runtime.add_stages_inspection_hook is not None
            or _async_compile.active_mode.get() is not None):
        return None
    cache = _cache_for(kernel)
    # The source hash: the one cache_key caches (None after a source edit), else computed.
    source_key = getattr(kernel, "hash", None)
    if (source_key is None or source_key is not cache.source_key) and (
            kernel.cache_key != cache.source_key):
        with cache.lock:
            cache.refresh(kernel)
    # Our kernels read no globals (their constants are local constexprs): nothing to compare.
    return cache if not cache.getters or cache.globals_unchanged() else None


def _binary_key(active, device, kernel, specialisation) -> tuple:
    """What besides the arguments decides the binary: the driver, device, debug and
    instrumentation knobs ``run`` folds into the options."""
    return (type(active), device, kernel.debug, knobs.runtime.debug,
            knobs.compilation.instrumentation_mode, knobs.compilation.fpsan_homomorphic_casts,
            specialisation)


def _run_entry(entry, active, device, grid, values):
    compiled, run, function, metadata = entry
    size = len(grid)
    run(grid[0], grid[1] if size > 1 else 1, grid[2] if size > 2 else 1,
        active.get_current_stream(device), function, metadata, None, None, None, *values)
    return compiled


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, launching the cached binary directly when this exact
    specialisation ran before. grid: a tuple of 1 to 3 ints (a callable grid takes ``run``).
    Returns the CompiledKernel (None on the interpreter)."""
    cache = _direct_cache(kernel, grid)
    if cache is None:
        return kernel[grid](*args, **kwargs)
    active = driver.active
    device = active.get_current_device()
    found, keyer = _specialisation(cache, args, kwargs)
    if found is not None:
        entry = cache.binaries.get(_binary_key(active, device, kernel, found[0]))
        if entry is not None:
            return _run_entry(entry, active, device, grid, found[1])

    source_key = cache.source_key
    compiled = kernel.run(*args, grid=grid, warmup=False, **kwargs)  # compiles or finds; launches
    if compiled is None or kernel.cache_key != source_key:
        return compiled
    if keyer is _MISSING and len(cache.keyers) < MAX_CALL_SHAPES:
        cache.keyers[(len(args), *kwargs)] = _make_keyer(kernel, args, kwargs)
        found, _ = _specialisation(cache, args, kwargs)
    if found is not None:
        cache.remember(cache.binaries, _binary_key(active, device, kernel, found[0]),
                       (compiled, compiled.run, compiled.function, compiled.packed_metadata))
    return compiled


def _specialisation(cache, args, kwargs):
    """(the keyer's (key, values) or None, the keyer or _MISSING) for this call's shape."""
    keyer = cache.keyers.get((len(args), *kwargs), _MISSING)
    if keyer is _MISSING or keyer is None:
        return None, keyer
    return keyer(args, kwargs), keyer


def launch_planned(kernel, grid, plan, args, options):
    """``launch(kernel, grid, *args, **options)`` found by the caller's ``plan`` (see the module
    docstring). args: every kernel parameter's value, in parameter order (constexprs included);
    options: launch options such as num_warps. plan: hashable, a function of everything Triton
    specialises ``args`` and ``options`` on (None: use ``launch``)."""
    cache = None if plan is None else _direct_cache(kernel, grid)
    if cache is None:
        return launch(kernel, grid, *args, **options)
    active = driver.active
    device = active.get_current_device()
    key = _binary_key(active, device, kernel, plan)
    found = cache.planned.get(key)
    if found is not None:
        entry, specialisation = found
        if VERIFY_PLANS:
            _verify_plan(cache, args, options, plan, specialisation)
        return _run_entry(entry, active, device, grid, args)
    compiled = launch(kernel, grid, *args, **options)
    if compiled is not None and len(args) == len(kernel.params):
        found, _ = _specialisation(cache, args, options)
        entry = None if found is None else cache.binaries.get(
            _binary_key(active, device, kernel, found[0]))
        if entry is not None and entry[0] is compiled:
            cache.remember(cache.planned, key, (entry, found[0]))
    return compiled


def _verify_plan(cache, args, options, plan, specialisation) -> None:
    found, _ = _specialisation(cache, args, options)
    if found is None or found[0] != specialisation:
        raise AssertionError(f"launch plan {plan!r} does not determine the kernel's "
                             f"specialisation: {found and found[0]!r} != {specialisation!r}")


def cached_binaries(kernel) -> int:
    """How many binaries ``launch`` holds for ``kernel`` (for tests)."""
    entry = _caches.get(id(kernel))
    return 0 if entry is None or entry[0]() is not kernel else len(entry[1].binaries)


def forget_binaries() -> None:
    """Drop every cached binary, plan and key function (the next launch of each key takes
    ``run``)."""
    with _caches_lock:
        for _, cache in list(_caches.values()):
            with cache.lock:
                cache.binaries.clear()
                cache.planned.clear()
                cache.keyers.clear()
