"""Swap our PromptEncoder into a built SAM-2 model or predictor, and put the original back.

    from sam2_prompt import replace_prompt_encoder, restore_prompt_encoder, swapped_prompt_encoder
    replace_prompt_encoder(predictor)              # SAM2Base and subclasses, SAM2ImagePredictor,
    ...                                            # anything with a `sam_prompt_encoder`
    restore_prompt_encoder(predictor)              # Meta's module again, with the current weights
    with swapped_prompt_encoder(model, backend="torch"):
        ...

The replacement copies every parameter and buffer (values, device, dtype, requires_grad) and each
submodule's train/eval flag; the state-dict keys stay identical, so checkpoints load either way.
"""

from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from . import ops
from .prompt_encoder import PromptEncoder

# What makes an encoder "SAM-2's": Meta's and ultralytics' PromptEncoder both have these.
_REQUIRED = ("embed_dim", "image_embedding_size", "input_image_size",
             "pe_layer.positional_encoding_gaussian_matrix", "point_embeddings",
             "not_a_point_embed", "mask_downscaling", "no_mask_embed")
_ORIGINAL = "_sam2_prompt_original"  # where the replaced module is kept (a plain attribute)
# SAM2VideoPredictorVOS compiles each component's forward with these options.
_VOS_COMPILE = {"mode": "max-autotune", "fullgraph": True, "dynamic": False}


def _owner(model, caller: str) -> nn.Module:
    """The module holding ``sam_prompt_encoder``: the model itself, a torch.compile wrapper's
    ``_orig_mod`` or a predictor's ``.model``."""
    candidates = [model, getattr(model, "model", None)]
    for candidate in candidates:
        if not isinstance(candidate, nn.Module):
            continue
        # torch.compile(model) forwards attribute reads to _orig_mod but would keep an assigned
        # submodule for itself: swap inside the wrapped model.
        candidate = candidate._modules.get("_orig_mod", candidate)
        if isinstance(candidate._modules.get("sam_prompt_encoder"), nn.Module):
            return candidate
    raise TypeError(
        f"{caller}: model must be a SAM-2 model (SAM2Base or a subclass such as "
        f"SAM2VideoPredictor), a SAM2ImagePredictor (its .model is used) or an nn.Module with a "
        f"`sam_prompt_encoder` submodule; got {type(model).__name__}")


def _check_compatible(encoder: nn.Module) -> None:
    if "_orig_mod" in encoder._modules:
        raise TypeError("model.sam_prompt_encoder is a torch.compile wrapper: swap the encoder "
                        "first and compile after (or compile only its forward, as "
                        "SAM2VideoPredictorVOS does: that is carried over)")
    missing = []
    for path in _REQUIRED:
        obj = encoder
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is None:
            missing.append(path)
    if missing:
        raise TypeError(f"model.sam_prompt_encoder ({type(encoder).__name__}) is not a SAM-2 "
                        f"PromptEncoder: it has no {', '.join(missing)}")
    layers = encoder.mask_downscaling
    if (not isinstance(layers, nn.Sequential) or len(layers) != 7
            or not isinstance(layers[3], nn.Conv2d) or not isinstance(layers[2], nn.Module)):
        raise TypeError(f"model.sam_prompt_encoder ({type(encoder).__name__}) is not a SAM-2 "
                        "PromptEncoder: mask_downscaling is not SAM-2's 7-layer nn.Sequential "
                        "(conv, norm, activation, conv, norm, activation, conv)")


def _mirror(source: nn.Module, target: nn.Module) -> None:
    """``target`` takes ``source``'s tensors (values, device, dtype tensor by tensor,
    requires_grad) and train/eval flags; it keeps its own Parameter objects."""
    wanted = source.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, tensor in target.state_dict(keep_vars=True).items():
            like = wanted.get(key)  # a missing or extra key is load_state_dict's error below
            if like is not None and (tensor.device, tensor.dtype) != (like.device, like.dtype):
                tensor.data = torch.empty_like(like)
    target.load_state_dict(wanted, strict=True)  # copies under no_grad
    source_params = dict(source.named_parameters())
    for name, param in target.named_parameters():
        param.requires_grad_(source_params[name].requires_grad)
    source_modules = dict(source.named_modules())
    for name, module in target.named_modules():
        module.training = getattr(source_modules.get(name), "training", source.training)


def _is_compiled(fn) -> bool:
    return getattr(fn, "_torchdynamo_orig_callable", None) is not None


def replace_prompt_encoder(model, backend: Optional[str] = None):
    """Put sam2_prompt's PromptEncoder in place of ``model``'s; returns ``model`` (the same object).

    model: SAM2Base or a subclass (SAM2VideoPredictor, SAM2VideoPredictorVOS), a SAM2ImagePredictor,
    or any nn.Module whose ``sam_prompt_encoder`` is a SAM-2 PromptEncoder (ultralytics' SAM-2).
    backend: None (SAM2_PROMPT_BACKEND, default "auto"), "auto", "torch" or "triton". Weights,
    device, dtype, requires_grad and train/eval mode are copied; a forward that was compiled
    (SAM2VideoPredictorVOS) is compiled on ours with the VOS predictor's options. On a model
    already swapped, only the backend is set.
    """
    if backend is not None:
        ops.check_backend(backend)  # before anything changes
    owner = _owner(model, "replace_prompt_encoder")
    old = owner.sam_prompt_encoder
    if isinstance(old, PromptEncoder):
        if backend is not None:
            old.backend = backend
        return model
    _check_compatible(old)
    with torch.random.fork_rng(devices=[]):  # building ours draws from the CPU RNG: leave it be
        new = PromptEncoder(
            int(old.embed_dim), tuple(old.image_embedding_size), tuple(old.input_image_size),
            mask_in_chans=old.mask_downscaling[3].out_channels,
            activation=type(old.mask_downscaling[2]), backend=backend,
        )
    _mirror(old, new)
    if _is_compiled(vars(old).get("forward")):
        new.forward = torch.compile(new.forward, **_VOS_COMPILE)
    object.__setattr__(new, _ORIGINAL, old)  # kept, but not a submodule: state-dict keys unchanged
    owner.sam_prompt_encoder = new
    return model


def restore_prompt_encoder(model):
    """Put the original module back and return ``model``; it takes ours' current weights
    (fine-tuning included), device, dtype, requires_grad and train/eval mode."""
    owner = _owner(model, "restore_prompt_encoder")
    ours = owner.sam_prompt_encoder
    original = getattr(ours, _ORIGINAL, None)
    if original is None:
        raise ValueError(f"restore_prompt_encoder: {type(model).__name__}'s prompt encoder "
                         f"({type(ours).__name__}) was not replaced by replace_prompt_encoder: "
                         "nothing to restore")
    _mirror(ours, original)
    owner.sam_prompt_encoder = original
    return model


@contextmanager
def swapped_prompt_encoder(model, backend: Optional[str] = None):
    """``with swapped_prompt_encoder(model, backend=...): ...`` runs with ours and leaves ``model``
    as it found it: Meta's encoder restored, or an already-swapped one on its previous backend."""
    current = _owner(model, "swapped_prompt_encoder").sam_prompt_encoder
    previous = current._backend_request if isinstance(current, PromptEncoder) else None
    replace_prompt_encoder(model, backend)
    try:
        yield model
    finally:
        if previous is None:
            restore_prompt_encoder(model)
        else:
            current.backend = previous
