"""Never stale: the mutation matrix, copies, pickles, returned tensors and the cache bound.

Every way a user changes an encoder's weights or sizes (rows of MUTATIONS), on both backends, for
every output, after the encoder has been warmed up (its caches filled), compared with Meta's
module after the same change. ``sam2_prompt/cache.py`` keeps the PyTorch path's folded Fourier
weights and the dense grid; whoever adds something kept between calls adds a row here for every
source and attribute it folds in.

The issue's numbered cases map to: 1 -> the ``.data``, vector_to_parameters, half().float() and
Gaussian rows; 2 -> the fused optimizer rows; 3 -> ``input_image_size`` (and the size rows);
4 -> test_copies_compute_from_their_own_weights and test_pickle_is_small; 5 ->
test_returned_tensors_are_never_shared.
"""

import copy
import io
import pickle
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from helpers import assert_close, random_boxes, random_points, twins
from sam2_prompt import PromptEncoder, cache

EMBED, EMB, IMAGE = 32, (8, 8), (128, 128)


def fresh(name: str, shape) -> torch.Tensor:
    """Deterministic new values for the tensor called ``name`` (the same for both twins)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))


def fresh_state(module) -> dict:
    return {k: fresh(k, v.shape) for k, v in module.state_dict().items()}


def set_grads(module):
    for name, param in module.named_parameters():
        param.grad = fresh("grad." + name, param.shape)


def _for_each_param(fn):
    def mutate(module):
        for name, param in module.named_parameters():
            fn(name, param)
    return mutate


def _gaussian(module):
    return module.pe_layer.positional_encoding_gaussian_matrix


def _set_data(name, param):
    param.data = fresh(name, param.shape)


def _optimizer_step(make):
    def mutate(module):
        set_grads(module)
        make(module.parameters()).step()
    return mutate


def _scale_in_place(module):
    with torch.no_grad():
        for tensor in [*module.parameters(), _gaussian(module)]:
            tensor.mul_(1.5)


def _vector_to_parameters(module):
    vector = nn.utils.parameters_to_vector(module.parameters())
    nn.utils.vector_to_parameters(vector * 1.5 + 0.25, module.parameters())


def _set_gaussian_data(module):
    _gaussian(module).data = fresh("gaussian", _gaussian(module).shape)


def _gaussian_as_parameter(module):
    value = fresh("gaussian", _gaussian(module).shape)
    del module.pe_layer._buffers["positional_encoding_gaussian_matrix"]
    module.pe_layer.positional_encoding_gaussian_matrix = nn.Parameter(value, requires_grad=False)


class Doubled(nn.Module):
    def forward(self, weight):
        return 2.0 * weight + 0.5


def _parametrize(module):
    parametrize.register_parametrization(module.point_embeddings[1], "weight", Doubled())
    parametrize.register_parametrization(module.not_a_point_embed, "weight", Doubled())
    parametrize.register_parametrization(module.pe_layer, "positional_encoding_gaussian_matrix",
                                         Doubled())


def _sizes(input_size=None, embedding_size=None):
    def mutate(module):
        if input_size is not None:
            module.input_image_size = input_size
        if embedding_size is not None:  # as ultralytics' set_imgsz: the mask size follows
            module.image_embedding_size = embedding_size
            module.mask_input_size = tuple(4 * s for s in embedding_size)
    return mutate


def _to_empty_then_load(module):
    state = fresh_state(module)
    module.to_empty(device="cpu")
    module.load_state_dict(state)


MUTATIONS = {
    "param.data = t": _for_each_param(_set_data),
    "param.data.copy_": _for_each_param(lambda n, p: p.data.copy_(fresh(n, p.shape))),
    "EMA: param.data.mul_.add_": _for_each_param(
        lambda n, p: p.data.mul_(0.5).add_(fresh(n, p.shape), alpha=0.5)),
    "no_grad in-place": _scale_in_place,
    "vector_to_parameters": _vector_to_parameters,
    "point_embeddings.half().float()": lambda m: m.point_embeddings.half().float(),
    "module.half().float()": lambda m: m.half().float(),
    "gaussian.data = t": _set_gaussian_data,
    "gaussian.data.copy_": lambda m: _gaussian(m).data.copy_(fresh("g", _gaussian(m).shape)),
    "gaussian as nn.Parameter": _gaussian_as_parameter,
    "load_state_dict": lambda m: m.load_state_dict(fresh_state(m)),
    "load_state_dict(assign=True)": lambda m: m.load_state_dict(fresh_state(m), assign=True),
    "AdamW(fused=True) step": _optimizer_step(lambda ps: torch.optim.AdamW(ps, lr=0.5, fused=True)),
    "SGD(fused=True) step": _optimizer_step(lambda ps: torch.optim.SGD(ps, lr=0.5, fused=True)),
    "Adam(foreach=True) step": _optimizer_step(lambda ps: torch.optim.Adam(ps, lr=0.5, foreach=True)),
    "register_parametrization": _parametrize,
    "to_empty then load_state_dict": _to_empty_then_load,
    "input_image_size": _sizes(input_size=(96, 160)),
    "image_embedding_size": _sizes(embedding_size=(6, 10)),
    "all sizes (set_imgsz)": _sizes(input_size=(64, 64), embedding_size=(4, 4)),
}


def outputs(model) -> dict:
    """Every output the encoder serves, from fixed prompts (masks sized for the model)."""
    points = random_points(3, 4, image=IMAGE, margin=8)
    boxes = random_boxes(3, image=IMAGE)
    masks = torch.randn((3, 1, *model.mask_input_size), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        served = {
            "points": model(points, None, None)[0],
            "boxes": model(None, boxes, None)[0],
            "points+boxes": model(points, boxes, None)[0],
            "mask": model(None, None, masks)[1],
            "no-mask dense": model(points, None, None)[1],
            "get_dense_pe": model.get_dense_pe(),
            "pe_layer(size)": model.pe_layer((5, 7)),
        }
        # Copies: the no-mask dense output is (as upstream's) a view of no_mask_embed's weight.
        return {key: value.clone() for key, value in served.items()}


def assert_outputs_equal(ours: dict, theirs: dict):
    for key in theirs:
        assert_close(ours[key], theirs[key].to(ours[key].dtype), atol=2e-5)


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutation_matrix(upstream, backend, mutation):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    before = outputs(theirs)
    assert_outputs_equal(outputs(ours), before)  # ours is warm: its caches are filled
    assert_outputs_equal(outputs(ours), before)
    MUTATIONS[mutation](theirs)
    MUTATIONS[mutation](ours)
    after = outputs(theirs)
    moved = [k for k in after if after[k].shape != before[k].shape
             or (after[k] - before[k]).abs().max() > 1e-4]  # > 5x the parity tolerance
    assert moved, f"{mutation} changed none of upstream's outputs: the row tests nothing"
    assert_outputs_equal(outputs(ours), after)


def test_sizes_are_keys_of_the_grid(upstream):
    """Two sizes alternating (a pipeline serving two resolutions) never swap grids."""
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE)
    for size in [(8, 8), (6, 10), (8, 8), (10, 6), (6, 10)]:
        assert_close(ours.pe_layer(size), theirs.pe_layer(size))
        for model in (theirs, ours):
            model.input_image_size = (16 * size[0], 16 * size[1])
        points = random_points(2, 3, image=IMAGE)
        with torch.no_grad():
            assert_close(ours(points, None, None)[0], theirs(points, None, None)[0])


@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle", "torch.save"])
def test_copies_compute_from_their_own_weights(upstream, backend, how):
    """Case 4: warm, load a new checkpoint, then copy: the copy serves the new weights."""
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    outputs(ours)
    state = fresh_state(theirs)
    theirs.load_state_dict(state)
    ours.load_state_dict(state)
    if how == "deepcopy":
        clone = copy.deepcopy(ours)
    elif how == "copy":
        clone = copy.copy(ours)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(ours))
    else:
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    if how != "copy":  # a shallow copy shares its submodules (and their caches), as nn.Module does
        assert len(clone._derived) == 0 and len(clone.pe_layer._derived) == 0
    assert_outputs_equal(outputs(clone), outputs(theirs))
    # The copy's own later changes are its own: the original is untouched by them.
    if how != "copy":
        clone.load_state_dict({k: 2 * v for k, v in state.items()})
        assert_outputs_equal(outputs(ours), outputs(theirs))


def test_pickle_is_small(upstream):
    """Case 4: a warm module pickles to no more than twice Meta's (no derived tensors inside)."""
    theirs, ours = twins(upstream[0])  # SAM-2's sizes: the cached grid alone would be 4 MB
    points = random_points(4, 2)
    with torch.no_grad():
        ours(points, None, None)
    ours.get_dense_pe()
    assert len(ours.pe_layer._derived) == 1 and len(ours._derived) == 1
    ours_bytes, theirs_bytes = len(pickle.dumps(ours)), len(pickle.dumps(theirs))
    assert ours_bytes <= 2 * theirs_bytes, (ours_bytes, theirs_bytes)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    saved = buffer.tell()
    buffer = io.BytesIO()
    torch.save(theirs, buffer)
    assert saved <= 2 * buffer.tell(), (saved, buffer.tell())


