"""replace_prompt_encoder on Meta's real SAM2Base and SAM2ImagePredictor (sam2.1 hiera-t, random
weights, CPU): the mask decoder's outputs are unchanged, on both backends; what is copied, what is
refused."""

import copy
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torchvision_standin
from helpers import sam2_tiny
from sam2_prompt import (PromptEncoder, replace_prompt_encoder, restore_prompt_encoder,
                         swapped_prompt_encoder)



@pytest.fixture(scope="module")
def sam2_model(upstream):
    return sam2_tiny()


@pytest.fixture(scope="module")
def image_features(sam2_model):
    image = torch.randn(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = sam2_model.forward_image(image)
    fpn = out["backbone_fpn"]
    return fpn[-1], [fpn[0], fpn[1]]


def prompts():
    gen = torch.Generator().manual_seed(2)
    clicks = {"point_coords": torch.rand(2, 3, 2, generator=gen) * 1024,
              "point_labels": torch.tensor([[1, 0, 1], [1, 1, -1]], dtype=torch.int32)}
    box = torch.tensor([[100.0, 150.0, 600.0, 700.0], [20.0, 30.0, 900.0, 800.0]])
    corners = {"point_coords": box.reshape(2, 2, 2),
               "point_labels": torch.tensor([[2, 3], [2, 3]], dtype=torch.int32)}
    mask = (torch.rand(2, 1, 1024, 1024, generator=gen) > 0.5).float()
    return {"clicks": (clicks, None), "box-corners": (corners, None), "clicks+mask": (clicks, mask)}


def heads(model, features, point_inputs, mask_inputs, multimask):
    backbone, high_res = features
    with torch.no_grad():
        out = model._forward_sam_heads(backbone, point_inputs=point_inputs, mask_inputs=mask_inputs,
                                       high_res_features=high_res, multimask_output=multimask)
    low_res_multimasks, _, ious, low_res_masks, _, _, object_scores = out
    return low_res_multimasks, ious, low_res_masks, object_scores


@pytest.mark.parametrize("prompt", list(prompts()))
def test_sam_heads_unchanged(sam2_model, image_features, backend, prompt):
    # multimask on and off inside one swap: a fresh encoder's first call under the Triton
    # interpreter builds the dense grid (~2 s), later calls hit its cache
    point_inputs, mask_inputs = prompts()[prompt]
    expected = {multimask: heads(sam2_model, image_features, point_inputs, mask_inputs, multimask)
                for multimask in (True, False)}
    with swapped_prompt_encoder(sam2_model, backend=backend):
        assert isinstance(sam2_model.sam_prompt_encoder, PromptEncoder)
        assert sam2_model.sam_prompt_encoder.backend == backend
        actual = {multimask: heads(sam2_model, image_features, point_inputs, mask_inputs, multimask)
                  for multimask in (True, False)}
    assert not isinstance(sam2_model.sam_prompt_encoder, PromptEncoder)  # restored
    for multimask in (True, False):
        names = ("low-res multimasks", "IoUs", "low-res masks", "object scores")
        for name, got, want in zip(names, actual[multimask], expected[multimask]):
            torch.testing.assert_close(got, want, atol=1e-3, rtol=0,
                                       msg=lambda m: f"{name}, multimask={multimask}: {m}")


def test_swap_keeps_state_dict_flags_rng_and_returns_the_model(sam2_model):
    model = copy.deepcopy(sam2_model).train()
    meta = model.sam_prompt_encoder
    meta.point_embeddings.requires_grad_(False)  # a frozen part stays frozen
    meta.mask_downscaling[1].eval()              # a per-module flag is kept
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert replace_prompt_encoder(model, backend="torch") is model
    assert torch.equal(torch.get_rng_state(), rng)  # building ours drew nothing from the user's RNG
    ours = model.sam_prompt_encoder
    assert isinstance(ours, PromptEncoder) and ours.training and ours.backend == "torch"
    assert not ours.mask_downscaling[1].training and ours.mask_downscaling[0].training
    assert [p.requires_grad for p in ours.parameters()] == [
        p.requires_grad for p in meta.parameters()]
    assert list(model.state_dict()) == list(keys)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    assert meta not in list(model.modules())  # kept on ours as a plain attribute only
    checkpoint = {k: v + 1.0 if k.startswith("sam_prompt_encoder.point") else v
                  for k, v in keys.items()}  # a checkpoint of Meta's model loads as it is
    model.load_state_dict(checkpoint, strict=True)
    assert torch.equal(ours.point_embeddings[2].weight,
                       keys["sam_prompt_encoder.point_embeddings.2.weight"] + 1.0)
    model.load_state_dict(keys, strict=True)
    assert replace_prompt_encoder(model, backend="auto").sam_prompt_encoder is ours  # idempotent
    assert ours.backend == "torch"  # "auto" on CPU tensors
    with torch.no_grad():  # fine-tuning happens on ours; restore carries it back
        ours.not_a_point_embed.weight.add_(1.0)
    ours.eval()
    restore_prompt_encoder(model)
    assert model.sam_prompt_encoder is meta and not meta.training
    assert torch.equal(meta.not_a_point_embed.weight,
                       keys["sam_prompt_encoder.not_a_point_embed.weight"] + 1.0)
    with pytest.raises(ValueError, match="restore_prompt_encoder: .*nothing to restore"):
        restore_prompt_encoder(model)


def test_sizes_are_carried_both_ways(sam2_model):
    """Sizes a pipeline set on the encoder (as ultralytics' set_imgsz does) go with the swap, and
    sizes set on ours come back with the restore."""
    holder = nn.Module()
    holder.sam_prompt_encoder = meta = copy.deepcopy(sam2_model.sam_prompt_encoder)
    meta.input_image_size, meta.image_embedding_size, meta.mask_input_size = [512, 512], [32, 32], [128, 128]
    points = (torch.tensor([[[100.0, 200.0], [400.0, 30.0]]]), torch.tensor([[1, 0]]))
    mask = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = meta(points, None, mask)
        replace_prompt_encoder(holder, backend="torch")
        ours = holder.sam_prompt_encoder
        assert [ours.input_image_size, ours.image_embedding_size, ours.mask_input_size] == [
            [512, 512], [32, 32], [128, 128]]
        got = ours(points, None, mask)
    for mine, theirs in zip(got, want):
        torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=0)
    ours.input_image_size, ours.image_embedding_size, ours.mask_input_size = (768, 768), (48, 48), (192, 192)
    restore_prompt_encoder(holder)
    assert holder.sam_prompt_encoder is meta
    assert [meta.input_image_size, meta.image_embedding_size, meta.mask_input_size] == [
        (768, 768), (48, 48), (192, 192)]


