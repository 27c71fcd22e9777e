"""Benchmark cases and backends, defined once for the CLI and the pytest-benchmark suite.

A case is a prompt batch: B prompts of N points, K boxes, an optional mask, embedding width C and
output dtype. A backend is a callable ``forward(points, boxes, masks) -> (sparse, dense)``; every
backend gets the weights of one seeded Meta encoder (ours through ``load_state_dict``), and
:func:`check_agreement` compares each backend's outputs with Meta's eager module (the oracle) so
that no row times a different computation.
"""

import functools
import itertools
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from sam2_prompt import PromptEncoder

EMB_SIZE, IMAGE, MASK_CHANS = (64, 64), (1024, 1024), 16  # SAM-2's image-embedding grid, image, mask channels
BACKENDS = ("upstream", "upstream-compiled", "torch", "torch-compiled", "triton")
# Other SAM-2 pipelines' encoders as baselines: "<ecosystem>" is its own module (eager fp32),
# "<ecosystem>-torch" / "-triton" our drop-in for it on that path. Their rows take the case's
# inputs converted to the ecosystem's convention (backend_inputs, outside the timed call), are
# checked against the ecosystem's own module (oracle(case, device, backend)) and compared with it
# (baseline).
ECOSYSTEMS = ("transformers", "ultralytics")
ECOSYSTEM_BACKENDS = tuple(f"{family}{path}" for family in ECOSYSTEMS
                           for path in ("", "-torch", "-triton"))
# As SAM2VideoPredictorVOS compiles the prompt encoder (sam2/sam2_video_predictor.py).
COMPILE_OPTIONS = {"mode": "max-autotune", "fullgraph": True, "dynamic": False}
# Output agreement with the oracle, per output dtype: the sparse output elementwise,
# |ours - oracle| <= atol + rtol |oracle| (positions in fp32, rounded once: half an ulp is 2^-9
# relative in bf16); the dense output of a mask, a network of convolutions and LayerNorms run in
# the module's dtype, as max |ours - oracle| <= atol + DENSE_RTOL max |oracle| (bf16: ~4% seen).
TOLERANCES = {"float32": (1e-4, 1e-5), "bfloat16": (1e-3, 2.0 ** -7), "float16": (1e-3, 2.0 ** -9)}
DENSE_RTOL = {"float32": 1e-5, "bfloat16": 2.0 ** -3, "float16": 2.0 ** -5}


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    points: int
    boxes: int = 0
    masks: bool = False
    embed_dim: int = 256
    dtype: str = "float32"  # our module's dtype, hence its output dtype: float32, bfloat16, float16

    @property
    def tokens(self) -> int:
        """Sparse tokens per prompt: points, a padding token when there are no boxes, 2 per box."""
        if self.points == 0 and self.boxes == 0:
            return 0
        return self.points + (1 if self.boxes == 0 else 0) + 2 * self.boxes

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def output_bytes(self, dtype: Optional[torch.dtype] = None, tokens: Optional[int] = None) -> int:
        """Bytes of the outputs the forward materialises in ``dtype`` (default: the case's):
        sparse [B, T, C] (T: ``tokens``, default the case's), and the dense [B, C, H, W] when a
        mask is given (without one it is an expanded view of a parameter: no bytes)."""
        itemsize = torch.empty((), dtype=dtype or self.torch_dtype).element_size()
        dense = self.batch * self.embed_dim * EMB_SIZE[0] * EMB_SIZE[1] if self.masks else 0
        tokens = self.tokens if tokens is None else tokens
        return (self.batch * tokens * self.embed_dim + dense) * itemsize

    def inputs(self, device, seed: int = 0):
        """(points, boxes, masks) as SAM-2 passes them: coords [B, N, 2] in pixels, int32 labels
        [B, N] in {0, 1}, boxes [B, 4] for K = 1 else [B, K, 4], masks [B, 1, 4H, 4W]."""
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


def case_name(batch, points, boxes=0, masks=False, embed_dim=256, dtype="float32") -> str:
    return (f"b{batch}-n{points}" + (f"-k{boxes}" if boxes else "") + ("-mask" if masks else "")
            + (f"-c{embed_dim}" if embed_dim != 256 else "") + ("" if dtype == "float32" else f"-{dtype}"))


def make(batch, points, boxes=0, masks=False, embed_dim=256, dtype="float32", name=None) -> Case:
    return Case(name or case_name(batch, points, boxes, masks, embed_dim, dtype),
                batch, points, boxes, masks, embed_dim, dtype)


