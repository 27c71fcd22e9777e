"""Benchmark cases and backends, defined once for the CLI and the pytest-benchmark suite.

A case is a prompt batch (prompts B, points N, boxes K, masks); a backend is a callable
``encoder(points, boxes, masks)`` built with the same seeded weights for Meta's module and ours.
"""

import itertools
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import torch

from sam2_prompt import PromptEncoder

EMB_SIZE, IMAGE, MASK_CHANS = (64, 64), (1024, 1024), 16
BACKENDS = ("upstream", "upstream-compiled", "torch", "torch-compiled", "triton")


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    points: int
    boxes: int = 0
    masks: bool = False
    embed_dim: int = 256
    dtype: str = "float32"  # the output dtype: float32, or bfloat16 (our module cast to bf16)

    @property
    def tokens(self) -> int:
        return self.points + 2 * self.boxes + (1 if self.boxes == 0 else 0)

    def output_bytes(self) -> int:
        return self.batch * self.tokens * self.embed_dim * torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def inputs(self, device, seed: int = 0):
        """(points, boxes, masks) as SAM-2 passes them: int32 labels, boxes [B, 4] for K = 1."""
        gen = torch.Generator().manual_seed(seed)
        h, w = IMAGE
        points = None
        if self.points:
            coords = torch.rand(self.batch, self.points, 2, generator=gen) * torch.tensor([w, h])
            labels = torch.randint(0, 2, (self.batch, self.points), generator=gen, dtype=torch.int32)
            points = (coords.to(device), labels.to(device))
        boxes = None
        if self.boxes:
            shape = (self.batch, 4) if self.boxes == 1 else (self.batch, self.boxes, 4)
            boxes = (torch.rand(*shape, generator=gen) * torch.tensor([w, h, w, h])).to(device)
        masks = None
        if self.masks:
            masks = torch.randn(self.batch, 1, 4 * EMB_SIZE[0], 4 * EMB_SIZE[1], generator=gen).to(device)
        return points, boxes, masks

    def as_dict(self) -> dict:
        return asdict(self)


# The foundation issue's targets for our PyTorch path on a CPU (embed_dim 256, no_grad).
FOUNDATION = [Case("click", 1, 1), Case("amg-16384x4", 16384, 4)]
TARGETS = {"click": 2.0, "amg-16384x4": 5.0}  # minimum speedup over upstream eager
ALLOC_TARGET = 1.5  # bytes allocated per call <= 1.5x the output's bytes

QUICK = FOUNDATION + [Case("batch-64x4", 64, 4), Case("batch-1024x4", 1024, 4),
                      Case("box-1024", 1024, 0, boxes=1), Case("points+box-1024", 1024, 4, boxes=1)]


def sweep(batches=(1, 8, 64, 1024, 16384, 65536), points=(1, 4, 16), boxes=(0, 1), masks=(False,),
          embed_dims=(256,), dtypes=("float32",)) -> List[Case]:
    """The full grid of cases (prompts x points x boxes x masks x width x dtype)."""
    cases = []
    for b, n, k, m, c, d in itertools.product(batches, points, boxes, masks, embed_dims, dtypes):
        name = f"b{b}-n{n}" + (f"-k{k}" if k else "") + ("-mask" if m else "") + \
            (f"-c{c}" if c != 256 else "") + ("" if d == "float32" else f"-{d}")
        cases.append(Case(name, b, n, k, m, c, d))
    return cases


def upstream_class():
    """Meta's PromptEncoder, or None when sam2 is not installed."""
    try:
        from sam2.modeling.sam.prompt_encoder import PromptEncoder as MetaPromptEncoder
    except ImportError:
        return None
    return MetaPromptEncoder


def build(case: Case, backend: str, device) -> Optional[Callable]:
    """An ``encoder(points, boxes, masks)`` callable for the backend, or None if it cannot run.

    Every backend gets the weights of one seeded Meta encoder (ours through load_state_dict)."""
    meta_cls = upstream_class()
    torch.manual_seed(0)
    if meta_cls is not None:
        reference = meta_cls(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS)
        for param in reference.parameters():  # non-trivial learned embeddings
            torch.nn.init.normal_(param)
        state = reference.state_dict()
    else:
        state = PromptEncoder(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS).state_dict()
    if backend.startswith("upstream"):
        if meta_cls is None or case.dtype != "float32":
            return None  # Meta's module raises for a bf16 module; not installed -> no row
        module = reference.to(device).eval()
    else:
        if backend == "triton" and torch.device(device).type != "cuda":
            return None
        module = PromptEncoder(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS,
                               backend="triton" if backend == "triton" else "torch")
        module.load_state_dict(state)
        module = module.to(device=device, dtype=case.torch_dtype).eval()
    forward = module.forward
    if backend.endswith("-compiled"):
        forward = torch.compile(forward, fullgraph=backend.startswith("torch"))
    return forward
