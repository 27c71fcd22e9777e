"""The drop-in contract: same construction, state dict, methods and results as Meta's PromptEncoder.

Every result test runs on both backends (the ``backend`` fixture): PyTorch, and Triton under the
interpreter on CPU tensors.
"""

import pytest
import torch
from torch import nn

from helpers import EMBED, IMAGE, MASK_CHANS, assert_close, random_boxes, random_points, twins
from sam2_prompt import PositionEmbeddingRandom, PromptEncoder


def run_both(theirs, ours, *args):
    with torch.no_grad():
        return theirs(*args), ours(*args)


# ----------------------------------------------------------------------------- construction
def test_seeded_construction_consumes_rng_like_upstream(upstream):
    torch.manual_seed(123)
    theirs = upstream[0](EMBED, (64, 64), IMAGE, MASK_CHANS)
    after_theirs = torch.randn(3)
    torch.manual_seed(123)
    ours = PromptEncoder(EMBED, (64, 64), IMAGE, MASK_CHANS)
    after_ours = torch.randn(3)
    assert torch.equal(after_theirs, after_ours)
    for (k1, v1), (k2, v2) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_position_embedding_random_construction(upstream):
    for scale in (None, -1.0, 0.0, 2.5):
        torch.manual_seed(7)
        theirs = upstream[1](32, scale)
        torch.manual_seed(7)
        ours = PositionEmbeddingRandom(32, scale)
        assert list(ours.state_dict()) == ["positional_encoding_gaussian_matrix"]
        assert torch.equal(theirs.positional_encoding_gaussian_matrix,
                           ours.positional_encoding_gaussian_matrix)
    assert PositionEmbeddingRandom().positional_encoding_gaussian_matrix.shape == (2, 64)


def test_state_dict_keys_shapes_and_strict_round_trip(upstream):
    theirs, ours = twins(upstream[0])
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    fresh_theirs = upstream[0](EMBED, (64, 64), IMAGE, MASK_CHANS)
    fresh_theirs.load_state_dict(ours.state_dict(), strict=True)
    fresh_ours = PromptEncoder(EMBED, (64, 64), IMAGE, MASK_CHANS)
    fresh_ours.load_state_dict(theirs.state_dict(), strict=True)
    assert all(torch.equal(fresh_ours.state_dict()[k], a[k]) for k in a)


def test_attributes_and_submodules_match(upstream):
    theirs, ours = twins(upstream[0], emb_size=(32, 48), image=(512, 768))
    for name in ("embed_dim", "input_image_size", "image_embedding_size",
                 "num_point_embeddings", "mask_input_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert isinstance(ours.point_embeddings, nn.ModuleList) and len(ours.point_embeddings) == 4
    assert all(isinstance(e, nn.Embedding) and e.weight.shape == (1, EMBED)
               for e in ours.point_embeddings)
    assert isinstance(ours.pe_layer, PositionEmbeddingRandom)
    assert [type(m).__name__ for m in ours.mask_downscaling] == \
        [type(m).__name__ for m in theirs.mask_downscaling]
    assert ours._get_device() == theirs._get_device()
    c, l = random_points(3, 2)
    for args in (((c, l), None, None), (None, random_boxes(5), None),
                 (None, None, torch.zeros(4, 1, 128, 192)), (None, None, None)):
        assert ours._get_batch_size(*args) == theirs._get_batch_size(*args)


# ----------------------------------------------------------------------------- forward parity
@pytest.mark.parametrize("batch,num", [(1, 1), (3, 5), (2, 0), (0, 3), (4, 16)])
def test_points_parity(upstream, backend, batch, num):
    theirs, ours = twins(upstream[0], backend=backend)
    points = random_points(batch, num)
    (s1, d1), (s2, d2) = run_both(theirs, ours, points, None, None)
    assert_close(s2, s1)
    assert_close(d2, d1, atol=0)
    assert s2.shape == (batch, num + 1, EMBED)


@pytest.mark.parametrize("box_shape", ["B4", "B14"])
def test_boxes_and_points_with_boxes_parity(upstream, backend, box_shape):
    theirs, ours = twins(upstream[0], backend=backend)
    boxes = random_boxes(3, boxes=None if box_shape == "B4" else 1)
    points = random_points(3, 4)
    for args in ((None, boxes, None), (points, boxes, None)):
        (s1, d1), (s2, d2) = run_both(theirs, ours, *args)
        assert_close(s2, s1)
        assert_close(d2, d1, atol=0)
    assert_close(ours._embed_boxes(boxes), theirs._embed_boxes(boxes))


def test_masks_and_no_prompt_parity(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    masks = torch.randn(2, 1, 256, 256)
    (s1, d1), (s2, d2) = run_both(theirs, ours, None, None, masks)
    assert s2.shape == s1.shape == (2, 0, EMBED) and s2.dtype == s1.dtype
    assert_close(d2, d1, atol=2e-5, rtol=1e-5)
    (s1, d1), (s2, d2) = run_both(theirs, ours, random_points(2, 3), random_boxes(2), masks)
    assert_close(s2, s1)
    assert_close(d2, d1, atol=2e-5, rtol=1e-5)
    (s1, d1), (s2, d2) = run_both(theirs, ours, None, None, None)
    assert s2.shape == s1.shape == (1, 0, EMBED)
    assert_close(d2, d1, atol=0)
    assert d2.stride() == d1.stride()  # an expanded view of no_mask_embed, like upstream


@pytest.mark.parametrize("labels", [
    torch.tensor([[-1, 0, 1, 2, 3, 4, 7, -2]]),
    torch.tensor([[-1.0, 0.0, 1.0, 2.0, 3.0, 0.5, 2.5, 1e9]]),
    torch.tensor([[-1, 0, 1, 2, 3, 4, 9, -5]], dtype=torch.int64),
])
def test_unusual_labels(upstream, backend, labels):
    theirs, ours = twins(upstream[0], backend=backend)
    coords = random_points(1, labels.shape[1])[0]
    (s1, _), (s2, _) = run_both(theirs, ours, (coords, labels), None, None)
    assert_close(s2, s1)
    assert_close(ours._embed_points(coords, labels, pad=False),
                 theirs._embed_points(coords, labels, pad=False))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float16, torch.float32,
                                   torch.float64])
