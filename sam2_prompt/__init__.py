"""sam2-prompt: a drop-in, fast PromptEncoder for SAM-2 (fused Triton kernels, fast PyTorch path)."""

from .integration import replace_prompt_encoder, restore_prompt_encoder, swapped_prompt_encoder
from .position_encoding import PositionEmbeddingRandom
from .prompt_encoder import PromptEncoder

__version__ = "0.1.0"

__all__ = [
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "replace_prompt_encoder",
    "restore_prompt_encoder",
    "swapped_prompt_encoder",
    "__version__",
]
