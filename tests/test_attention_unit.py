"""``attention_unit``: what pruning removes from a multi-head attention. ``dim`` removes slot d of every head (the
head count stays, the head dim shrinks), ``head`` whole heads (the head dim stays, the head count falls), ``auto``
head dims except where only whole heads keep the attention intact (rotary embeddings, grouped-query attention),
where ``dim`` is refused. Hugging Face BERT and GPT-2, timm's ViT and metaprune's own ViT, random init."""
import subprocess
import sys

import pytest
import torch

from metaprune.cli import UsageError
from metaprune.io import load_model, save_model
from metaprune.models import build
from metaprune.prune import pipeline, prune
from metaprune.prune.pipeline import run_prune

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from test_foreign_lm import VOCAB, _greedy, tiny_llama  # noqa: E402  (needs transformers)
from test_prune_config import REPO, _compose  # noqa: E402


def _pruned(model, x, unit, **kw):
    res = prune(model, x, target_speedup=2.0, attention_unit=unit, **kw)
    assert res.speedup == pytest.approx(2.0, rel=0.1) and res.attention_unit == unit
    assert res.pruned_params == sum(p.numel() for p in model.parameters())
    return res


@pytest.mark.parametrize("unit", ["head", "dim"])
def test_bert_prunes_whole_heads_or_head_dims(unit):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, num_labels=10)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    _pruned(model, ids, unit)
    assert model(ids).logits.shape == (2, 10)
    for layer in model.bert.encoder.layer:
        sa = layer.attention.self
        heads, hd = sa.num_attention_heads, sa.attention_head_size
        assert (heads < 4 and hd == 16) if unit == "head" else (heads == 4 and hd < 16)
        assert sa.all_head_size == heads * hd == sa.query.out_features == sa.key.out_features \
            == sa.value.out_features == layer.attention.output.dense.in_features


@pytest.mark.parametrize("unit", ["head", "dim"])
def test_timm_vit_prunes_whole_heads_or_head_dims(unit):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=32, num_heads=4).eval()
    hd0 = model.blocks[0].attn.head_dim
    x = torch.randn(2, 3, 32, 32)
    _pruned(model, x, unit)
    assert model(x).shape == (2, 10)
    for block in model.blocks:
        attn = block.attn
        heads, hd = attn.num_heads, attn.head_dim
        assert (heads < 4 and hd == hd0) if unit == "head" else (heads == 4 and hd < hd0)
        assert attn.attn_dim == heads * hd == attn.qkv.out_features // 3 == attn.proj.in_features


@pytest.mark.parametrize("unit", ["head", "dim"])
def test_gpt2_prunes_whole_heads_or_head_dims_and_generates(unit):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=32,
                                  bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    _pruned(model, ids, unit)
    assert model(ids).logits.shape == (2, 8, VOCAB)
    out = model.generate(ids[:1], max_new_tokens=4, do_sample=False)  # the key/value cache
    assert out.shape == (1, 12) and torch.equal(out, _greedy(model, ids[:1], 4))
    for block in model.transformer.h:
        attn = block.attn
        heads, hd = attn.num_heads, attn.head_dim
        assert (heads < 4 and hd == 16) if unit == "head" else (heads == 4 and hd < 16)
        assert attn.split_size == heads * hd and attn.c_attn.nf == 3 * attn.split_size
        assert attn.c_proj.weight.shape[0] == attn.split_size


def test_own_vit_keeps_head_widths_a_multiple_of_round_to_and_reloads(tmp_path):
    """Whole heads of 8 dims with round_to=8: any head count keeps the width a multiple of 8, so heads go (a step of
    8 heads would leave 4-head attentions alone); the pruned model saves and reloads to the same outputs."""
    torch.manual_seed(0)
    model = build("vit", image_size=8, patch_size=2, depth=2, dim=32, heads=4, num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 8, 8)
    _pruned(model, x, "head", round_to=8)
    for block in model.blocks:
        assert block.attn.num_heads < 4 and block.attn.qkv.out_features == 3 * 8 * block.attn.num_heads
        assert block.mlp[0].out_features % 8 == 0
    save_model(model, tmp_path / "vit")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "vit")(x), model(x))


@pytest.mark.parametrize("heads,kv_heads,why", [(4, 4, "its rotary embedding pairs the dims of each head"),
                                                 (8, 4, "grouped query heads share each key/value head")])
def test_llama_refuses_head_dims_and_is_left_unchanged(heads, kv_heads, why):
    model = tiny_llama(heads, kv_heads)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=rf"attention_unit='dim' cannot prune attention model\.layers\.0\.self_attn "
                                         rf"\(LlamaAttention\): {why}, so only whole heads can go"):
        prune(model, ids, target_speedup=2.0, attention_unit="dim")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_unknown_unit_is_refused_naming_the_choices():
    model = build("vit", image_size=8, patch_size=2, depth=1, dim=16, heads=2, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"attention_unit='heads' is invalid: must be one of auto, dim, head"):
        prune(model, torch.randn(1, 1, 8, 8), target_speedup=2.0, attention_unit="heads")


def test_prune_config_checks_attention_unit_before_loading(tmp_path, monkeypatch):
    """Every prune preset takes prune.attention_unit; a bad value, or a unit for a route that prunes through
    torch-pruning's own pruner (OBS, pruning at init), fails naming the key before anything loads or is written."""
    monkeypatch.setattr(pipeline, "load", lambda *a, **k: pytest.fail("the run reached the load stage"))
    out = f"output_dir={tmp_path / 'out'}"
    for preset in sorted(p.stem for p in (REPO / "configs" / "prune").glob("*.yaml")):
        cfg = _compose("prune", f"prune={preset}", "prune.attention_unit=head", out)
        assert cfg["prune"]["attention_unit"] == "head"
    with pytest.raises(UsageError, match=r"^prune\.attention_unit='dims' is invalid: must be one of auto, dim, head$"):
        run_prune(_compose("prune", "prune.attention_unit=dims", "model.checkpoint=x", out), progress=False)
    with pytest.raises(UsageError, match=r"prune\.attention_unit='head' applies to one-shot pruning; "
                                         r"prune\.importance=obs prunes through torch-pruning's own pruner"):
        run_prune(_compose("prune", "prune.attention_unit=head", "prune.importance=obs", "model.checkpoint=x",
                           out), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a fresh interpreter: ~10 s of imports
def test_prune_py_bad_attention_unit_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "prune.py"), "prune.attention_unit=foo", "model.checkpoint=x",
                           f"hydra.run.dir={tmp_path / 'run'}", "logger=none"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: prune.attention_unit='foo' is invalid: must be one of auto, dim, head"], proc.stderr