def test_coordinate_dtypes(upstream, backend, dtype):
    # Integer-valued coordinates below 1024 are exact in every dtype, so upstream's fp16 arithmetic
    # (which rounds (x + 0.5) and x / 1024 to fp16) agrees with our fp32 arithmetic here.
    theirs, ours = twins(upstream[0], backend=backend)
    coords, labels = random_points(3, 4)
    coords = coords.floor().clamp(0, 1023).to(dtype)
    (s1, _), (s2, _) = run_both(theirs, ours, (coords, labels), None, None)
    assert_close(s2, s1)


def test_non_contiguous_inputs(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    coords = random_points(6, 5)[0].transpose(0, 1).contiguous().transpose(0, 1)[::2]
    labels = random_points(5, 6)[1].t()[::2]
    boxes = random_boxes(6, boxes=2)[::2, 1]
    masks = torch.randn(3, 1, 256, 512)[..., ::2]
    assert not (coords.is_contiguous() or labels.is_contiguous() or boxes.is_contiguous()
                or masks.is_contiguous())
    (s1, d1), (s2, d2) = run_both(theirs, ours, (coords, labels), boxes, masks)
    assert_close(s2, s1)
    assert_close(d2, d1, atol=2e-5, rtol=1e-5)


def test_nan_coordinates_with_padding_label_give_exact_not_a_point(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    coords = torch.tensor([[[float("nan"), 3.0], [10.0, float("inf")], [5.0, 6.0]]])
    labels = torch.tensor([[-1, -1, 1]])
    (s1, _), (s2, _) = run_both(theirs, ours, (coords, labels), None, None)
    not_a_point = ours.not_a_point_embed.weight[0]
    assert torch.equal(s2[0, 0], not_a_point) and torch.equal(s2[0, 1], not_a_point)
    assert torch.equal(s2[0, 3], not_a_point)  # the padding token
    assert_close(s2, s1)


@pytest.mark.parametrize("embed_dim,emb_size,image", [
    (64, (64, 64), (1024, 1024)), (96, (32, 48), (512, 768)), (256, (48, 32), (768, 512)),
])
def test_other_embed_dims_and_non_square(upstream, backend, embed_dim, emb_size, image):
    theirs, ours = twins(upstream[0], embed_dim, emb_size, image, backend=backend)
    points = random_points(3, 4, image=image, margin=64)
    boxes = random_boxes(3, image=image)
    masks = torch.randn(3, 1, 4 * emb_size[0], 4 * emb_size[1])
    (s1, d1), (s2, d2) = run_both(theirs, ours, points, boxes, masks)
    assert_close(s2, s1)
    assert_close(d2, d1, atol=2e-5, rtol=1e-5)
    assert_close(ours.get_dense_pe(), theirs.get_dense_pe())


def test_dense_pe_and_position_embedding_methods(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    assert_close(ours.get_dense_pe(), theirs.get_dense_pe())
    for size in ((64, 64), (7, 13), (1, 1)):
        assert_close(ours.pe_layer(size), theirs.pe_layer(size))
    coords = random_points(2, 5)[0]
    assert_close(ours.pe_layer.forward_with_coords(coords, (1024, 768)),
                 theirs.pe_layer.forward_with_coords(coords, (1024, 768)))
    unit = torch.rand(4, 3, 2)
    assert_close(ours.pe_layer._pe_encoding(unit), theirs.pe_layer._pe_encoding(unit))


def test_embed_methods(upstream, backend):
    theirs, ours = twins(upstream[0], backend=backend)
    coords, labels = random_points(3, 4)
    with torch.no_grad():
        for pad in (True, False):
            assert_close(ours._embed_points(coords, labels, pad), theirs._embed_points(coords, labels, pad))
        masks = torch.randn(2, 1, 256, 256)
        assert_close(ours._embed_masks(masks), theirs._embed_masks(masks), atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- dtypes
def _autocast_cases():
    return [
        ("points", lambda c, l, b, m: ((c, l), None, None)),
        ("points+boxes", lambda c, l, b, m: ((c, l), b, None)),
        ("boxes", lambda c, l, b, m: (None, b, None)),
        ("masks", lambda c, l, b, m: (None, None, m)),
        ("none", lambda c, l, b, m: (None, None, None)),
    ]


@pytest.mark.parametrize("case", _autocast_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_output_dtypes_equal_upstream(upstream, backend, case, autocast):
    theirs, ours = twins(upstream[0], backend=backend)
    c, l = random_points(2, 3)
    args = case[1](c, l, random_boxes(2), torch.randn(2, 1, 256, 256))
    with torch.no_grad(), torch.autocast("cpu", dtype=autocast or torch.bfloat16,
                                         enabled=autocast is not None):
        (s1, d1), (s2, d2) = theirs(*args), ours(*args)
        assert (s2.dtype, d2.dtype) == (s1.dtype, d1.dtype)
        assert ours.get_dense_pe().dtype == theirs.get_dense_pe().dtype
        boxes = random_boxes(2)
        assert ours._embed_boxes(boxes).dtype == theirs._embed_boxes(boxes).dtype
        assert ours._embed_points(c, l, True).dtype == theirs._embed_points(c, l, True).dtype
