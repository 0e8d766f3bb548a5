"""A pruned timm or Hugging Face model saves as a metaprune checkpoint (safetensors + spec.json naming the builder:
timm model name + arguments, or transformers class + config dict) and reloads, in a fresh build that never
downloads or unpickles anything, to the same outputs. Random-init tiny models only."""
import json
import warnings

import pytest
import torch

from metaprune.io import CheckpointError, load_model, save_model
from metaprune.models import build
from metaprune.prune import prune


def _prune_save_reload(model, x, tmp_path, speedup=2.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = prune(model, x[:1], target_speedup=speedup)
    assert res.speedup == pytest.approx(speedup, rel=0.05)
    save_model(model, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    with torch.no_grad():
        want, got = model.eval()(x), again(x)
    want, got = (getattr(o, "logits", o) for o in (want, got))
    assert got.shape == want.shape and torch.equal(got, want)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())
    return json.loads((tmp_path / "ckpt" / "spec.json").read_text()), again


def test_pruned_timm_resnet_reloads(tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build("timm:resnet18", num_classes=10).eval()
    spec, again = _prune_save_reload(model, torch.randn(2, 3, 32, 32), tmp_path)
    assert spec["name"] == "timm:resnet18" and spec["args"] == {"num_classes": 10}
    assert again.conv1.out_channels < 64  # rebuilt at full width, shrunk to the saved shapes


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_pruned_timm_vit_reloads_with_its_head_dims(tmp_path, name):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build(f"timm:{name}", img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    spec, again = _prune_save_reload(model, torch.randn(2, 3, 32, 32), tmp_path)
    attn = spec["attrs"]["blocks.0.attn"]
    assert attn["head_dim"] < 64 and attn["attn_dim"] == attn["head_dim"] * attn["num_heads"]
    assert again.blocks[0].attn.head_dim == attn["head_dim"] and again.embed_dim == spec["attrs"][""]["embed_dim"]


def _tiny_hf(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=32, num_labels=3)
        return transformers.BertForSequenceClassification(cfg).eval(), torch.randint(0, 100, (2, 16))
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
    return transformers.ViTForImageClassification(cfg).eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_pruned_hugging_face_model_reloads(tmp_path, kind):
    """A model built by transformers itself: its class and config are read from it when it is saved."""
    model, x = _tiny_hf(kind)
    spec, again = _prune_save_reload(model, x, tmp_path)
    assert spec["name"] == f"hf:{type(model).__name__}" and spec["args"]["config"]["hidden_size"] == 64
    head_dims = [v.get("attention_head_size", v.get("head_dim")) for v in spec["attrs"].values()
                 if "num_attention_heads" in v]  # the name depends on the model and the transformers version
    assert len(head_dims) == 2 and all(d < 16 for d in head_dims)
    assert type(again) is type(model)


def test_foreign_builders_refuse_downloads_and_unknown_names(tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build("timm:resnet18", num_classes=10).eval()
    save_model(model, tmp_path / "ckpt")
    spec_file = tmp_path / "ckpt" / "spec.json"
    spec = json.loads(spec_file.read_text())
    for args, match in (({"num_classes": 10, "pretrained": True}, "never downloads"),
                        ({"num_classes": 10, "checkpoint_path": "/etc/passwd"}, "fetch or read weights")):
        spec_file.write_text(json.dumps({**spec, "args": args}))
        with pytest.raises(CheckpointError, match=match):
            load_model(tmp_path / "ckpt")
    spec_file.write_text(json.dumps({**spec, "name": "timm:no_such_net"}))
    with pytest.raises(CheckpointError, match="timm has no model 'no_such_net'"):
        load_model(tmp_path / "ckpt")
    spec_file.write_text(json.dumps({**spec, "name": "hf:AutoModel", "args": {"config": {"model_type": "bert"}}}))
    with pytest.raises(CheckpointError, match="transformers has no model class 'AutoModel'"):
        load_model(tmp_path / "ckpt")
    remote = {"model_type": "bert", "auto_map": {"AutoModel": "evil.Model"}}
    spec_file.write_text(json.dumps({**spec, "name": "hf:BertModel", "args": {"config": remote}}))
    with pytest.raises(CheckpointError, match="auto_map"):
        load_model(tmp_path / "ckpt")
