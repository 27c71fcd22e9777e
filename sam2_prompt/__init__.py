"""sam2-prompt: a drop-in, fast PromptEncoder for SAM-2 (fused Triton kernels, fast PyTorch path)."""

from .position_encoding import PositionEmbeddingRandom
from .prompt_encoder import PromptEncoder

__version__ = "0.1.0"

__all__ = ["PositionEmbeddingRandom", "PromptEncoder", "__version__"]