def test_swapped_context_leaves_an_already_swapped_model_on_its_backend(sam2_model):
    holder = nn.Module()
    holder.sam_prompt_encoder = copy.deepcopy(sam2_model.sam_prompt_encoder)
    replace_prompt_encoder(holder, backend="torch")
    ours = holder.sam_prompt_encoder
    with swapped_prompt_encoder(holder, backend="auto") as inside:
        assert inside is holder and holder.sam_prompt_encoder is ours
        assert ours._backend_request == "auto"
    assert holder.sam_prompt_encoder is ours and ours._backend_request == "torch"
    with pytest.raises(RuntimeError, match="boom"), swapped_prompt_encoder(sam2_model):
        raise RuntimeError("boom")
    assert not isinstance(sam2_model.sam_prompt_encoder, PromptEncoder)  # restored on error too


# --- Meta's SAM2ImagePredictor. Its module imports torchvision.transforms; where torchvision cannot
# load (not installed, or installed but broken: "operator torchvision::nms does not exist"), the
# predictor module is imported through tests/torchvision_standin.py. Both runs of a comparison go
# through the same transforms.

@pytest.fixture(scope="module")
def image_predictor_cls(upstream):
    if torchvision_standin.torchvision_loads():
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        return SAM2ImagePredictor
    with torchvision_standin.installed():
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    return SAM2ImagePredictor


