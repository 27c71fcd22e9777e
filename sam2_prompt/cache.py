"""Derived tensors kept between calls (the PyTorch path's folded Fourier weights, the dense grid),
never stale by construction.

An entry is served only while every source tensor is **bitwise equal** to the snapshot taken when
the entry was built (same shape, dtype and device too), under a key that names every other input
folded into it (image size, output dtype, ...). Values are compared, not version counters or
identities: ``.data`` writes, fused optimizer steps, ``load_state_dict``, ``.to()``, parametrizations
and ``torch.func.functional_call`` all change what is compared. The comparison is a few thousand
numbers (microseconds), so only CPU tensors are cached: on CUDA it would synchronise the host, and
there the kernels read the weights directly (nothing weight-derived is kept).

Nothing is cached while tracing (torch.compile, export, fake tensors), under functorch transforms or
forward-mode AD, or when a source needs a gradient. At most ``MAX_ENTRIES`` entries (least recently
used first out). A cache never travels: pickling, ``copy.copy`` and ``copy.deepcopy`` give an empty
one, so copies of a module compute from their own weights and pickles carry no derived tensors.
Callers must not hand out a cached tensor itself (clone it): a caller's in-place edit of a returned
tensor would otherwise change later results.

Adding something kept between calls? Add a row to the mutation matrix in tests/test_cache.py for
every source and attribute it folds in.
"""

from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Tuple

import torch
from torch import Tensor

from . import ops

MAX_ENTRIES = 4
_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_dtype(t: Tensor) -> Optional[torch.dtype]:
    """The same-width integer dtype to compare a floating tensor's bit patterns in (NaN payloads
    and the sign of zero included), None for other tensors (compared as they are)."""
    return _SAME_WIDTH_INT[t.element_size()] if t.is_floating_point() else None


def _bits(t: Tensor, bits_dtype: Optional[torch.dtype]) -> Tensor:
    return t if bits_dtype is None else t.view(bits_dtype)  # a view, whatever the strides


def same_bits(a: Tensor, b: Tensor) -> bool:
    """True when a and b have the same dtype, device, shape and bit patterns."""
    bits_dtype = _bits_dtype(a)
    return (a.dtype == b.dtype and a.device == b.device
            and torch.equal(_bits(a, bits_dtype), _bits(b, bits_dtype)))


def cacheable(sources: Tuple[Tensor, ...]) -> bool:
    """Whether entries derived from these sources may be kept: plain CPU tensors, plain eager
    code (no tracing, no transform), no gradient wanted from them."""
    if not ops.plain_eager():
        return False
    grad = torch.is_grad_enabled()
    return all(s.device.type == "cpu" and not (grad and s.requires_grad) for s in sources)


class DerivedCache:
    """``get(key, sources, build)``: build()'s value, reused while the sources keep their bits."""

    def __init__(self) -> None:
        self._entries: "OrderedDict[Hashable, Tuple[Tuple[Tensor, ...], Any]]" = OrderedDict()

    def get(self, key: Hashable, sources: Tuple[Tensor, ...], build: Callable[[], Any]) -> Any:
        if not cacheable(sources):
            return build()
        entry = self._entries.get(key)
        if entry is not None and self._valid(entry[0], sources):
            self._entries.move_to_end(key)
            return entry[1]
        value = build()
        snapshot = []
        for source in sources:
            bits_dtype = _bits_dtype(source)
            snapshot.append((source.dtype, bits_dtype, _bits(source.detach().clone(), bits_dtype)))
        self._entries[key] = (tuple(snapshot), value)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return value

    @staticmethod
    def _valid(snapshot, sources) -> bool:
        """Each source has its snapshot's dtype, shape and bits (torch.equal compares shapes)."""
        if len(snapshot) != len(sources):
            return False
        for (dtype, bits_dtype, bits), source in zip(snapshot, sources):
            if dtype != source.dtype or not torch.equal(bits, _bits(source, bits_dtype)):
                return False
        return True

    def __len__(self) -> int:
        return len(self._entries)

    # Never serialised or copied: a copy starts empty (and so recomputes from its own sources).
    def __reduce__(self):
        return DerivedCache, ()

    def __copy__(self) -> "DerivedCache":
        return DerivedCache()

    def __deepcopy__(self, memo) -> "DerivedCache":
        return DerivedCache()
