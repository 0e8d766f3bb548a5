"""Models people actually use (timm, Hugging Face) prune to the target with their outputs intact, and a pruning
that fails leaves the caller's model exactly as it was. Every model is built with random weights (no downloads)."""
import pytest
import torch
import torch.nn as nn

from metaprune.prune import prune
from metaprune.prune.safety import PruningFailed


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["mobilenetv3_small_100", "mobilenetv4_conv_small"])
def test_timm_classifier_keeps_its_classes(name):
    """timm's classifier is a subclass of nn.Linear: it must still be found and protected (10 classes out)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    res = prune(model, x, target_speedup=2.0)
    assert model(x).shape == (2, 10)
    assert res.protected == ["classifier"]
    assert res.speedup == pytest.approx(2.0, rel=0.05) and res.pruned_macs < res.base_macs


class _Scaled(nn.Linear):
    """A library-style Linear subclass feeding the output through a parameter-free op."""


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = _Scaled(16, 5)

    def forward(self, x):
        return self.head(self.body(x)) * 2.0  # the output is not the head's own tensor


def test_output_layer_found_through_ops_after_it():
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(1, 3, 12, 12)
    res = prune(model, x, target_speedup=1.5)
    assert res.protected == ["head"] and model(x).shape == (1, 5)


class _BreaksWhenPruned(_Net):
    """Forward works at full width and raises once the first conv has been narrowed."""

    def forward(self, x):
        if self.body[0].out_channels != 16:
            raise RuntimeError("this layer needs 16 channels")
        return super().forward(x)


def test_failed_prune_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = _BreaksWhenPruned().eval()
    x = torch.randn(2, 3, 12, 12)
    before, out_before = _snapshot(model), model(x)
    params_before = list(model.parameters())
    with pytest.raises(PruningFailed, match="left unchanged") as e:
        prune(model, x, target_speedup=1.5)
    assert "16 channels" in str(e.value) and "\n" not in str(e.value)
    after = _snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(a is b for a, b in zip(model.parameters(), params_before))  # the same parameter objects
    assert model.body[0].out_channels == 16 and model.body[0].weight.shape == (16, 3, 3, 3)
    assert torch.equal(model(x), out_before)


def test_changed_output_shape_is_refused_and_undone(monkeypatch):
    """Whatever slips past protection, a prune whose outputs change shape raises and restores the model."""
    from metaprune import depgraph

    monkeypatch.setattr(depgraph, "output_layers", lambda DG, pruners=None: [])  # protection finds nothing
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.Flatten())
    x = torch.randn(1, 3, 8, 8)
    before = _snapshot(model)
    with pytest.raises(PruningFailed, match="output shapes"):
        prune(model, x, target_speedup=1.5, protect_output=False)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before) and model(x).shape == (1, 96)


def _close_in_onnxruntime(model, x, tmp_path):
    """The pruned model exports to ONNX, runs in onnxruntime, and imports back with the same outputs."""
    from metaprune.onnx import export_onnx, import_onnx, verify_onnx

    path = export_onnx(model, x, tmp_path / "pruned.onnx")
    assert verify_onnx(model, path, x.repeat(3, *[1] * (x.dim() - 1))) <= 1e-4
    with torch.no_grad():
        assert torch.allclose(import_onnx(path)(x), model(x), atol=1e-4)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vit_prunes_head_dims(tmp_path, name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and model(x).shape == (2, 10)
    assert model.embed_dim == model.num_features == model.patch_embed.proj.out_channels < 192
    for blk in model.blocks:  # every head keeps the same, smaller head dim
        attn = blk.attn
        assert attn.head_dim < 64 and attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
        assert attn.proj.in_features == attn.attn_dim
    model.train()(x).sum().backward()  # finetunable: the training forward runs too
    _close_in_onnxruntime(model.eval(), x[:1], tmp_path)


def test_hf_bert_prunes_head_dims():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    res = prune(model, ids, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and res.protected == ["classifier"]
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    assert model(ids, attention_mask=mask).logits.shape == (2, 3)
    for layer in model.bert.encoder.layer:
        sa = layer.attention.self
        assert sa.attention_head_size < 16 and sa.query.out_features == sa.all_head_size == 4 * sa.attention_head_size
        assert layer.attention.output.dense.in_features == sa.all_head_size


def test_hf_vit_prunes_head_dims(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
    model = transformers.ViTForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and model(x).logits.shape == (2, 10)
    heads = [m for m in model.modules() if hasattr(m, "num_attention_heads") and hasattr(m, "q_proj")]
    assert heads and all(m.head_dim < 16 and m.q_proj.out_features == 4 * m.head_dim == m.o_proj.in_features
                         for m in heads)

    class Logits(nn.Module):  # Hugging Face returns a ModelOutput; ONNX export wants the tensor
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).logits

    _close_in_onnxruntime(Logits(model).eval(), x[:1], tmp_path)


class _SlowToTrace(_Net):
    def forward(self, x):
        import time

        time.sleep(0.3)
        return super().forward(x)


def test_tracing_has_a_time_bound(monkeypatch):
    from metaprune import depgraph

    monkeypatch.setattr(depgraph, "TRACE_TIME_LIMIT_S", 0.1)
    torch.manual_seed(0)
    model = _SlowToTrace().eval()
    x = torch.randn(1, 3, 12, 12)
    before = _snapshot(model)
    with pytest.raises(depgraph.TraceTimeoutError, match=r"tracing the dependency graph of _SlowToTrace took longer "
                                                          r"than 0.1 s"):
        prune(model, x, target_speedup=1.5)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    monkeypatch.setattr(depgraph, "TRACE_TIME_LIMIT_S", 60.0)
    assert prune(model, x, target_speedup=1.5).speedup > 1.4  # with time to spare it prunes


class _Ghost(nn.Module):
    """GhostNet's module: a cheap depthwise conv copies the primary conv's channels, ``cat(...)[:, :out]``."""

    def __init__(self, cin, cout):
        super().__init__()
        self.out = cout
        init = (cout + 1) // 2
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), nn.BatchNorm2d(init),
                                   nn.ReLU())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, :self.out]


class _GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.g1, self.g2 = _Ghost(8, 5), _Ghost(5, 8)  # g1 slices a channel off, g2 keeps all 8
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head((self.g2(self.g1(x)) + x).mean((2, 3)))


def _remove_silent_units(model, dg, group, units: list[int], x) -> None:
    """Zero every entry of ``units`` (consecutive) of ``group``, then remove them: the outputs must not change (the cut matches
    the grouping, not only the shapes)."""
    params = dg.params()
    with torch.no_grad():
        for s in group.slices:
            params[s.param].index_fill_(s.dim, s.idxs[units[0]:units[-1] + 1], 0.0)
    before = model(x)
    dg.apply({dg.groups.index(group): torch.tensor(units)})
    torch.testing.assert_close(model(x), before)


def test_ghost_module_units_and_function():
    """The residual stream's channels i and init + i are one unit (the cheap conv copies primary channel i); the
    group through the channel-dropping slice is left alone; removing a unit whose entries are all zero leaves the
    outputs exactly as they were (the cut matches the grouping)."""
    from metaprune.depgraph import DepGraph

    torch.manual_seed(0)
    model = _GhostNet().eval()
    x = torch.randn(2, 3, 16, 16)
    dg = DepGraph(model, x, ["head"])
    assert dg.fixed == ["g1.cheap.0"]
    (stream,) = [g for g in dg.groups if g.root == "stem"]
    assert stream.units == 4 and stream.unit_roots.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    _remove_silent_units(model, dg, stream, [1], x)
    assert model.stem.out_channels == 6 and model.g2.primary[0].out_channels == 3


@pytest.mark.slow
def test_timm_ghostnet_prunes():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("ghostnet_050", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = prune(model, x, target_speedup=2.0)
    assert model(x).shape == (1, 10) and torch.isfinite(model(x)).all()
    assert res.speedup == pytest.approx(2.0, rel=0.05)


def test_timm_layer_scale_prunes_with_its_channels():
    """timm's ``LayerScale2d`` (one learned scale per channel) is cut with its channels: a unit whose entries are all
    zero is removed with the outputs unchanged."""
    pytest.importorskip("timm")
    from timm.layers import LayerScale2d

    from metaprune.depgraph import DepGraph

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.ls, self.head = LayerScale2d(8, init_values=0.5), nn.Linear(8, 4)

        def forward(self, x):
            x = self.stem(x)
            return self.head((x + self.ls(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    nn.init.normal_(model.ls.gamma)
    x = torch.randn(2, 3, 8, 8)
    dg = DepGraph(model, x, ["head"])
    (stream,) = [g for g in dg.groups if any(s.param == "ls.gamma" for s in g.slices)]
    _remove_silent_units(model, dg, stream, [2, 3], x)
    assert model.ls.gamma.shape == (6,) and model.stem.out_channels == 6 and model.conv.out_channels == 6
    model2 = Net().eval()
    res = prune(model2, x, target_speedup=1.5)
    assert model2(x).shape == (2, 4) and model2.ls.gamma.shape[0] == model2.conv.out_channels < 8
    assert res.speedup > 1.3


def test_timm_blur_pool_filter_follows_its_channels():
    """timm's ``BlurPool2d`` (a fixed blur filter buffer, one row per channel) loses the rows of removed channels; a
    removed unit whose entries are all zero leaves the outputs unchanged."""
    pytest.importorskip("timm")
    from timm.layers import BlurPool2d

    from metaprune.depgraph import DepGraph

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.blur = nn.Conv2d(3, 8, 3, padding=1), BlurPool2d(8)
            self.b, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.b(self.blur(torch.relu(self.a(x)))).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    dg = DepGraph(model, x, ["head"])
    (grp,) = [g for g in dg.groups if any(s.param == "a.weight" for s in g.slices)]
    _remove_silent_units(model, dg, grp, [1, 2], x)
    assert model.blur.filt.shape == (6, 1, 3, 3) and model.blur.channels == 6 == model.a.out_channels


class _ReadsItsWidth(nn.Module):
    """A block whose forward reshapes to the width it was built with (as an attention reads its head count)."""

    def __init__(self, c):
        super().__init__()
        self.c, self.conv = c, nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0], self.c, -1).reshape(y.shape)


class _WithFixedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.conv = nn.Conv2d(3, 16, 3), _ReadsItsWidth(16), nn.Conv2d(16, 32, 3)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.block(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_layer_failing_after_pruning_is_kept_whole():
    """The pruned model fails inside a block: it is pruned again with every group through that block left whole, a
    warning names it, and the result lists it; ``keep_failing_layers=False`` raises and leaves the model as it was."""
    torch.manual_seed(0)
    model = _WithFixedBlock().eval()
    x = torch.randn(1, 3, 12, 12)
    before = _snapshot(model)
    with pytest.raises(PruningFailed, match="block"):
        prune(model, x, target_speedup=1.5, keep_failing_layers=False)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    with pytest.warns(UserWarning, match="pruned again.*left whole"):
        res = prune(model, x, target_speedup=1.5)
    assert res.kept_whole == ["block"] and "block" in res.protected
    assert model.stem.out_channels == 16 and model.block.conv.weight.shape == (16, 16, 1, 1)
    assert model.conv.out_channels < 32 and model(x).shape == (1, 5)
    assert res.speedup == pytest.approx(1.5, rel=0.05)


@pytest.mark.parametrize("name, kept", [
    ("cs3darknet_focus_s", []),              # a concatenation torch-pruning cannot size: its groups stay whole
    ("tf_mixnet_s", []),                     # MixedConv2d: split sizes follow the pruned convs, MACs counted right
    ("edgenext_xx_small", ["stages.1.blocks.1.xca"]),  # cross-covariance attention reads its width: kept whole
])
def test_timm_split_concat_and_width_reading_blocks_prune(name, kept):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = prune(model, x, target_speedup=2.0)
    assert res.kept_whole == kept
    assert res.speedup == pytest.approx(2.0, rel=0.03)  # measured MACs, not only the cost model's prediction
    out = model(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, layer", [("convnext_atto_rms", "RmsNorm2d"), ("convnextv2_atto", "GlobalResponseNorm"),
                                         ("swiftformer_xs", "LayerScale2d")])  # the last: gamma of shape [C, 1, 1]
def test_timm_per_channel_norms_and_scales_prune_with_their_channels(name, layer):
    """Layers holding one value per channel (timm's RMS/simple norms, global response norm, 3-D layer scales) shrink
    with the channels they act on: torch-pruning prunes these models, so metaprune must too."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    before = {n: m.weight.shape[0] if hasattr(m, "weight") else m.gamma.shape[0]
              for n, m in model.named_modules() if type(m).__name__ == layer}
    res = prune(model, x, target_speedup=2.0)
    after = {n: m.weight.shape[0] if hasattr(m, "weight") else m.gamma.shape[0]
             for n, m in model.named_modules() if type(m).__name__ == layer}
    assert before and any(after[n] < before[n] for n in before)
    assert res.speedup == pytest.approx(2.0, rel=0.03) and model(x).shape == (1, 10)


def test_timm_norms_without_affine_parameters_follow_their_channels():
    """A timm RMS norm built with ``affine=False`` has nothing to cut but its ``normalized_shape``: it must not be
    refused, and the pruned model runs."""
    pytest.importorskip("timm")
    from timm.layers import RmsNorm, RmsNorm2d

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 16, 3), RmsNorm2d(16, affine=False), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 3, 16, 16)
    assert prune(conv, x, target_speedup=1.5).speedup == pytest.approx(1.5, rel=0.05)
    assert conv[0].out_channels < 16 and conv(x).shape == (1, 4)
    mlp = nn.Sequential(nn.Linear(8, 16), RmsNorm(16, affine=False), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 4)).eval()
    prune(mlp, torch.randn(1, 8), target_speedup=1.5)
    assert mlp[1].normalized_shape == (mlp[0].out_features,) and mlp[0].out_features < 16
    assert mlp(torch.randn(2, 8)).shape == (2, 4)
