"""replace_prompt_encoder on Meta's real SAM2Base (sam2.1 hiera-t, random weights, CPU):
the mask decoder's outputs are unchanged, on both backends."""

import copy

import pytest
import torch
from torch import nn

from sam2_prompt import (PromptEncoder, replace_prompt_encoder, restore_prompt_encoder,
                         swapped_prompt_encoder)

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="module")
def sam2_model(upstream):
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(CONFIG, ckpt_path=None, device="cpu", mode="eval")
    with torch.no_grad():  # learned prompt embeddings that are not all alike
        for param in model.sam_prompt_encoder.parameters():
            param.normal_()
    return model


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


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", list(prompts()))
def test_sam_heads_unchanged(sam2_model, image_features, backend, prompt, multimask):
    point_inputs, mask_inputs = prompts()[prompt]
    expected = heads(sam2_model, image_features, point_inputs, mask_inputs, multimask)
    with swapped_prompt_encoder(sam2_model, backend=backend):
        assert isinstance(sam2_model.sam_prompt_encoder, PromptEncoder)
        assert sam2_model.sam_prompt_encoder.backend == backend
        actual = heads(sam2_model, image_features, point_inputs, mask_inputs, multimask)
    assert not isinstance(sam2_model.sam_prompt_encoder, PromptEncoder)  # restored
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)


def test_swap_keeps_state_dict_mode_device_and_returns_the_model(sam2_model):
    model = copy.deepcopy(sam2_model).train()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert replace_prompt_encoder(model, backend="torch") is model
    ours = model.sam_prompt_encoder
    assert isinstance(ours, PromptEncoder) and ours.training
    assert list(model.state_dict()) == list(keys)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    with torch.no_grad():  # fine-tuning happens on ours; restore carries it back
        ours.not_a_point_embed.weight.add_(1.0)
    restore_prompt_encoder(model)
    assert not isinstance(model.sam_prompt_encoder, PromptEncoder)
    assert torch.equal(model.sam_prompt_encoder.not_a_point_embed.weight,
                       keys["sam_prompt_encoder.not_a_point_embed.weight"] + 1.0)
    with pytest.raises(ValueError, match="nothing to restore"):
        restore_prompt_encoder(model)


class ImagePredictorLike:
    """SAM2ImagePredictor's shape (the model under ``.model``): Meta's class itself imports
    torchvision, which cannot be installed beside this CPU torch."""

    def __init__(self, model):
        self.model = model


def test_image_predictor_and_any_module_with_the_attribute(sam2_model):
    predictor = ImagePredictorLike(copy.deepcopy(sam2_model))
    assert replace_prompt_encoder(predictor) is predictor
    assert isinstance(predictor.model.sam_prompt_encoder, PromptEncoder)

    holder = nn.Module()
    holder.sam_prompt_encoder = copy.deepcopy(sam2_model.sam_prompt_encoder).double()
    replace_prompt_encoder(holder, backend="torch")
    assert holder.sam_prompt_encoder.not_a_point_embed.weight.dtype == torch.float64


def test_bad_objects_are_refused(sam2_model):
    with pytest.raises(TypeError, match="needs a SAM-2 model.*got Linear"):
        replace_prompt_encoder(nn.Linear(2, 2))
    holder = nn.Module()
    holder.sam_prompt_encoder = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="not a SAM-2 PromptEncoder"):
        replace_prompt_encoder(holder)
    with pytest.raises(ValueError, match="backend must be one of"):
        replace_prompt_encoder(copy.deepcopy(sam2_model), backend="cuda")
