"""sam2-prompt: a drop-in, fast PromptEncoder for SAM-2 (fused Triton kernels, fast PyTorch path).

The public names load on first use (PEP 562), so that ``sam2-prompt-bench --help`` (which lives
in this package) answers without importing torch. ``import sam2_prompt.ops`` registers the
``sam2_prompt::*`` torch.library ops, as does the first use of any name below.
"""

import importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "PositionEmbeddingRandom": "position_encoding",
    "PromptEncoder": "prompt_encoder",
    "replace_prompt_encoder": "integration",
    "restore_prompt_encoder": "integration",
    "swapped_prompt_encoder": "integration",
}

# submodules an eager `import sam2_prompt` used to bind as attributes (sam2_prompt.ops, ...)
_SUBMODULES = {"cache", "hf", "integration", "masks", "ops", "position_encoding",
               "prompt_encoder", "reference", "ultralytics"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam2_prompt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