# ----------------------------------------------------------------------------- named case sets
# Targets for our PyTorch path on a CPU (embed_dim 256, no_grad), per case: minimum speedup over
# Meta's eager module, and most bytes allocated per call over the output's bytes. The foundation
# issue's (forward(points=...); Meta's code allocates ~15x), and the mask issue's for 64 masks of
# 256x256 (`run --batch 64 --points 0 --boxes 0 --masks`; Meta's allocates ~2.1x).
FOUNDATION = [make(1, 1, name="click"), make(16384, 4, name="amg-16384x4")]
MASKS = make(64, 0, masks=True)
TARGETS = {"click": (2.0, 1.5), "amg-16384x4": (5.0, 1.5), MASKS.name: (3.0, 1.2)}

# `sam2-prompt-bench` with no arguments: < 60 s on a 2-core CPU.
QUICK = FOUNDATION + [make(64, 4, name="batch-64x4"), make(1024, 4, name="batch-1024x4"),
                      make(1024, 0, boxes=1, name="box-1024"),
                      make(1024, 4, boxes=1, name="points+box-1024")]

# pytest-benchmark (bench/test_bench_*.py): the quick cases up to B = 1024 by default, plus these
# with --bench-large.
SMALL = [c for c in QUICK if c.batch <= 1024]
LARGE = [make(16384, 4), make(65536, 4), make(16384, 16)]

SWEEP_DEFAULTS = {"batches": (1, 8, 64, 1024, 16384, 65536), "points": (1, 4, 16), "boxes": (0, 1),
                  "masks": (False,), "embed_dims": (256,), "dtypes": ("float32",)}


def sweep(batches=SWEEP_DEFAULTS["batches"], points=SWEEP_DEFAULTS["points"],
          boxes=SWEEP_DEFAULTS["boxes"], masks=SWEEP_DEFAULTS["masks"],
          embed_dims=SWEEP_DEFAULTS["embed_dims"], dtypes=SWEEP_DEFAULTS["dtypes"]) -> List[Case]:
    """The grid of cases (prompts x points x boxes x masks x width x dtype), minus empty prompts."""
    return [make(b, n, k, m, c, d)
            for b, n, k, m, c, d in itertools.product(batches, points, boxes, masks, embed_dims, dtypes)
            if n or k or m]


# ----------------------------------------------------------------------------- backends
def upstream_class():
    """Meta's PromptEncoder, or None when sam2 is not installed."""
    try:
        from sam2.modeling.sam.prompt_encoder import PromptEncoder as MetaPromptEncoder
    except ImportError:
        return None
    return MetaPromptEncoder


def ecosystem(backend: str) -> Optional[str]:
    """"transformers" or "ultralytics" for that ecosystem's rows, else None (Meta's and ours)."""
    family = backend.split("-")[0]
    return family if family in ECOSYSTEMS else None


def baseline(backend: str) -> str:
    """The row a backend's speedup is measured against: its ecosystem's module, else Meta's."""
    return ecosystem(backend) or "upstream"


@functools.lru_cache(maxsize=None)
def _ecosystem_module(family: str):
    """(their encoder class, None) or (None, why it cannot be imported)."""
    try:
        if family == "transformers":
            from transformers.models.sam2.modeling_sam2 import Sam2PromptEncoder as theirs
        else:
            from ultralytics.models.sam.modules.encoders import PromptEncoder as theirs
    except Exception as err:  # noqa: BLE001 - any failure to import means no rows, with its reason
        hint = {"transformers": "pip install 'transformers>=5'",
                "ultralytics": "pip install 'ultralytics>=8.4' (it reads torchvision's version "
                               "at import)"}[family]
        return None, f"{family} cannot be imported ({type(err).__name__}: {err}; {hint})"
    return theirs, None


def unavailable(case: Case, backend: str, device) -> Optional[str]:
    """Why the backend cannot run this case here, or None if it can."""
    if backend not in BACKENDS + ECOSYSTEM_BACKENDS:
        return f"unknown backend {backend!r}; choose from {', '.join(BACKENDS + ECOSYSTEM_BACKENDS)}"
    family = ecosystem(backend)
    if family is not None:
        reason = _ecosystem_module(family)[1]
        if reason is not None:
            return reason
        if case.boxes > 1:
            return f"{family}' encoder takes one box per prompt; K > 1 is ours only"
        if family == "transformers" and case.tokens == 0:
            return "transformers' encoder gives no sparse output (None) without points or boxes"
    if backend.startswith("upstream"):
        if upstream_class() is None:
            return "Meta's sam2 is not installed (pip install sam2==1.1.0)"
        if case.boxes > 1:
            return "Meta's encoder takes one box per prompt (boxes [B, 4]); K > 1 is ours only"
    if backend == "triton" or backend.endswith("-triton"):
        if torch.device(device).type != "cuda":
            return "the Triton kernels run on CUDA devices (this run is on the CPU)"
        from sam2_prompt import ops

        return ops.triton_unavailable_reason(torch.device(device), case.torch_dtype)
    return None


