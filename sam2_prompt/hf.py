"""Drop-in for transformers' SAM-2 prompt encoder (``Sam2PromptEncoder``; the Sam2Video, EdgeTam,
EdgeTamVideo, Sam3Tracker and Sam3TrackerVideo encoders are the same code), on our ops.

transformers' contract, mirrored: state-dict keys (``shared_embedding.positional_embedding``,
``point_embed.weight`` [4, C], ``mask_embed.conv1/layer_norm1/conv2/layer_norm2/conv3``,
``no_mask_embed``, ``not_a_point_embed``), ``Sam2PromptEncoder(config)``, attributes
(``input_image_size`` one int, ``image_embedding_size``, ``mask_input_size``, ``hidden_size``) and

    forward(input_points [B, P, N, 2] | None, input_labels [B, P, N] | None,
            input_boxes [B, P, 4] | None, input_masks [B, 1, H, W] | None)
    -> (sparse [B, P, T, C] | None, dense [B, C, H_emb, W_emb])

Tokens of a prompt: its N points (label -1 -> not_a_point, -10 -> an all-zero token, 0..3 ->
positional encoding + ``point_embed[label]``, other negatives -> the bare encoding), then one
padding not_a_point token when there is no box, or per box its corners (labels 2 and 3) and a
not_a_point token. All of it is one ``ops.sparse_embed`` call (a box is three points); then the
-10 tokens are zeroed, when the labels may hold one.
"""

import copy
from types import SimpleNamespace
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops, reference
from .cache import DerivedCache
from .prompt_encoder import LayerNorm2d

PAD_POINT_LABEL = -10  # transformers' processor pads point lists with this label: a zero token
NUM_POINT_EMBEDDINGS = 4  # the ops' label table: positive, negative, box corners
BOX_LABELS = (2, 3, -1)  # a box's tokens: top-left corner, bottom-right corner, not_a_point

# transformers' encoder classes that are Sam2PromptEncoder's code under another name (compared in
# tests/test_integration_transformers.py), and the models that hold one as `prompt_encoder`.
ENCODER_CLASSES = ("Sam2PromptEncoder", "Sam2VideoPromptEncoder", "EdgeTamPromptEncoder",
                   "EdgeTamVideoPromptEncoder", "Sam3TrackerPromptEncoder",
                   "Sam3TrackerVideoPromptEncoder")

# Meta's sam2 key -> transformers' key (transformers' convert_sam2_to_hf.py maps the same way);
# Meta's four point_embeddings.{i}.weight [1, C] are transformers' point_embed.weight rows.
META_TO_TRANSFORMERS = {
    "pe_layer.positional_encoding_gaussian_matrix": "shared_embedding.positional_embedding",
    "not_a_point_embed.weight": "not_a_point_embed.weight",
    "no_mask_embed.weight": "no_mask_embed.weight",
    **{f"mask_downscaling.{meta}.{what}": f"mask_embed.{hf}.{what}"
       for meta, hf in (("0", "conv1"), ("1", "layer_norm1"), ("3", "conv2"), ("4", "layer_norm2"),
                        ("6", "conv3"))
       for what in ("weight", "bias")},
}


def state_dict_from_meta(state: dict) -> dict:
    """A Meta sam2 PromptEncoder state dict -> transformers' Sam2PromptEncoder keys (same tensors,
    the four point embeddings stacked into point_embed.weight [4, C])."""
    out = {hf: state[meta] for meta, hf in META_TO_TRANSFORMERS.items()}
    out["point_embed.weight"] = torch.cat(
        [state[f"point_embeddings.{i}.weight"] for i in range(NUM_POINT_EMBEDDINGS)])
    return out


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


