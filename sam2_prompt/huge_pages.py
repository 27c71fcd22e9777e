"""Transparent huge pages for the large fresh CPU outputs of the mask path.

A fresh CPU tensor of hundreds of MB costs more to first-touch (one page fault per 4 KiB page)
than the mask path costs to compute it. :func:`advise_huge_pages` asks Linux, before the first
write, to back the 2 MiB pages inside the tensor's storage with transparent huge pages
(``madvise(MADV_HUGEPAGE)``: what PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` does for every large
allocation of a process, here for one tensor): 512 times fewer faults. It is a hint: the values
are the same either way; where the kernel has no THP, THP is ``never``, or the platform is not
Linux, nothing changes. ``SAM2_PROMPT_HUGE_PAGES=0`` turns it off (docs/benchmarks.md: on a VM
whose host reclaims free guest memory, the first call after an idle spell is slower with it).
"""

import ctypes
import os
import sys

from torch import Tensor

HUGE_PAGES_ENV = "SAM2_PROMPT_HUGE_PAGES"
HUGE_PAGE = 1 << 21
MIN_BYTES = 32 << 20  # batches of >= 8 SAM-2 masks; a single mask's 4 MiB output is left alone
_MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux


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


def advise_huge_pages(t: Tensor) -> bool:
    """Hint that t's storage (a fresh CPU tensor, before its first write) be backed by huge pages.

    Only the 2 MiB pages lying wholly inside the storage are named: no neighbouring memory is
    affected. -> whether the hint was given (False: turned off, under MIN_BYTES, not on the CPU,
    no madvise, or refused by the kernel)."""
    if _madvise is None or t.device.type != "cpu" or not huge_pages_enabled():
        return False
    storage = t.untyped_storage()
    size = storage.nbytes()
    if size < MIN_BYTES:
        return False
    start = storage.data_ptr()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    last = (start + size) // HUGE_PAGE * HUGE_PAGE
    return last > first and _madvise(first, last - first, _MADV_HUGEPAGE) == 0