def seeded_state(case: Case) -> Tuple[Optional[torch.nn.Module], Dict[str, torch.Tensor]]:
    """(Meta's encoder or None, the state dict every backend loads): seed 0, every parameter drawn
    from N(0, 1) so the learned embeddings are non-trivial, then rounded through the case's dtype
    so that Meta's fp32 module and ours in bf16/fp16 hold the same values (the Gaussian included:
    a bf16 Gaussian alone moves the angles by ~0.05 rad). Without sam2, our module's state."""
    meta_cls = upstream_class()
    torch.manual_seed(0)
    if meta_cls is None:
        module = PromptEncoder(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS, backend="torch")
    else:
        module = meta_cls(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS)
    with torch.no_grad():
        for param in module.parameters():
            torch.nn.init.normal_(param)
        for value in module.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.to(case.torch_dtype))
    return (module if meta_cls is not None else None), module.state_dict()


def build(case: Case, backend: str, device, compile_options: Optional[dict] = None) -> Optional[Callable]:
    """``forward(points, boxes, masks)`` for the backend, or None if it cannot run here.

    Meta's module keeps fp32 (a bf16 Meta module raises a dtype mismatch); ours is cast to the
    case's dtype. ``*-compiled`` backends are ``torch.compile(module.forward, **COMPILE_OPTIONS)``."""
    if unavailable(case, backend, device) is not None:
        return None
    upstream, state = seeded_state(case)
    family = ecosystem(backend)
    if family is not None:
        return _build_ecosystem(case, family, backend, state, device)
    if backend.startswith("upstream"):
        module = upstream.to(device).eval()
    else:
        module = PromptEncoder(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS,
                               backend="triton" if backend == "triton" else "torch")
        module.load_state_dict(state)
        module = module.to(device=device, dtype=case.torch_dtype).eval()
    forward = module.forward
    if backend.endswith("-compiled"):
        forward = torch.compile(forward, **(COMPILE_OPTIONS if compile_options is None else compile_options))
    return forward


def _build_ecosystem(case: Case, family: str, backend: str, state, device) -> Callable:
    """Their module in fp32 (as Meta's row), or our drop-in for it in the case's dtype, with the
    seeded weights (transformers' keys through sam2_prompt.hf's table)."""
    path = backend[len(family) + 1:] or None  # "torch", "triton", or None: theirs
    theirs = _ecosystem_module(family)[0]
    if family == "transformers":
        from transformers.models.sam2.configuration_sam2 import Sam2PromptEncoderConfig

        from sam2_prompt import hf

        config = Sam2PromptEncoderConfig(hidden_size=case.embed_dim, image_size=IMAGE[0],
                                         patch_size=IMAGE[0] // EMB_SIZE[0],
                                         mask_input_channels=MASK_CHANS)
        module = theirs(config) if path is None else hf.Sam2PromptEncoder(config, backend=path)
        state = hf.state_dict_from_meta(state)
    else:
        from sam2_prompt.ultralytics import UltralyticsPromptEncoder

        if path is None:
            module = theirs(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS)
        else:
            module = UltralyticsPromptEncoder(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS, backend=path)
    module.load_state_dict(state)
    dtype = torch.float32 if path is None else case.torch_dtype
    return module.to(device=device, dtype=dtype).eval().forward


def backend_inputs(case: Case, backend: str, device, seed: int = 0) -> tuple:
    """The case's inputs (Case.inputs) in the backend's convention, converted here, before any
    timing. transformers: (input_points [B, 1, N, 2], input_labels [B, 1, N] int64 as its
    processor makes them, input_boxes [B, 1, 4], input_masks [B, 1, 4H, 4W]): B images of one
    prompt each; the others take Meta's (points, boxes, masks)."""
    points, boxes, masks = case.inputs(device, seed)
    if ecosystem(backend) != "transformers":
        return points, boxes, masks
    coords, labels = points if points is not None else (None, None)
    return (None if coords is None else coords[:, None],
            None if labels is None else labels[:, None].long(),
            None if boxes is None else boxes.reshape(case.batch, 1, 4), masks)


def tokens(case: Case, backend: str) -> int:
    """Sparse tokens per prompt in the backend's output: transformers' boxes add a not_a_point
    token each (its output is [B, 1, T, C])."""
    if ecosystem(backend) == "transformers" and case.boxes:
        return case.points + 3 * case.boxes
    return case.tokens