class Sam2PositionalEmbedding(nn.Module):
    """transformers' ``Sam2PositionalEmbedding``: buffer ``positional_embedding`` [2, C/2] =
    scale * randn; forward encodes coordinates in [0, 1] (or pixels, given input_shape (h, w))."""

    def __init__(self, config) -> None:
        super().__init__()
        self.scale = config.scale
        self.positional_embedding = nn.Buffer(self.scale * torch.randn((2, config.hidden_size // 2)))

    def pe_dtype(self) -> torch.dtype:
        """transformers' dtype for encodings: autocast's (its matmul) for an fp32 buffer, else the
        buffer's."""
        gaussian = self.positional_embedding
        cast = _autocast_dtype(gaussian.device)
        return cast if cast is not None and gaussian.dtype == torch.float32 else gaussian.dtype

    def forward(self, input_coords: Tensor, input_shape: Optional[Tuple[int, int]] = None) -> Tensor:
        """input_coords: [B, P, N, 2] (x, y) -> [B, P, N, C]; computed in fp32, cast once."""
        if not isinstance(input_coords, Tensor) or input_coords.shape[-1:] != (2,):
            raise ValueError("input_coords must be a tensor [..., 2], got "
                             f"{tuple(getattr(input_coords, 'shape', ())) or type(input_coords).__name__}")
        dtype = reference.compute_dtype(self.pe_dtype())
        coords = input_coords.to(dtype)
        if input_shape is not None:
            coords = coords / torch.tensor([input_shape[1], input_shape[0]], device=coords.device,
                                           dtype=dtype)
        return reference.unit_pe(coords, self.positional_embedding, self.pe_dtype())


class Sam2MaskEmbedding(nn.Module):
    """transformers' ``Sam2MaskEmbedding``: masks [B, 1, H, W] -> [B, C, H/4, W/4] through
    conv1, layer_norm1, act, conv2, layer_norm2, act, conv3 (run as modules)."""

    def __init__(self, config, activation: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.mask_input_channels = config.mask_input_channels // 4
        if activation is None:
            from transformers.activations import ACT2FN

            activation = ACT2FN[config.hidden_act]
        self.activation = activation
        self.conv1 = nn.Conv2d(1, self.mask_input_channels, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(self.mask_input_channels, config.mask_input_channels, kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(config.mask_input_channels, config.hidden_size, kernel_size=1)
        self.layer_norm1 = LayerNorm2d(self.mask_input_channels, eps=config.layer_norm_eps)
        self.layer_norm2 = LayerNorm2d(self.mask_input_channels * 4, eps=config.layer_norm_eps)

    def forward(self, masks: Tensor) -> Tensor:
        hidden = self.activation(self.layer_norm1(self.conv1(masks)))
        hidden = self.activation(self.layer_norm2(self.conv2(hidden)))
        return self.conv3(hidden)


class Sam2PromptEncoder(nn.Module):
    """Drop-in for transformers' ``Sam2PromptEncoder`` on sam2_prompt's ops (see the module
    docstring for the contract). ``backend``: None (SAM2_PROMPT_BACKEND, default "auto"), "auto",
    "torch" or "triton", as :class:`sam2_prompt.PromptEncoder`'s."""

    def __init__(self, config, *, backend: Optional[str] = None,
                 activation: Optional[nn.Module] = None) -> None:
        super().__init__()
        if config.num_point_embeddings != NUM_POINT_EMBEDDINGS:
            raise ValueError(f"config.num_point_embeddings must be {NUM_POINT_EMBEDDINGS} (the "
                             f"ops' label table), got {config.num_point_embeddings}")
        # Built in transformers' order, so that one seed gives both modules the same weights.
        self.shared_embedding = Sam2PositionalEmbedding(config)
        self.mask_embed = Sam2MaskEmbedding(config, activation)
        self.no_mask_embed = nn.Embedding(1, config.hidden_size)

        side = config.image_size // config.patch_size
        self.image_embedding_size = (side, side)
        self.mask_input_size = (4 * config.image_size // config.patch_size,) * 2
        self.input_image_size = config.image_size

        self.point_embed = nn.Embedding(config.num_point_embeddings, config.hidden_size)
        self.hidden_size = config.hidden_size
        self.not_a_point_embed = nn.Embedding(1, config.hidden_size)
        self.backend = backend
        self._derived = DerivedCache()  # the op keeps what it folds from the weights here

    @classmethod
    def like(cls, original: nn.Module, backend: Optional[str] = None) -> "Sam2PromptEncoder":
        """Ours shaped as ``original`` (a transformers SAM-2 prompt encoder), weights not copied."""
        image_size = int(original.input_image_size)
        config = SimpleNamespace(  # the sizes are then copied as they are (replace_prompt_encoder)
            hidden_size=int(original.hidden_size), image_size=image_size,
            patch_size=image_size // int(original.image_embedding_size[0]),
            mask_input_channels=original.mask_embed.conv2.out_channels,
            num_point_embeddings=original.point_embed.num_embeddings,
            layer_norm_eps=original.mask_embed.layer_norm1.eps,
            scale=getattr(original.shared_embedding, "scale", 1))
        with torch.random.fork_rng(devices=[]):  # building draws from the CPU RNG: leave it be
            ours = cls(config, backend=backend, activation=copy.deepcopy(original.mask_embed.activation))
        return ours

    # ----------------------------------------------------------------------------- backend
    @property
    def backend(self) -> str:
        """The backend the next call will use: "torch" or "triton"."""
        if self._backend_request != "auto":
            return self._backend_request
        weight = self.not_a_point_embed.weight
        return "triton" if ops.use_triton("auto", weight.device, weight.dtype) else "torch"

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self._backend_request = ops.check_backend(value)

    def use_triton(self, out_dtype: torch.dtype, device: torch.device) -> bool:
        """The dispatch gate for this module's backend request."""
        return ops.use_triton(self._backend_request, device, out_dtype)

    # ----------------------------------------------------------------------------- transformers' API
    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """points: [B, P, N, 2], labels: [B, P, N] -> [B, P, N + pad, C]."""
        padding = self._validate(points, labels, None, None)
        return self._sparse(points, labels, None, bool(pad), padding)

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """boxes: [B, P, 4] -> [B, P, 3, C]: corners (labels 2, 3) and a not_a_point token."""
        self._validate(None, None, boxes, None)
        return self._sparse(None, None, boxes, False, False)

    def forward(
        self,
        input_points: Optional[Tensor],
        input_labels: Optional[Tensor],
        input_boxes: Optional[Tensor],
        input_masks: Optional[Tensor],
    ) -> Tuple[Optional[Tensor], Tensor]:
        """Sparse [B, P, T, C] (None without points and boxes) and dense [B, C, H_emb, W_emb]."""
        padding = self._validate(input_points, input_labels, input_boxes, input_masks)
        batch = 1
        if input_points is not None:
            batch = input_points.shape[0]
        if input_boxes is not None:
            batch = input_boxes.shape[0]
        sparse = None
        if input_points is not None or input_boxes is not None:
            sparse = self._sparse(input_points, input_labels, input_boxes, input_boxes is None, padding)
        if input_masks is not None:
            dense = self.mask_embed(input_masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense

    # ----------------------------------------------------------------------------- internals
    def _out_dtype(self, with_points: bool) -> torch.dtype:
        """transformers' output dtype: point tokens promote the encoding's dtype with the learned
        embeddings' (torch.where, +); box tokens are written into the encoding in place."""
        pe_dtype = self.shared_embedding.pe_dtype()
        if not with_points:
            return pe_dtype
        return torch.promote_types(pe_dtype, torch.promote_types(
            self.not_a_point_embed.weight.dtype, self.point_embed.weight.dtype))

    def _sparse(self, points, labels, boxes, pad: bool, padding: bool) -> Tensor:
        """One op call over [B*P] rows of tokens: points (+ a padding token), then each box as
        three points (corners, not_a_point) -> [B, P, T, C]; ``padding``: labels may hold -10."""
        like = points if points is not None else boxes
        batch, prompts = like.shape[:2]
        rows = batch * prompts
        coords, ids = [], []
        if points is not None:
            coords.append(points.reshape(rows, -1, 2))
            ids.append(labels.reshape(rows, -1))
        if boxes is not None:
            corners = boxes.reshape(rows, 2, 2)
            coords.append(torch.cat([corners, corners.new_zeros(rows, 1, 2)], dim=1))
            box_ids = torch.arange(BOX_LABELS[0], BOX_LABELS[0] + 3, device=like.device,
                                   dtype=ids[0].dtype if ids else torch.int32)
            box_ids[2] = BOX_LABELS[2]  # a fill on the device: no host-to-device copy
            ids.append(box_ids.expand(rows, 3))
        coords = coords[0] if len(coords) == 1 else torch.cat(coords, dim=1)
        ids = ids[0] if len(ids) == 1 else torch.cat(ids, dim=1)
        out_dtype = self._out_dtype(points is not None)
        gaussian = self.shared_embedding.positional_embedding
        size = int(self.input_image_size)
        out = ops.sparse_embed(
            coords, ids, None, pad, gaussian, self.point_embed.weight,
            self.not_a_point_embed.weight, size, size, out_dtype,
            self.use_triton(out_dtype, gaussian.device), self._derived,
            prompts_checked=True)  # forward validated the inputs these tokens are made of
        if padding:
            out = _zero_padding_points(out, labels.reshape(rows, -1))
        return out.view(batch, prompts, out.shape[1], out.shape[2])

    def _validate(self, points, labels, boxes, masks) -> bool:
        """Every input checked before any work (transformers' own errors come from deep inside).
        -> whether the labels may hold padding points (-10)."""
        padding = False
        device = self.not_a_point_embed.weight.device
        if points is not None:
            _check("input_points", points, device, dims=4, last=2)
            if labels is None:
                raise ValueError("If points are provided, labels must also be provided.")
            _check("input_labels", labels, device, dims=3)
            if labels.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"input_labels must be an int32 or int64 tensor (transformers looks "
                                f"labels up in point_embed), got dtype {labels.dtype}")
            if labels.shape != points.shape[:3]:
                raise ValueError(f"input_labels must be [B, P, N] = {tuple(points.shape[:3])} to "
                                 f"match input_points {tuple(points.shape)}, got {tuple(labels.shape)}")
            padding = _check_label_range(labels)
        if boxes is not None:
            _check("input_boxes", boxes, device, dims=3, last=4)
            if points is not None and boxes.shape[:2] != points.shape[:2]:
                raise ValueError(f"input_boxes [B, P, 4] must have the [B, P] of input_points "
                                 f"{tuple(points.shape)}, got {tuple(boxes.shape)}")
        if masks is not None:
            _check("input_masks", masks, device, dims=4)
            if not masks.is_floating_point() or masks.shape[1] != 1:
                raise ValueError(f"input_masks must be a floating tensor [B, 1, H, W], got "
                                 f"{masks.dtype} {tuple(masks.shape)}")
        return padding


def _check(name: str, value, device: torch.device, dims: int, last: Optional[int] = None) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
    if value.dim() != dims or (last is not None and value.shape[-1] != last):
        shape = {"input_points": "[B, P, N, 2]", "input_labels": "[B, P, N]",
                 "input_boxes": "[B, P, 4]", "input_masks": "[B, 1, H, W]"}[name]
        raise ValueError(f"{name} must be {shape}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the prompt encoder is on {device}")


def _check_label_range(labels: Tensor) -> bool:
    """transformers looks labels >= 0 up in point_embed (4 rows): a larger label is its IndexError
    (a device assert on CUDA). Checked on CPU, one reduction that also says whether a padding
    label (-10) may be there; elsewhere asserted on the device (no host sync), padding assumed.
    -> whether the output may need padding points zeroed."""
    if labels.numel() == 0:
        return False
    if torch.compiler.is_compiling() or labels.device.type == "meta":
        return True
    if labels.device.type != "cpu":
        torch._assert_async(labels.max() < NUM_POINT_EMBEDDINGS,
                            f"input_labels must be < {NUM_POINT_EMBEDDINGS}")
        return True
    low, high = (int(v) for v in torch.aminmax(labels))
    if high >= NUM_POINT_EMBEDDINGS:
        raise ValueError(f"input_labels must be < {NUM_POINT_EMBEDDINGS} (point_embed has "
                         f"{NUM_POINT_EMBEDDINGS} rows), got a label {high}")
    return low <= PAD_POINT_LABEL


def _zero_padding_points(out: Tensor, labels: Tensor) -> Tensor:
    """out: [R, T, C] whose first N tokens are the points of labels [R, N]: padding points (label
    -10) become all-zero tokens (NaN coordinates included, as transformers' torch.where)."""
    padding = labels == PAD_POINT_LABEL
    points = out[:, : labels.shape[1]]
    if out.requires_grad:  # autograd: out of place (the op's output may not be edited in place)
        return torch.cat([points.masked_fill(padding[..., None], 0.0), out[:, labels.shape[1]:]], 1)
    if out.device.type == "cpu" and not torch.compiler.is_compiling():
        # Only the padding tokens are written: a masked fill rewrites every point token (~4x the time).
        out[padding.nonzero(as_tuple=True)] = 0.0
    else:
        points.masked_fill_(padding[..., None], 0.0)  # no host sync
    return out


class ImageWideGrid:
    """Serves a transformers SAM-2 model's ``get_image_wide_positional_embeddings()`` with the dense
    op: -> [1, C, h, w] for (h, w) = ``model.prompt_encoder.image_embedding_size``, from
    ``model.shared_image_embedding.positional_embedding``, recomputed on every call (nothing is
    kept), on the prompt encoder's backend, in transformers' dtype (the Gaussian's, or autocast's
    for an fp32 Gaussian), computed in fp32."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self) -> Tensor:
        model = self.model
        encoder = model.prompt_encoder
        if not isinstance(encoder, Sam2PromptEncoder):  # someone put another encoder in
            return type(model).get_image_wide_positional_embeddings(model)
        gaussian = model.shared_image_embedding.positional_embedding
        cast = _autocast_dtype(gaussian.device)
        out_dtype = cast if cast is not None and gaussian.dtype == torch.float32 else gaussian.dtype
        h, w = (int(s) for s in encoder.image_embedding_size)
        use_triton = encoder.use_triton(out_dtype, gaussian.device)
        return ops.dense_pe(gaussian, h, w, out_dtype, use_triton).unsqueeze(0)
