"""Swap our prompt encoder into a built SAM-2 model, predictor or mask generator, and put the
original back.

    from sam2_prompt import replace_prompt_encoder, restore_prompt_encoder, swapped_prompt_encoder
    replace_prompt_encoder(model)          # returns model; see _find for what is accepted
    restore_prompt_encoder(model)          # the original module again, with the current state
    with swapped_prompt_encoder(model, backend="torch"):
        ...

One adapter per ecosystem, chosen by the class of the encoder found (``_ADAPTERS``):

- Meta's sam2 (``SAM2Base.sam_prompt_encoder``) -> :class:`PromptEncoder`;
- ultralytics (``SAM2Model.sam_prompt_encoder``, ``SAMModel.prompt_encoder``) ->
  :class:`~sam2_prompt.ultralytics.UltralyticsPromptEncoder` (its mask resizing);
- transformers (``Sam2Model.prompt_encoder`` and the models sharing its encoder) ->
  :class:`~sam2_prompt.hf.Sam2PromptEncoder` (transformers' keys and conventions), and the model's
  ``get_image_wide_positional_embeddings`` served by the dense op while swapped.

The replacement and the restore copy every parameter and buffer (values, device, dtype,
requires_grad), each submodule's train/eval flag and the encoder's size attributes; state-dict
keys stay identical, so checkpoints load either way.
"""

import copy
from contextlib import contextmanager
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import nn

from . import hf, ops
from .cache import same_bits
from .prompt_encoder import PromptEncoder
from .ultralytics import UltralyticsPromptEncoder

_ORIGINAL = "_sam2_prompt_original"  # where the replaced module is kept (a plain attribute)
_SLOTS = ("sam_prompt_encoder", "prompt_encoder")  # Meta's and ultralytics' SAM-2; transformers, SAM
# Where an encoder's owner may sit: the object, a predictor's .model, a mask generator's
# .predictor (Meta's SAM2AutomaticMaskGenerator), its .model; ultralytics' SAM wrapper's .model.
_PATHS = ((), ("model",), ("predictor",), ("predictor", "model"))
# Size attributes that pipelines set on the encoder (ultralytics' set_imgsz, for one): carried
# both ways with the weights.
SIZES = ("input_image_size", "image_embedding_size", "mask_input_size")
# SAM2VideoPredictorVOS compiles each component's forward with these options.
_VOS_COMPILE = {"mode": "max-autotune", "fullgraph": True, "dynamic": False}
_IMAGE_WIDE = "get_image_wide_positional_embeddings"

# What makes an encoder "SAM-2's" in Meta's contract: Meta's and ultralytics' have these.
_META_REQUIRED = ("embed_dim", "image_embedding_size", "input_image_size",
                  "pe_layer.positional_encoding_gaussian_matrix", "point_embeddings",
                  "not_a_point_embed", "mask_downscaling", "no_mask_embed")
_HF_REQUIRED = ("hidden_size", "image_embedding_size", "input_image_size", "mask_input_size",
                "shared_embedding.positional_embedding", "point_embed.weight", "not_a_point_embed",
                "no_mask_embed", "mask_embed.conv1", "mask_embed.layer_norm1", "mask_embed.conv2",
                "mask_embed.layer_norm2", "mask_embed.conv3", "mask_embed.activation")


class _Adapter(NamedTuple):
    check: Callable[[str, nn.Module], None]  # (where, original) -> None or TypeError
    build: Callable[[nn.Module, Optional[str]], nn.Module]  # (original, backend) -> ours


def _find(model, caller: str) -> Tuple[nn.Module, str]:
    """(owner, slot): the module holding the prompt encoder as ``owner.<slot>``."""
    for path in _PATHS:
        candidate = model
        for name in path:
            candidate = getattr(candidate, name, None)
        if not isinstance(candidate, nn.Module):
            continue
        # torch.compile(model) forwards attribute reads to _orig_mod but would keep an assigned
        # submodule for itself: swap inside the wrapped model.
        candidate = candidate._modules.get("_orig_mod", candidate)
        for slot in _SLOTS:
            if isinstance(candidate._modules.get(slot), nn.Module):
                return candidate, slot
    raise TypeError(
        f"{caller}: model must be a SAM-2 model, predictor or mask generator holding a prompt "
        "encoder as `sam_prompt_encoder` or `prompt_encoder` (on the object, its .model, "
        ".predictor or .predictor.model): Meta's SAM2Base, SAM2ImagePredictor, "
        "SAM2AutomaticMaskGenerator; transformers' Sam2Model, Sam2VideoModel; ultralytics' SAM, "
        f"SAM2Model, SAM2Predictor; got {type(model).__name__}")