# ----------------------------------------------------------------------------- agreement
def oracle(case: Case, device, backend: str = "upstream") -> Tuple[str, Tuple[torch.Tensor, torch.Tensor]]:
    """(name, (sparse, dense)) that the backend must reproduce. Meta's and our rows: Meta's eager
    fp32 module when it can run the case, else our PyTorch path in fp64 (the reference, computed
    in fp64). An ecosystem's rows: that ecosystem's own module, eager fp32, on its inputs."""
    family = ecosystem(backend)
    if family is not None:
        with torch.no_grad():
            outputs = build(case, family, device)(*backend_inputs(case, family, device))
        return f"{family} eager fp32", keep(outputs)
    args = case.inputs(device)
    with torch.no_grad():
        if unavailable(case, "upstream", device) is None:
            forward = build(case, "upstream", device)  # Meta's module is fp32 whatever the case's dtype
            name = "upstream eager fp32"
        else:
            _, state = seeded_state(case)
            module = PromptEncoder(case.embed_dim, EMB_SIZE, IMAGE, MASK_CHANS, backend="torch")
            module.load_state_dict(state)
            forward = module.to(device=device, dtype=torch.float64).eval().forward
            args = tuple(_to_float64(a) for a in args)
            name = "sam2_prompt reference fp64"
        outputs = forward(*args)
    return name, keep(outputs)


def keep(outputs) -> Tuple[torch.Tensor, ...]:
    """Copies of a forward's outputs that later calls cannot overwrite (CUDA-graph replays do);
    a batch dimension broadcast with stride 0 (the dense output without a mask) stays a view of
    one copied item, so no [B, C, H, W] tensor is made."""
    copies = []
    for out in outputs:
        out = out.detach()
        if out.dim() and out.stride(0) == 0:
            copies.append(out[:1].clone().expand(out.shape))
        else:
            copies.append(out.clone())
    return tuple(copies)


def _to_float64(arg):
    if arg is None:
        return None
    if isinstance(arg, tuple):
        return arg[0].double(), arg[1]
    return arg.double()


class OutputMismatch(RuntimeError):
    """A backend's output differs from the oracle's: the benchmark would compare different work."""


def check_agreement(case: Case, backend: str, outputs, expected) -> float:
    """Max |difference| of (sparse, dense) from the oracle's; raises OutputMismatch beyond the
    dtype's tolerance or on a shape mismatch."""
    worst = 0.0
    for what, got, want in zip(("sparse", "dense"), outputs, expected):
        if tuple(got.shape) != tuple(want.shape):
            raise OutputMismatch(f"{case.name} / {backend}: {what} output has shape {tuple(got.shape)}, "
                                 f"the oracle's is {tuple(want.shape)}")
        if got.numel() == 0:
            continue
        dtype = str(got.dtype).replace("torch.", "")
        atol, rtol = TOLERANCES[dtype]
        if what == "dense":
            atol, rtol = atol + DENSE_RTOL[dtype] * _max_abs(want), 0.0
        largest, excess = _compare(got, want.to(got.device), atol, rtol)
        worst = max(worst, largest)
        if not excess <= 0:  # also catches NaN
            raise OutputMismatch(
                f"{case.name} / {backend}: {what} output differs from the oracle by up to "
                f"{largest:.3g} (tolerance {atol:g} + {rtol:g} x |oracle|): "
                "the rows would time different computations")
    return worst


CHUNK = 1 << 22  # elements compared at a time: outputs can be several GB


def _batches(t: torch.Tensor):
    """Slices of the batch dimension of about CHUNK elements."""
    step = max(1, CHUNK // max(1, t[0].numel()))
    return [t[start:start + step] for start in range(0, t.shape[0], step)]


def _max_abs(t: torch.Tensor) -> float:
    if t.stride(0) == 0:  # a broadcast batch: one item
        t = t[:1]
    return max(part.abs().max().item() for part in _batches(t))


def _compare(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float):
    """(max |got - want|, max of |got - want| - (atol + rtol |want|)) in fp64, a slice of the batch
    at a time; a batch dimension broadcast in both (the dense output without a mask) once."""
    if got.stride(0) == 0 and want.stride(0) == 0:
        got, want = got[:1], want[:1]
    largest, excess = 0.0, -float("inf")
    for g, w in zip(_batches(got), _batches(want)):
        g, w = g.double(), w.double()
        diff = (g - w).abs()
        chunk_largest = diff.max().item()
        chunk_excess = (diff - (atol + rtol * w.abs())).max().item()
        if chunk_excess != chunk_excess:  # NaN: max() would drop it
            return float("nan"), float("nan")
        largest, excess = max(largest, chunk_largest), max(excess, chunk_excess)
    return largest, excess
