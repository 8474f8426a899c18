"""The contract every registered model keeps (DESIGN.md), parametrized over the registry."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.models import MODELS, count_parameters, create_model

ALL_NAMES = sorted(MODELS)


def rgb(name: str) -> int:
    """Input channels of an RGB image for `name`: 3, plus 1 for a model whose inputs include
    depth (ACNet: the depth is forward's last channel, see seglab/models/base.py)."""
    return 3 + ("depth" in MODELS[name].cls.inputs)


# Instance models return boxes and masks, not logits: their contract is tests/test_maskrcnn.py.
NAMES = [n for n in ALL_NAMES if MODELS[n].cls.task == "semantic"]


@pytest.mark.parametrize("name", NAMES)
def test_odd_input_gives_logits_of_input_size_and_backward_works(name):
    info = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=rgb(name), **info.small_options)
    x = torch.randn(2, rgb(name), 97, 131)
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
    sum(o.float().square().mean() for o in [logits, *aux_outputs, *_extra(out)]).backward()
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
    model = create_model(name, num_classes=3, in_channels=rgb(name), **MODELS[name].small_options)
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


# --- declared properties against real behaviour ------------------------------------------------


def _cases() -> list[tuple[str, dict]]:
    """Each registered model small, plus the options that switch on auxiliary outputs (aux,
    msc) or a coarse training output (downsample_labels), so that their declarations run too."""
    cases = []
    for name in NAMES:
        small, options = MODELS[name].small_options, MODELS[name].options()
        cases.append((name, dict(small)))
        for switch in ("aux", "msc", "downsample_labels"):
            if switch in options and options[switch] is False:
                cases.append((name, {**small, switch: True}))
    return cases


CASES = _cases()
CASE_IDS = [
    name + "".join(f"-{k}" for k in options if k in ("aux", "msc", "downsample_labels"))
    for name, options in CASES
]


def _train_outputs(out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if isinstance(out, dict):
        return out["out"], list(out["aux"])
    return out, []


def _extra(out) -> list[torch.Tensor]:
    """Training outputs besides "out" and "aux" (FastFCN's "se" logits), which the loss trains."""
    return [v for k, v in out.items() if k not in ("out", "aux")] if isinstance(out, dict) else []


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_aux_outputs_match_aux_weights_and_backward_reaches_every_parameter(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=rgb(name), **options).train()
    assert isinstance(model.aux_weights, tuple)
    assert all(isinstance(w, float) for w in model.aux_weights)
    x = torch.randn(2, rgb(name), 65, 81)
    out = model(x)
    if not isinstance(out, dict):  # the contract: a plain tensor only without aux or stride
        assert model.aux_weights == () and model.label_stride == 1
    logits, aux = _train_outputs(out)
    assert len(aux) == len(model.aux_weights)
    assert all(torch.isfinite(o).all() for o in [logits, *aux])
    if isinstance(out, dict) and "se" in out:  # classes present: (B, K) logits, a loss weight
        assert out["se"].shape == (2, 3) and model.se_weight > 0
    sum(o.float().square().mean() for o in [logits, *aux, *_extra(out)]).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_label_stride_models_train_on_logits_at_that_stride(name, options):
    model = create_model(name, num_classes=3, in_channels=rgb(name), **options)
    stride = model.label_stride
    x = torch.randn(2, rgb(name), 65, 81)  # 8k + 1: about 65 / 8 = 8.1 -> 9 rows at stride 8
    with torch.no_grad():
        logits, _ = _train_outputs(model.train()(x))
        coarse_train = model.forward_coarse(x)
        coarse_eval = model.eval().forward_coarse(x)
        full = model(x)
    assert full.shape == (2, 3, 65, 81)
    for out in (logits, coarse_train, coarse_eval):
        assert abs(out.shape[-2] - 65 / stride) <= 1 and abs(out.shape[-1] - 81 / stride) <= 1
    if stride == 1:
        assert logits.shape == (2, 3, 65, 81)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 4])
