"""Transparent huge pages for the large fresh CPU outputs of the mask path.

A fresh CPU tensor of hundreds of MB costs more to first-touch (one page fault per 4 KiB page)
than the mask path costs to compute it. :func:`huge_page_hint` asks Linux, before the first
write, to back the 2 MiB pages inside a tensor's storage with transparent huge pages
(``madvise(MADV_HUGEPAGE)``, the hint PyTorch's process-wide ``THP_MEM_ALLOC_ENABLE=1`` gives
every large allocation): 512 times fewer faults. The values are the same either way.

Huge pages are cheap only when 2 MiB blocks are at hand. Memory freed a moment ago is; memory
free for a while may not be: the kernel may have to compact it, and on a VM whose host reclaims
free guest memory (virtio-balloon free page reporting, after about 2 s) the host must fault
every block in again, which costs more than the 4 KiB faults saved (docs/benchmarks.md). So
:func:`advise_huge_pages`, the mask path's policy, gives the hint only when an earlier output of
at least this size was freed within ``HOT_SECONDS``: a batch job's steady state, where each
call's output replaces the last. The first call, a call after a pause, and calls while earlier
outputs are still held take the usual 4 KiB pages. ``SAM2_PROMPT_HUGE_PAGES=0`` turns it off;
where the kernel has no THP, THP is ``never``, or the platform is not Linux, nothing changes.
"""

import ctypes
import os
import sys
import time
import weakref

from torch import Tensor

HUGE_PAGES_ENV = "SAM2_PROMPT_HUGE_PAGES"
HUGE_PAGE = 1 << 21
MIN_BYTES = 32 << 20  # batches of >= 8 SAM-2 masks; a single mask's 4 MiB output is left alone
HOT_SECONDS = 1.0  # freed this recently, memory is still at hand (free page reporting waits 2 s)
_MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux
_clock = time.monotonic
_last_freed = (float("-inf"), 0)  # (when, bytes): the latest watched output freed


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def huge_pages_enabled() -> bool:
    """``SAM2_PROMPT_HUGE_PAGES`` (default 1), read per call; 0 or empty turns the hint off."""
    return os.environ.get(HUGE_PAGES_ENV, "1") not in ("", "0")


def huge_page_hint(t: Tensor) -> bool:
    """madvise(MADV_HUGEPAGE) on the 2 MiB pages lying wholly inside t's storage (a CPU tensor,
    before its first write; no neighbouring memory is named) -> whether the kernel took it."""
    storage = t.untyped_storage()
    start, size = storage.data_ptr(), storage.nbytes()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    last = (start + size) // HUGE_PAGE * HUGE_PAGE
    return _madvise is not None and last > first and _madvise(first, last - first,
                                                               _MADV_HUGEPAGE) == 0


def _freed(size: int) -> None:
    global _last_freed
    _last_freed = (_clock(), size)


def advise_huge_pages(t: Tensor) -> bool:
    """The mask path's policy for its fresh output t (before its first write): the hint when
    enabled, on Linux, t is a CPU tensor of at least MIN_BYTES, and an earlier output of at least
    t's size was freed within HOT_SECONDS. t's storage is watched (a finalizer notes when it is
    freed). -> whether the hint was given."""
    if _madvise is None or t.device.type != "cpu" or not huge_pages_enabled():
        return False
    storage = t.untyped_storage()
    size = storage.nbytes()
    if size < MIN_BYTES:
        return False
    freed_at, freed_size = _last_freed
    hot = freed_size >= size and _clock() - freed_at <= HOT_SECONDS
    weakref.finalize(storage, _freed, size).atexit = False
    return hot and huge_page_hint(t)
