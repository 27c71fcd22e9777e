"""Derived tensors (the dense grid, folded Fourier constants, the label table) kept between calls.

An entry is valid while each source tensor is the same object at the same version counter, so
in-place edits, ``load_state_dict`` (an in-place copy) and ``.to()`` (new tensors) invalidate it.
Nothing is cached while tracing (torch.compile, export) or when a source needs a gradient.
"""

import operator
from typing import Any, Callable, Dict, Hashable, List, Tuple

import torch
from torch import Tensor


class DerivedCache:
    def __init__(self) -> None:
        self._entries: Dict[Hashable, Tuple[Tuple[Tensor, ...], List[int], Any]] = {}

    def get(self, key: Hashable, sources: Tuple[Tensor, ...], build: Callable[[], Any]) -> Any:
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(s.requires_grad for s in sources)
        ):
            return build()
        key = (key, torch.is_inference_mode_enabled())
        versions = [s._version for s in sources]
        hit = self._entries.get(key)
        if hit is not None and hit[1] == versions and all(map(operator.is_, hit[0], sources)):
            return hit[2]
        value = build()
        self._entries[key] = (sources, versions, value)
        return value
