"""Swap our PromptEncoder into a built SAM-2 model or predictor, and put the original back.

    from sam2_prompt import replace_prompt_encoder, restore_prompt_encoder, swapped_prompt_encoder
    replace_prompt_encoder(predictor)              # SAM2Base and subclasses, SAM2ImagePredictor,
    ...                                            # anything with a `sam_prompt_encoder`
    restore_prompt_encoder(predictor)              # Meta's module again, with the current weights
    with swapped_prompt_encoder(model, backend="torch"):
        ...
"""

from contextlib import contextmanager
from typing import Optional

from torch import nn

from .prompt_encoder import PromptEncoder

_REQUIRED = ("embed_dim", "image_embedding_size", "input_image_size", "pe_layer", "point_embeddings",
             "not_a_point_embed", "mask_downscaling", "no_mask_embed")
_ORIGINAL = "_sam2_prompt_original"  # where the replaced module is kept (not a submodule)


def _owner(model) -> nn.Module:
    """The module holding ``sam_prompt_encoder``: the model itself or a predictor's ``.model``."""
    for candidate in (model, getattr(model, "model", None)):
        if isinstance(candidate, nn.Module) and isinstance(
                getattr(candidate, "sam_prompt_encoder", None), nn.Module):
            return candidate
    raise TypeError(
        f"replace_prompt_encoder needs a SAM-2 model (SAM2Base or a subclass), a SAM2ImagePredictor "
        f"or a module with a `sam_prompt_encoder`; got {type(model).__name__}")


def replace_prompt_encoder(model, backend: Optional[str] = None):
    """Put sam2_prompt's PromptEncoder in place of ``model``'s, same weights, device, dtype and
    train/eval mode; returns ``model`` (the same object). backend: None, auto, torch or triton."""
    owner = _owner(model)
    old = owner.sam_prompt_encoder
    if isinstance(old, PromptEncoder):
        if backend is not None:
            old.backend = backend
        return model
    missing = [name for name in _REQUIRED if not hasattr(old, name)]
    if missing or len(old.mask_downscaling) != 7:
        raise TypeError(f"{type(old).__name__} is not a SAM-2 PromptEncoder "
                        f"(missing {missing or 'the 7-layer mask_downscaling'})")
    weight = old.not_a_point_embed.weight
    new = PromptEncoder(
        old.embed_dim, tuple(old.image_embedding_size), tuple(old.input_image_size),
        mask_in_chans=old.mask_downscaling[3].out_channels,
        activation=type(old.mask_downscaling[2]), backend=backend,
    ).to(device=weight.device, dtype=weight.dtype)
    new.load_state_dict(old.state_dict(), strict=True)
    new.train(old.training)
    object.__setattr__(new, _ORIGINAL, old)  # kept, but not a submodule: state-dict keys unchanged
    owner.sam_prompt_encoder = new
    return model


def restore_prompt_encoder(model):
    """Put the original module back, carrying over the current weights (fine-tuning included)."""
    owner = _owner(model)
    ours = owner.sam_prompt_encoder
    original = getattr(ours, _ORIGINAL, None)
    if original is None:
        raise ValueError(f"{type(model).__name__}'s prompt encoder was not replaced by "
                         "replace_prompt_encoder: nothing to restore")
    weight = ours.not_a_point_embed.weight
    original.to(device=weight.device, dtype=weight.dtype)
    original.load_state_dict(ours.state_dict(), strict=True)
    original.train(ours.training)
    owner.sam_prompt_encoder = original
    return model


@contextmanager
def swapped_prompt_encoder(model, backend: Optional[str] = None):
    """``with swapped_prompt_encoder(model): ...`` runs with ours and restores Meta's after."""
    already = isinstance(_owner(model).sam_prompt_encoder, PromptEncoder)
    replace_prompt_encoder(model, backend)
    try:
        yield model
    finally:
        if not already:
            restore_prompt_encoder(model)
