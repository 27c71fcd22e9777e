"""``PositionEmbeddingRandom``: drop-in for ``sam2.modeling.position_encoding.PositionEmbeddingRandom``.

Same buffer, constructor RNG use and results; positions are computed in fp32 whatever autocast says.
On CPU the PyTorch path keeps the dense grid while the Gaussian keeps its bits (see ``cache``).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops, reference
from .cache import DerivedCache, cacheable


def module_tensor(module: nn.Module, name: str) -> Tensor:
    """``module.<name>``, straight from the parameter or buffer dict (nn.Module's attribute
    fallback is slow per call); parametrized and plain attributes through getattr."""
    tensor = module._parameters.get(name)
    if tensor is None:
        tensor = module._buffers.get(name)
    return getattr(module, name) if tensor is None else tensor


def module_tensors(modules, name: str) -> List[Tensor]:
    """``[module_tensor(module, name) for module in modules]`` in one call: the parameter dicts
    read inline, module_tensor only for the modules that need its fallback."""
    tensors = []
    for module in modules:
        tensor = module._parameters.get(name)
        tensors.append(module_tensor(module, name) if tensor is None else tensor)
    return tensors


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast would give a matmul on ``device`` right now, or None."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding using random spatial frequencies (random Fourier features).

    positional_encoding_gaussian_matrix: [2, num_pos_feats] = scale * randn.
    """

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )
        self.backend = None
        self._derived = DerivedCache()

    @property
    def backend(self) -> str:
        """The backend the next call would use: "torch" or "triton" (settable: auto/torch/triton)."""
        if self._backend_request != "auto":
            return self._backend_request
        gaussian = self.positional_encoding_gaussian_matrix
        tri = ops.use_triton(self._backend_request, gaussian.device, self.pe_dtype())
        return "triton" if tri else "torch"

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self._backend_request = ops.check_backend(value)

    def pe_dtype(self) -> torch.dtype:
        """Upstream's dtype for positional encodings: autocast's if it is on, else the buffer's."""
        gaussian = module_tensor(self, "positional_encoding_gaussian_matrix")
        cast = autocast_dtype(gaussian.device)
        if cast is not None and gaussian.dtype == torch.float32:
            return cast
        return gaussian.dtype

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """Positionally encode points normalised to [0, 1]: coords [..., 2] -> [..., C]."""
        return reference.unit_pe(coords, self.positional_encoding_gaussian_matrix, self.pe_dtype())

    def forward(self, size: Tuple[int, int]) -> Tensor:
        """The grid of pixel centres of an (h, w) image: -> [C, h, w], a new tensor each call.

        The PyTorch path on CPU keeps the grid (``DerivedCache``: while the Gaussian keeps its
        bits, per size and dtype) and returns a copy; the Triton kernels recompute it (one launch)."""
        h, w = (int(s) for s in size)
        gaussian = module_tensor(self, "positional_encoding_gaussian_matrix")
        out_dtype = self.pe_dtype()
        tri = ops.use_triton(self._backend_request, gaussian.device, out_dtype)
        if tri or not cacheable((gaussian,)):
            return ops.dense_pe(gaussian, h, w, out_dtype, tri)
        grid = self._derived.get(("grid", h, w, out_dtype), (gaussian,),
                                 lambda: ops.dense_pe(gaussian, h, w, out_dtype, False))
        return grid.clone()

    def forward_with_coords(self, coords_input: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """Encode pixel coordinates (no pixel-centre shift): coords [B, N, 2] -> [B, N, C]."""
        if not isinstance(coords_input, Tensor):
            raise TypeError(f"coords_input must be a torch.Tensor, got {type(coords_input).__name__}")
        if coords_input.dim() != 3 or coords_input.shape[-1] != 2:
            raise ValueError(f"coords_input must be [B, N, 2], got {tuple(coords_input.shape)}")
        dtype = reference.compute_dtype(self.pe_dtype())
        size_xy = torch.tensor([image_size[1], image_size[0]], device=coords_input.device, dtype=dtype)
        return self._pe_encoding(coords_input.to(dtype) / size_xy)
