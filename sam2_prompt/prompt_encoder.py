"""``PromptEncoder``: drop-in for ``sam2.modeling.sam.prompt_encoder.PromptEncoder``.

validate -> (cached) ops -> outputs. Same constructor, attributes, submodules, state-dict keys,
methods and results as Meta's; the sparse embedding is one op writing a preallocated output.
"""

from typing import Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import masks as mask_ops
from . import ops
from .cache import DerivedCache
from .position_encoding import (PositionEmbeddingRandom, autocast_dtype, module_tensor,
                                 module_tensors)

Points = Tuple[Tensor, Tensor]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of x: [B, C, H, W] (SAM-2's ``LayerNorm2d``: same keys, eps)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.permute(0, 2, 3, 1)
        normed = F.layer_norm(channels_last, (x.shape[1],), self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)


def _is_conv(module: nn.Module, size: int) -> bool:
    """An nn.Conv2d with a bias, kernel and stride ``size``, no padding, dilation or groups."""
    return (type(module) is nn.Conv2d and module.kernel_size == (size, size)
            and module.stride == (size, size) and module.padding == (0, 0)
            and module.dilation == (1, 1) and module.groups == 1 and module.bias is not None
            and module.padding_mode == "zeros")


def _has_hooks(layers: nn.Module) -> bool:
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in layers.modules())


def fused_mask_layers(layers: nn.Module):
    """(weights, eps1, eps2) of SAM-2's ``mask_downscaling`` when the mask op computes exactly
    what its layers do (conv 2x2/2, LayerNorm2d, exact GELU, conv 2x2/2, LayerNorm2d, exact GELU,
    conv 1x1, no hooks), in the op's order (conv1, ln1, conv2, ln2, conv3; weight then bias);
    None otherwise."""
    if not isinstance(layers, nn.Sequential) or len(layers) != 7 or _has_hooks(layers):
        return None
    conv1, norm1, act1, conv2, norm2, act2, conv3 = layers
    if not (_is_conv(conv1, 2) and _is_conv(conv2, 2) and _is_conv(conv3, 1)
            and type(norm1) is LayerNorm2d and type(norm2) is LayerNorm2d
            and mask_ops.fusable_activations(act1, act2)):
        return None
    weights = tuple(module_tensor(module, name) for module in (conv1, norm1, conv2, norm2, conv3)
                    for name in ("weight", "bias"))
    return weights, norm1.eps, norm2.eps


def _check_tensor(name: str, value, allow_bool: bool = False) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex() or (value.dtype == torch.bool and not allow_bool):
        kinds = "real integer, bool or floating" if allow_bool else "real integer or floating"
        raise TypeError(f"{name} must be a {kinds} tensor, got dtype {value.dtype}")
    return value


# dtypes _check_tensor refuses, for one set lookup on the usual call's path
_NOT_REAL = frozenset({torch.complex32, torch.complex64, torch.complex128})
_NOT_REAL_OR_BOOL = _NOT_REAL | {torch.bool}


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _is_corner_pair(boxes: Tensor) -> bool:
    """boxes [B, 2, 2]: one box per prompt as its corners ((x0, y0), (x1, y1)), as upstream takes."""
    return boxes.dim() == 3 and tuple(boxes.shape[1:]) == (2, 2)


def _no_mask_dense(no_mask: Tensor, batch: int, h: int, w: int) -> Tensor:
    """no_mask [1, C] -> upstream's dense output, ``no_mask.reshape(1, -1, 1, 1).expand(batch,
    -1, h, w)``: a [batch, C, h, w] view. With no autograd to record, the same view (its
    strides too) in one op (two ops cost a click on a GPU several microseconds of host time)."""
    shape = no_mask.shape
    if len(shape) != 2 or shape[0] != 1 or torch.is_grad_enabled():
        return no_mask.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
    row, col = no_mask.stride()
    return no_mask.as_strided(  # (the storage offset: no_mask's)
        (batch, shape[1], h, w),
        (row if batch == 1 else 0, col, col if h == 1 else 0, col if w == 1 else 0))


def _boxes_bk4(boxes: Tensor) -> Tensor:
    """[B, 4] | [B, 2, 2] | [B, K, 4] -> [B, K, 4] (a view; empty batches included)."""
    if boxes.dim() == 2:
        return boxes.unsqueeze(1)
    if _is_corner_pair(boxes):
        return boxes.reshape(boxes.shape[0], 1, 4)
    return boxes


