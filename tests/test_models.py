import pytest
import torch

from metaprune.models import UnknownModelError, build, build_for_data

FAMILIES = [
    ("resnet", {"depth": 20, "width": 8}),
    ("resnet", {"depth": 56, "width": 4}),
    ("vgg", {"depth": 11, "width": 8}),
    ("vgg", {"depth": 19, "width": 8}),
    ("mobilenet_v2", {"width_mult": 0.25}),
    ("vit", {"patch_size": 2, "depth": 2, "dim": 32, "heads": 4}),
]


@pytest.mark.parametrize("name,args", FAMILIES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_family_fits_dataset_shape(name, args, shape):
    model = build_for_data(name, shape, 7, **args)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert model.metaprune_spec["name"] == name
    assert model.metaprune_spec["args"]["num_classes"] == 7


def test_depth_and_width_change_size():
    small = build("resnet", depth=20, width=8)
    deep = build("resnet", depth=56, width=8)
    wide = build("resnet", depth=20, width=16)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(small) < n(deep) and n(small) < n(wide)


def test_torchvision_models_by_name():
    model = build("tv:resnet18", num_classes=5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert model.metaprune_spec == {"name": "tv:resnet18", "args": {"num_classes": 5}}


@pytest.mark.parametrize("name,args,match", [
    ("nope", {}, "unknown model 'nope'"),
    ("tv:not_a_model", {}, "torchvision has no classification model"),
    ("resnet", {"depthh": 20}, "takes no argument"),
])
def test_bad_model_names_are_clear(name, args, match):
    with pytest.raises(UnknownModelError, match=match):
        build(name, **args)


def test_bad_depth_is_named():
    with pytest.raises(ValueError, match="6n\\+2"):
        build("resnet", depth=21)