class _BrokenTorchvision:
    """A torchvision that is installed but fails to load, as a CUDA build does on this CPU torch."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


def test_a_broken_torchvision_counts_as_missing(upstream, monkeypatch):
    for name in ("torchvision", "sam2.sam2_image_predictor", "sam2.utils.transforms"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # put back afterwards
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvision(), *sys.meta_path])
    assert not torchvision_standin.torchvision_loads()
    assert "torchvision" not in sys.modules
    with torchvision_standin.installed():  # what the fixture then does
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    assert SAM2ImagePredictor.__module__ not in sys.modules  # nothing else sees the stand-in
    assert "torchvision" not in sys.modules


@pytest.fixture(scope="module")
def image_predictor(image_predictor_cls, sam2_model):
    with warnings.catch_warnings():  # Meta's transforms use the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        predictor = image_predictor_cls(sam2_model)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)
    image[40:120, 60:160] = (230, 200, 60)
    with torch.no_grad():
        predictor.set_image(image)  # features once; the prompt encoder does not touch them
    return predictor


def test_image_predictor_predict_unchanged(image_predictor, backend):
    clicks = dict(point_coords=np.array([[100.0, 80.0], [200.0, 20.0]]),
                  point_labels=np.array([1, 0]), box=np.array([50.0, 30.0, 170.0, 130.0]), return_logits=True)
    calls = [{**clicks, "multimask_output": multimask} for multimask in (True, False)]

    def run_all():
        outputs = [image_predictor.predict(**kwargs) for kwargs in calls]
        # then a mask prompt from the previous step (SAM's iterative refinement)
        refine = {**calls[1], "mask_input": outputs[0][2][:1]}
        return outputs + [image_predictor.predict(**refine)]

    expected = run_all()
    with swapped_prompt_encoder(image_predictor, backend=backend) as same:
        assert same is image_predictor
        assert isinstance(image_predictor.model.sam_prompt_encoder, PromptEncoder)
        actual = run_all()
    assert not isinstance(image_predictor.model.sam_prompt_encoder, PromptEncoder)
    for call, (got_all, want_all) in enumerate(zip(actual, expected)):
        for name, got, want in zip(("masks", "IoUs", "low-res logits"), got_all, want_all):
            np.testing.assert_allclose(got, want, atol=1e-3, rtol=0, err_msg=f"call {call}: {name}")


def test_any_module_with_the_attribute_and_compiled_wrappers(sam2_model):
    holder = nn.Module()
    holder.sam_prompt_encoder = copy.deepcopy(sam2_model.sam_prompt_encoder).double()
    holder.sam_prompt_encoder.pe_layer.float()  # dtypes are mirrored tensor by tensor
    replace_prompt_encoder(holder, backend="torch")
    ours = holder.sam_prompt_encoder
    assert ours.not_a_point_embed.weight.dtype == torch.float64
    assert ours.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    restore_prompt_encoder(holder)

    compiled = torch.compile(holder)  # lazily: nothing is compiled here
    replace_prompt_encoder(compiled)
    assert isinstance(holder.sam_prompt_encoder, PromptEncoder)
    assert "sam_prompt_encoder" not in compiled._modules  # swapped inside, not on the wrapper
    restore_prompt_encoder(compiled)
    assert not isinstance(holder.sam_prompt_encoder, PromptEncoder)


def test_bad_objects_are_refused(sam2_model):
    with pytest.raises(TypeError, match="model must be a SAM-2 model.*got Linear"):
        replace_prompt_encoder(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="restore_prompt_encoder: model must be .*got str"):
        restore_prompt_encoder("sam2")
    holder = nn.Module()
    holder.sam_prompt_encoder = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"model.sam_prompt_encoder \(Linear\) is not a SAM-2 "
                       r"PromptEncoder: it has no embed_dim, image_embedding_size"):
        replace_prompt_encoder(holder)
    holder.sam_prompt_encoder = copy.deepcopy(sam2_model.sam_prompt_encoder)
    del holder.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    with pytest.raises(TypeError, match="has no pe_layer.positional_encoding_gaussian_matrix"):
        replace_prompt_encoder(holder)
    holder.sam_prompt_encoder = copy.deepcopy(sam2_model.sam_prompt_encoder)
    holder.sam_prompt_encoder.mask_downscaling = nn.Sequential(nn.Identity())
    with pytest.raises(TypeError, match="7-layer"):
        replace_prompt_encoder(holder)
    holder.sam_prompt_encoder = torch.compile(copy.deepcopy(sam2_model.sam_prompt_encoder))
    with pytest.raises(TypeError, match="torch.compile wrapper"):
        replace_prompt_encoder(holder)
    before = sam2_model.sam_prompt_encoder
    for bad in ("cuda", 3):
        with pytest.raises(ValueError, match="backend must be one of"):
            replace_prompt_encoder(sam2_model, backend=bad)
        with pytest.raises(ValueError, match="backend must be one of"):
            with swapped_prompt_encoder(sam2_model, backend=bad):
                pass
    assert sam2_model.sam_prompt_encoder is before  # nothing changed