def test_returned_tensors_are_never_shared(upstream, backend):
    """Case 5: a caller's in-place edit of a returned tensor changes no later result."""
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE, backend=backend)
    points = random_points(2, 3, image=IMAGE)
    for _ in range(2):
        ours.get_dense_pe().mul_(0.0).add_(7.0)
        ours.pe_layer((5, 7)).fill_(3.0)
        with torch.no_grad():
            ours(points, None, None)[0].fill_(1.0)
    assert_close(ours.get_dense_pe(), theirs.get_dense_pe())
    assert_close(ours.pe_layer((5, 7)), theirs.pe_layer((5, 7)))
    with torch.no_grad():
        assert_close(ours(points, None, None)[0], theirs(points, None, None)[0])


def test_cache_is_bounded():
    """200 grid sizes leave at most MAX_ENTRIES grids inside the module."""
    ours = PromptEncoder(256, (64, 64), (1024, 1024), 16, backend="torch")
    for size in range(1, 201):
        ours.pe_layer((size, 64))
    assert len(ours.pe_layer._derived) == cache.MAX_ENTRIES
    kept = sum(value.numel() * value.element_size()
               for _, value in ours.pe_layer._derived._entries.values())
    assert kept <= cache.MAX_ENTRIES * 256 * 200 * 64 * 4