class PromptEncoder(nn.Module):
    """Encodes points, boxes and masks for SAM-2's mask decoder.

    forward(points=(coords [B, N, 2], labels [B, N]) | None, boxes=[B, 4] | [B, K, 4] | None,
    masks=[B, 1, 4*H_emb, 4*W_emb] | None) -> (sparse [B, N + pad + 2K, C], dense [B, C, H_emb, W_emb]).

    backend: None (environment variable SAM2_PROMPT_BACKEND, default "auto"), "auto", "torch" or
    "triton". ``encoder.backend`` reads as the backend the next call will use.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Tuple[int, int],
        input_image_size: Tuple[int, int],
        mask_in_chans: int,
        activation: Type[nn.Module] = nn.GELU,
        *,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be an even int >= 2, got {embed_dim!r}")
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.num_point_embeddings: int = 4  # pos/neg point + 2 box corners
        self.point_embeddings = nn.ModuleList(
            [nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)]
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.backend = backend
        self._derived = DerivedCache()

    # ----------------------------------------------------------------------------- backend
    @property
    def backend(self) -> str:
        """The backend the next call will use: "torch" or "triton" (an explicit "triton" that
        cannot run reads "triton"; the call then raises with the reason)."""
        if self._backend_request != "auto":
            return self._backend_request
        return "triton" if self._use_triton(self._weight_dtype()) else "torch"

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self._backend_request = ops.check_backend(value)
        self.pe_layer.backend = self._backend_request

    def _use_triton(self, out_dtype: torch.dtype, device: Optional[torch.device] = None) -> bool:
        if self._backend_request == "torch":
            return False
        device = self.not_a_point_embed.weight.device if device is None else device
        return ops.use_triton(self._backend_request, device, out_dtype)

    # ----------------------------------------------------------------------------- upstream API
    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid: -> [1, C, H_emb, W_emb] (cached)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """points: [B, N, 2], labels: [B, N] -> [B, N + pad, C]."""
        self._check_points((points, labels))
        out_dtype = torch.promote_types(self.pe_layer.pe_dtype(), self._weight_dtype())
        return self._sparse(points, labels, None, bool(pad), out_dtype)

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """boxes: [B, 4], [B, 2, 2] (corners) or [B, K, 4] -> [B, 2K, C] (corner labels 2 and 3)."""
        self._check_boxes(boxes)
        return self._sparse(None, None, boxes, False, self.pe_layer.pe_dtype())

    def _embed_masks(self, masks: Tensor) -> Tensor:
        """masks: [B, 1, 4*H_emb, 4*W_emb] -> [B, C, H_emb, W_emb]: one op (the fused kernel or
        the fast PyTorch path, computing in fp32) when the mask layers are SAM-2's as built, else
        the layers themselves (another activation, a replaced layer, hooks)."""
        layers = self.mask_downscaling
        weight = module_tensor(layers[0], "weight")
        autocast = autocast_dtype(masks.device)
        fused = fused_mask_layers(layers)
        if fused is None:
            if masks.dtype != weight.dtype and autocast is None:
                masks = masks.to(weight.dtype)
            return layers(masks)
        weights, eps1, eps2 = fused
        # what the conv stack returns: autocast's dtype for fp32 weights, else the weights' dtype
        out_dtype = autocast if autocast is not None and weight.dtype == torch.float32 else weight.dtype
        return mask_ops.mask_embed(masks, *weights, eps1, eps2, out_dtype,
                                   self._use_triton(out_dtype, weight.device))

    def _get_batch_size(
        self, points: Optional[Points], boxes: Optional[Tensor], masks: Optional[Tensor]
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        elif boxes is not None:
            return boxes.shape[0]
        elif masks is not None:
            return masks.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self, points: Optional[Points], boxes: Optional[Tensor], masks: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """Sparse embeddings [B, N + pad + 2K, C] and dense embeddings [B, C, H_emb, W_emb]."""
        # Submodules through _modules (nn.Module's attribute fallback is slow on every call).
        # not_a_point: the module's device and dtype, looked up once.
        not_a_point = module_tensor(self._modules["not_a_point_embed"], "weight")
        device = not_a_point.device
        if boxes is None and masks is None and points is not None:  # the usual call
            bs = self._check_points(points, device)
        else:
            bs = self._validate(points, boxes, masks, device)
        out_dtype = not_a_point.dtype
        if points is None and boxes is None:
            sparse = torch.empty((bs, 0, self.embed_dim), device=device, dtype=out_dtype)
        else:
            coords, labels = points if points is not None else (None, None)
            sparse = self._sparse(coords, labels, boxes, boxes is None, out_dtype, not_a_point)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            no_mask = module_tensor(self._modules["no_mask_embed"], "weight")
            dense = _no_mask_dense(no_mask, bs, h, w)
        return sparse, dense

    # ----------------------------------------------------------------------------- internals
    def _weight_dtype(self) -> torch.dtype:
        return self.not_a_point_embed.weight.dtype

    def _sparse(self, coords, labels, boxes, pad: bool, out_dtype: torch.dtype,
                not_a_point: Optional[Tensor] = None) -> Tensor:
        """One op call: tokens of points, padding and box corners -> [B, T, C] in out_dtype.

        What is kept between calls (the PyTorch path's folded Fourier weights and label table) is
        in this module's ``DerivedCache``, reused only while its sources keep their bits."""
        modules = self._modules
        if not_a_point is None:
            not_a_point = module_tensor(modules["not_a_point_embed"], "weight")
        if coords is None:  # int32, as SAM-2 passes labels: box-only calls reuse the point variant
            coords = boxes.new_empty((boxes.shape[0], 0, 2))
            labels = torch.empty((boxes.shape[0], 0), device=boxes.device, dtype=torch.int32)
        elif labels.dtype == torch.bool:  # upstream reads bool labels as 0 / 1
            labels = labels.to(torch.uint8)
        if boxes is not None:
            boxes = _boxes_bk4(boxes)
        gaussian = module_tensor(modules["pe_layer"], "positional_encoding_gaussian_matrix")
        point_rows = module_tensors(modules["point_embeddings"]._modules.values(), "weight")
        height, width = self.input_image_size
        use_triton = ops.use_triton(self._backend_request, not_a_point.device, out_dtype)
        return ops.sparse_embed(coords, labels, boxes, pad, gaussian, point_rows, not_a_point,
                                int(height), int(width), out_dtype, use_triton, self._derived,
                                prompts_checked=True)

    def _check_device(self, name: str, value: Tensor, device: Optional[torch.device] = None) -> None:
        device = self.not_a_point_embed.weight.device if device is None else device
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the PromptEncoder is on {device}")

    def _check_points(self, points, device=None) -> int:
        """points: (coords [B, N, 2], labels [B, N]) on ``device`` (default: the module's) -> B."""
        if not isinstance(points, (tuple, list)) or len(points) != 2:
            raise TypeError(
                f"points must be a (coords, labels) pair of tensors, got {type(points).__name__}"
                + (f" of length {len(points)}" if isinstance(points, (tuple, list)) else "")
            )
        coords, labels = points
        if (not (isinstance(coords, Tensor) and isinstance(labels, Tensor))
                or coords.dtype in _NOT_REAL_OR_BOOL or labels.dtype in _NOT_REAL):
            _check_tensor("points[0] (coords)", coords)  # raises, naming what is wrong
            _check_tensor("points[1] (labels)", labels, allow_bool=True)
        shape = coords.shape
        if len(shape) != 3 or shape[2] != 2:
            raise ValueError(f"point coords must be [B, N, 2], got {_shape(coords)}")
        if labels.shape != shape[:2]:
            raise ValueError(
                f"point labels must be [B, N] = {_shape(coords)[:2]} to match coords "
                f"{_shape(coords)}, got {_shape(labels)}"
            )
        if device is None or coords.device != device or labels.device != device:
            self._check_device("point coords", coords, device)
            self._check_device("point labels", labels, device)
        return shape[0]

    def _check_boxes(self, boxes, device=None) -> Tensor:
        boxes = _check_tensor("boxes", boxes)
        if not (boxes.dim() in (2, 3) and boxes.shape[-1] == 4 or _is_corner_pair(boxes)):
            raise ValueError(f"boxes must be [B, 4], [B, 2, 2] or [B, K, 4], got {_shape(boxes)}")
        self._check_device("boxes", boxes, device)
        return boxes

    def _check_masks(self, masks, device=None) -> Tensor:
        masks = _check_tensor("masks", masks)
        if not masks.is_floating_point():
            raise TypeError(f"masks must be a floating tensor, got dtype {masks.dtype}")
        expected = (1, *self.mask_input_size)
        if masks.dim() != 4 or tuple(masks.shape[1:]) != expected:
            raise ValueError(f"masks must be [B, {', '.join(map(str, expected))}], got {_shape(masks)}")
        self._check_device("masks", masks, device)
        return masks

    def _validate(self, points, boxes, masks, device=None) -> int:
        """Check every input before any work; batch sizes of points, boxes and masks must agree.
        -> that batch size (upstream's ``_get_batch_size``: 1 without inputs). (forward checks
        points alone, the usual call, with _check_points directly.)"""
        batches = []
        if points is not None:
            batches.append(("points", self._check_points(points, device)))
        if boxes is not None:
            batches.append(("boxes", self._check_boxes(boxes, device).shape[0]))
        if masks is not None:
            batches.append(("masks", self._check_masks(masks, device).shape[0]))
        # Pairwise, not through a set: under export a symbolic batch size is not hashable.
        if any(size != batches[0][1] for _, size in batches[1:]):
            sizes = ", ".join(f"{name} {size}" for name, size in batches)
            raise ValueError(f"points, boxes and masks must have the same batch size, got {sizes}")
        return batches[0][1] if batches else 1