def test_grayscale_and_four_channel_inputs_build_and_run(name, in_channels):
    if in_channels < len(MODELS[name].cls.inputs):  # RGB-D: at least one image channel + depth
        pytest.skip(f"{name} reads {MODELS[name].cls.inputs} from the input's channels")
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=in_channels, **MODELS[name].small_options)
    assert model.seglab_spec["in_channels"] == in_channels
    with torch.no_grad():
        out = model.eval()(torch.randn(1, in_channels, 40, 56))
    assert out.shape == (1, 3, 40, 56) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_overlap_tile_and_fixed_size_declarations(name):
    model = create_model(name, 3, rgb(name), **MODELS[name].small_options).eval()
    if model.supports_overlap_tile:
        side = model.tile_input_size(12)
        with torch.no_grad():
            out = model.forward_tile(torch.randn(1, rgb(name), side, side))
        assert out.shape[-1] == model.output_size(side) < side
    reason = model.export_fixed_size
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)


def test_models_whose_onnx_graph_needs_one_size_say_why():
    # export.py: adaptive pooling bins, unpooling by indices, valid U-Net's size-dependent pad
    for name, options in [("pspnet", {}), ("segnet", {}), ("unet", {"padding": "valid"})]:
        with torch.device("meta"):
            assert create_model(name, num_classes=3, **options).export_fixed_size
    with torch.device("meta"):
        assert create_model("unet", num_classes=3, padding="same").export_fixed_size is None
        assert not create_model("unet", num_classes=3, padding="same").supports_overlap_tile


def test_every_model_class_under_seglab_models_is_registered():
    import importlib
    import pkgutil

    import seglab.models
    from seglab.models import SegmentationModel

    registered = {info.cls for info in MODELS.values()}
    unregistered = []
    for module_info in pkgutil.iter_modules(seglab.models.__path__):
        module = importlib.import_module(f"seglab.models.{module_info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, SegmentationModel)
                and value is not SegmentationModel
                and value.__module__ == module.__name__
                and value not in registered
            ):
                unregistered.append(f"{module.__name__}.{value.__name__}")
    assert not unregistered, f"defined but not registered: {unregistered}"


def test_register_model_takes_only_classes():
    from seglab.models import register_model

    with pytest.raises(TypeError, match="SegmentationModel subclass"):
        register_model("a_builder_function", "not a class")(lambda num_classes: None)


def test_num_classes_or_in_channels_in_a_configs_options_is_a_user_error():
    from seglab.errors import SeglabError

    config_options = {"width": 4, "num_classes": 3}  # what an SMP user writes first
    with pytest.raises(SeglabError, match="num_classes is not a model option"):
        create_model("unet", 2, 1, **config_options)
    with pytest.raises(SeglabError, match="in_channels is not a model option"):
        create_model("unet", 2, 1, in_channels=3)
    # As keywords of a Python call they are the arguments themselves.
    assert create_model("unet", num_classes=2, in_channels=3, width=4).seglab_spec == {
        "name": "unet",
        "num_classes": 2,
        "in_channels": 3,
        "options": {"width": 4},
        "task": "semantic",
    }


@pytest.mark.parametrize("name", ALL_NAMES)
def test_options_are_the_class_signature_with_the_entrys_defaults(name):
    import inspect

    info = MODELS[name]
    signature = inspect.signature(info.cls.__init__).parameters
    expected = {
        key: parameter.default
        for key, parameter in signature.items()
        if key not in ("self", "num_classes", "in_channels")
    }
    expected.update(info.defaults)
    assert info.options() == expected


def test_variants_state_only_what_differs():
    assert MODELS["fcn8s"].cls is MODELS["fcn32s"].cls
    assert MODELS["fcn8s"].defaults == {"output_stride": 8}
    assert MODELS["fcn16s"].options()["output_stride"] == 16
    assert MODELS["fcn32s"].options()["output_stride"] == 32