def test_validation_is_by_value_not_by_version():
    """Bits that change with no version bump (a .data write), and bits that change back, are seen;
    equal bits are reused."""
    derived = cache.DerivedCache()
    source = torch.randn(2, 16)
    builds = []

    def build():
        builds.append(source.clone())
        return source.sum()

    derived.get("k", (source,), build)
    derived.get("k", (source,), build)
    assert len(builds) == 1
    source.data[0, 0] += 1.0  # no version bump
    assert derived.get("k", (source,), build) == source.sum()
    assert len(builds) == 2
    positive, negative = torch.zeros(4), torch.zeros(4)
    negative[0] = -0.0  # equal values, other bits: sin(-0.0) is -0.0
    derived.get("zero", (positive,), lambda: "+0")
    assert derived.get("zero", (negative,), lambda: "-0") == "-0"
    assert derived.get("k", (source.double(),), build) is not None  # a new dtype is a miss
    assert len(builds) == 3


def test_nothing_is_cached_on_other_devices_or_when_tracing(upstream):
    theirs, ours = twins(upstream[0], EMBED, EMB, IMAGE)
    with torch.device("meta"):
        meta_model = PromptEncoder(EMBED, EMB, IMAGE, 16)
    meta_model.get_dense_pe()
    assert len(meta_model.pe_layer._derived) == 0
    torch.func.functional_call(ours, dict(ours.named_buffers()), (
        random_points(1, 2, image=IMAGE), None, None))
    compiled = torch.compile(ours.get_dense_pe, backend="eager", fullgraph=True)
    assert_close(compiled(), theirs.get_dense_pe())
    assert len(ours.pe_layer._derived) == 0
