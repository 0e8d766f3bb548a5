"""Decoder language models from Hugging Face transformers (random init, no downloads) prune to 2x MACs from token
ids: GPT-2 (``Conv1D`` layers, fused qkv: head dims), Llama (``LlamaRMSNorm``, rotary embeddings: whole heads;
grouped-query attention: whole key/value heads with their query heads). The logits keep the full vocabulary, the
tied embedding stays tied, and ``generate`` (key/value cache) gives the same tokens as greedy decoding by full
forwards of the pruned model; the pruned model saves as a metaprune checkpoint and reloads to the same logits."""
import pytest
import torch
import torch.nn as nn

from metaprune.io import load_model, save_model
from metaprune.prune import prune

transformers = pytest.importorskip("transformers")

VOCAB = 100


def _greedy(model, ids, n):
    """Greedy decoding by full forward passes (no cache)."""
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids


def tiny_llama(heads: int, kv_heads: int):
    """A random-init Llama (2 layers, 64 wide, MLP 128, vocabulary ``VOCAB``), seed 0."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, intermediate_size=128, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None)
    return transformers.LlamaForCausalLM(cfg).eval()


def _prunes_and_generates(model, tmp_path, n_new=4):
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    res = prune(model, ids, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and res.protected == ["lm_head"]
    assert res.pruned_macs == pytest.approx(res.predicted_macs, rel=1e-6)  # the cost model knows every layer
    assert model(ids).logits.shape == (2, 8, VOCAB)  # the full vocabulary
    out = model.generate(ids[:1], max_new_tokens=n_new, do_sample=False)
    assert out.shape == (1, 8 + n_new) and torch.equal(out, _greedy(model, ids[:1], n_new))
    save_model(model, tmp_path / "lm")
    again = load_model(tmp_path / "lm")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert sum(p.numel() for p in again.parameters()) == res.pruned_params
    return res, again


def test_gpt2_prunes_head_dims_and_generates(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=32,
                                  bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    res, again = _prunes_and_generates(model, tmp_path)
    assert again.lm_head.weight is again.transformer.wte.weight
    width = model.transformer.wte.embedding_dim
    assert width < 64 and model.lm_head.weight is model.transformer.wte.weight  # still tied, one parameter
    assert res.pruned_params == sum(p.numel() for p in model.parameters())
    for block in model.transformer.h:
        attn = block.attn
        assert attn.num_heads == 4 and attn.head_dim < 16 and attn.split_size == 4 * attn.head_dim
        assert attn.c_attn.weight.shape == (width, 3 * attn.split_size) and attn.c_attn.nf == 3 * attn.split_size
        assert attn.c_proj.weight.shape == (attn.split_size, width) and attn.embed_dim == width
        assert block.mlp.c_fc.nf == block.mlp.c_proj.nx < 256


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 4)])
def test_llama_prunes_whole_heads_and_generates(tmp_path, heads, kv_heads):
    model = tiny_llama(heads, kv_heads)
    hd = 64 // heads
    res, _ = _prunes_and_generates(model, tmp_path)
    assert res.seconds < 120  # grouped-query attention once made torch-pruning's grouping run for minutes
    width = model.model.embed_tokens.embedding_dim
    assert width < 64 and all(m.weight.shape == (width,) for m in model.modules() if type(m).__name__ == "LlamaRMSNorm")
    for layer in model.model.layers:
        attn = layer.self_attn
        q, k, v, o = attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features, attn.o_proj.in_features
        # whole heads: the rotary embedding's head dim stays, query heads keep their key/value head
        assert attn.head_dim == hd and q == o and k == v and q % hd == 0 and q // k == heads // kv_heads
        assert attn.num_key_value_groups == heads // kv_heads and q < heads * hd
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features


def test_torch_rmsnorm_is_pruned_with_its_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.RMSNorm(64), nn.ReLU(), nn.Linear(64, 64), nn.RMSNorm(64), nn.ReLU(),
                          nn.Linear(64, 5)).eval()
    x = torch.randn(4, 16)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and model(x).shape == (4, 5)
    for norm, lin in ((model[1], model[0]), (model[4], model[3])):
        assert norm.weight.shape == (lin.out_features,) == norm.normalized_shape and lin.out_features < 64