def _missing(module: nn.Module, paths) -> list:
    missing = []
    for path in paths:
        obj = module
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is None:
            missing.append(path)
    return missing


def _check_meta(where: str, encoder: nn.Module) -> None:
    missing = _missing(encoder, _META_REQUIRED)
    if missing:
        raise TypeError(f"{where} ({type(encoder).__name__}) is not a SAM-2 PromptEncoder: it has "
                        f"no {', '.join(missing)}")
    layers = encoder.mask_downscaling
    if (not isinstance(layers, nn.Sequential) or len(layers) != 7
            or not isinstance(layers[3], nn.Conv2d) or not isinstance(layers[2], nn.Module)):
        raise TypeError(f"{where} ({type(encoder).__name__}) is not a SAM-2 PromptEncoder: "
                        "mask_downscaling is not SAM-2's 7-layer nn.Sequential "
                        "(conv, norm, activation, conv, norm, activation, conv)")


def _check_transformers(where: str, encoder: nn.Module) -> None:
    name = type(encoder).__name__
    if name not in hf.ENCODER_CLASSES:
        raise TypeError(
            f"{where} ({name}, from transformers) is not supported: sam2_prompt mirrors "
            f"transformers' SAM-2 prompt encoders ({', '.join(hf.ENCODER_CLASSES)}: one [4, C] "
            "point_embed table, a not_a_point token after each box, label -10 for padding points); "
            f"{name} has another contract (SAM 1's SamPromptEncoder, for one, keeps separate point "
            "embeddings and no box padding token)")
    missing = _missing(encoder, _HF_REQUIRED)
    if missing:
        raise TypeError(f"{where} ({name}) is not transformers' SAM-2 prompt encoder as sam2_prompt "
                        f"knows it: it has no {', '.join(missing)}")
    rows = encoder.point_embed.weight.shape[0]
    if rows != hf.NUM_POINT_EMBEDDINGS:
        raise TypeError(f"{where} ({name}) has {rows} point embeddings; sam2_prompt's ops take "
                        f"{hf.NUM_POINT_EMBEDDINGS}")


