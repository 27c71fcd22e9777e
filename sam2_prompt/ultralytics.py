"""Drop-in for ultralytics' SAM / SAM-2 ``PromptEncoder`` (``ultralytics.models.sam.modules.encoders``).

ultralytics' encoder is Meta's contract (same keys, constructor, forward) plus its own mask handling:
a mask prompt of any size is resized to ``mask_input_size`` (bilinear, ``align_corners=False``, no
antialias) and cast to the mask layers' dtype, because ultralytics' predictors pass masks at the
network's input size. Its sizes (``input_image_size``, ``image_embedding_size``, ``mask_input_size``)
are plain attributes that ``SAM2Model.set_imgsz`` / ``SAMModel.set_imgsz`` assign (lists or tuples);
the encoder reads them on every call.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .prompt_encoder import PromptEncoder


class UltralyticsPromptEncoder(PromptEncoder):
    """:class:`sam2_prompt.PromptEncoder` with ultralytics' mask prompts:
    masks [B, 1, H, W] of any H, W -> resized to [B, 1, *mask_input_size] first."""

    def _check_masks(self, masks, device: Optional[torch.device] = None) -> Tensor:
        if not isinstance(masks, Tensor):
            raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
        if not masks.is_floating_point():
            raise TypeError(f"masks must be a floating tensor, got dtype {masks.dtype}")
        if masks.dim() != 4 or masks.shape[1] != 1 or 0 in masks.shape[2:]:
            raise ValueError(f"masks must be [B, 1, H, W] (resized to {tuple(self.mask_input_size)}), "
                             f"got {tuple(masks.shape)}")
        self._check_device("masks", masks, device)
        return masks

    def _embed_masks(self, masks: Tensor) -> Tensor:
        """masks: [B, 1, H, W] -> [B, C, H_emb, W_emb] (ultralytics' resize, then the mask layers)."""
        if tuple(masks.shape[-2:]) != tuple(self.mask_input_size):
            masks = F.interpolate(masks.float(), size=list(self.mask_input_size), mode="bilinear",
                                  align_corners=False).to(self.mask_downscaling[0].weight.dtype)
        return super()._embed_masks(masks)
