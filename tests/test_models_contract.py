"""The contract every registered model keeps (DESIGN.md), parametrized over the registry."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.models import MODELS, count_parameters, create_model

ALL_NAMES = sorted(MODELS)
# Instance models return boxes and masks, not logits: their contract is tests/test_maskrcnn.py.
NAMES = [n for n in ALL_NAMES if MODELS[n].cls.task == "semantic"]


@pytest.mark.parametrize("name", NAMES)
def test_odd_input_gives_logits_of_input_size_and_backward_works(name):
    info = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=3, **info.small_options)
    x = torch.randn(2, 3, 97, 131)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 97, 131)
    model.train()
    out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    assert logits.shape == (2, 3, 97, 131)
    aux_outputs = out.get("aux", []) if isinstance(out, dict) else []
    for aux in aux_outputs:
        assert aux.shape[:2] == (2, 3)
    # The auxiliary heads are trained too: their outputs join the loss, as in the trainer.
    sum(o.float().square().mean() for o in [logits, *aux_outputs]).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "every learnable parameter gets a gradient"


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if MODELS[n].paper_params])
def test_paper_configuration_matches_published_parameter_count(name):
    info = MODELS[name]
    with torch.device("meta"):  # no memory, no init cost: only the shapes matter
        model = create_model(name, **info.paper_options)
    count = count_parameters(model)
    assert abs(count - info.paper_params) <= 0.001 * info.paper_params, (count, info.paper_params)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_state_dict_keys_are_semantic(name):
    model = create_model(name, num_classes=3, in_channels=3, **MODELS[name].small_options)
    for key in model.state_dict():
        first = key.split(".")[0]
        assert not first.isdigit(), f"{key}: top-level Sequential index in a checkpoint key"


def test_in_channels_one_gives_the_papers_unet():
    model = seglab.create_model("unet", num_classes=2, in_channels=1)
    assert model.contracting[0].conv1.conv.in_channels == 1
    assert count_parameters(model) == 31_030_658


def test_unknown_model_and_option_are_user_errors():
    with pytest.raises(seglab.errors.SeglabError, match="unknown model 'nope'.*fcn8s"):
        create_model("nope", num_classes=2)
    with pytest.raises(seglab.errors.SeglabError, match="no option 'widht'.*width"):
        create_model("unet", num_classes=2, widht=3)