def _build_meta(cls):
    def build(old: nn.Module, backend: Optional[str]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # building ours draws from the CPU RNG: leave it be
            return cls(int(old.embed_dim), tuple(old.image_embedding_size),
                       tuple(old.input_image_size), mask_in_chans=old.mask_downscaling[3].out_channels,
                       activation=type(old.mask_downscaling[2]), backend=backend)
    return build


_ADAPTERS = {
    "meta": _Adapter(_check_meta, _build_meta(PromptEncoder)),
    "ultralytics": _Adapter(_check_meta, _build_meta(UltralyticsPromptEncoder)),
    "transformers": _Adapter(_check_transformers, hf.Sam2PromptEncoder.like),
}
_OURS = (PromptEncoder, hf.Sam2PromptEncoder)


def _adapter(encoder: nn.Module) -> _Adapter:
    package = type(encoder).__module__.split(".")[0]
    return _ADAPTERS.get(package, _ADAPTERS["meta"])  # Meta's, or any module in its contract


def _mirror(source: nn.Module, target: nn.Module) -> None:
    """``target`` takes ``source``'s tensors (values, device, dtype tensor by tensor,
    requires_grad), train/eval flags and size attributes; it keeps its own Parameter objects."""
    wanted = source.state_dict(keep_vars=True)
    current = target.state_dict(keep_vars=True)
    if set(wanted) != set(current):
        target.load_state_dict(wanted, strict=True)  # raises, naming the missing and extra keys
    # Tensors that already hold the same bits are left alone: an in-place copy would invalidate
    # views the caller took of them under no_grad (the no-mask dense output is one).
    changed = {key: like for key, like in wanted.items() if not same_bits(current[key], like)}
    with torch.no_grad():
        for key, like in changed.items():
            tensor = current[key]
            if (tensor.device, tensor.dtype) != (like.device, like.dtype):
                tensor.data = torch.empty_like(like)
    target.load_state_dict(changed, strict=False)  # copies under no_grad; keys checked above
    source_params = dict(source.named_parameters())
    for name, param in target.named_parameters():
        param.requires_grad_(source_params[name].requires_grad)
    source_modules = dict(source.named_modules())
    for name, module in target.named_modules():
        module.training = getattr(source_modules.get(name), "training", source.training)
    for name in SIZES:
        if hasattr(source, name):
            setattr(target, name, copy.copy(getattr(source, name)))  # list or tuple, as it was


def _is_compiled(fn) -> bool:
    return getattr(fn, "_torchdynamo_orig_callable", None) is not None


def _serves_image_wide_grid(owner: nn.Module) -> bool:
    """A transformers SAM-2 model: its image-wide positional grid can come from the dense op."""
    gaussian = getattr(owner._modules.get("shared_image_embedding"), "positional_embedding", None)
    return isinstance(gaussian, torch.Tensor) and callable(getattr(type(owner), _IMAGE_WIDE, None))


def replace_prompt_encoder(model, backend: Optional[str] = None):
    """Put sam2_prompt's encoder in place of ``model``'s; returns ``model`` (the same object).

    model: Meta's SAM2Base (SAM2VideoPredictor, SAM2VideoPredictorVOS), SAM2ImagePredictor or
    SAM2AutomaticMaskGenerator; transformers' Sam2Model, Sam2VideoModel (and EdgeTam*,
    Sam3Tracker* models); ultralytics' SAM wrapper, SAM2Model, SAMModel or predictors; or any
    nn.Module whose ``sam_prompt_encoder`` / ``prompt_encoder`` is one of these encoders.
    backend: None (SAM2_PROMPT_BACKEND, default "auto"), "auto", "torch" or "triton". Weights,
    device, dtype, requires_grad, train/eval mode and sizes are copied; a forward that was compiled
    (SAM2VideoPredictorVOS) is compiled on ours with the VOS predictor's options. On a model
    already swapped, only the backend is set.
    """
    if backend is not None:
        ops.check_backend(backend)  # before anything changes
    owner, slot = _find(model, "replace_prompt_encoder")
    old = owner._modules[slot]
    if isinstance(old, _OURS):
        if backend is not None:
            old.backend = backend
        return model
    where = f"model.{slot}"
    if "_orig_mod" in old._modules:
        raise TypeError(f"{where} is a torch.compile wrapper: swap the encoder first and compile "
                        "after (or compile only its forward, as SAM2VideoPredictorVOS does: that "
                        "is carried over)")
    adapter = _adapter(old)
    adapter.check(where, old)
    new = adapter.build(old, backend)
    _mirror(old, new)
    if _is_compiled(vars(old).get("forward")):
        new.forward = torch.compile(new.forward, **_VOS_COMPILE)
    object.__setattr__(new, _ORIGINAL, old)  # kept, but not a submodule: state-dict keys unchanged
    setattr(owner, slot, new)
    if isinstance(new, hf.Sam2PromptEncoder) and _serves_image_wide_grid(owner):
        setattr(owner, _IMAGE_WIDE, hf.ImageWideGrid(owner))  # shadows the class's method
    return model


def restore_prompt_encoder(model):
    """Put the original module back and return ``model``; it takes ours' current weights
    (fine-tuning included), device, dtype, requires_grad, train/eval mode and sizes (e.g. after
    ultralytics' set_imgsz)."""
    owner, slot = _find(model, "restore_prompt_encoder")
    ours = owner._modules[slot]
    original = getattr(ours, _ORIGINAL, None)
    if original is None:
        raise ValueError(f"restore_prompt_encoder: {type(model).__name__}'s prompt encoder "
                         f"({type(ours).__name__}) was not replaced by replace_prompt_encoder: "
                         "nothing to restore")
    _mirror(ours, original)
    setattr(owner, slot, original)
    if isinstance(vars(owner).get(_IMAGE_WIDE), hf.ImageWideGrid):
        delattr(owner, _IMAGE_WIDE)  # the class's own method again
    return model


@contextmanager
def swapped_prompt_encoder(model, backend: Optional[str] = None):
    """``with swapped_prompt_encoder(model, backend=...): ...`` runs with ours and leaves ``model``
    as it found it: the original encoder restored, or an already-swapped one on its previous
    backend."""
    owner, slot = _find(model, "swapped_prompt_encoder")
    current = owner._modules[slot]
    previous = current._backend_request if isinstance(current, _OURS) else None
    replace_prompt_encoder(model, backend)
    try:
        yield model
    finally:
        if previous is None:
            restore_prompt_encoder(model)
        else:
            current.backend = previous
