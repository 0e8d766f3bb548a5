"""Head dims vs whole heads (``attention_unit``) at 2x MACs: what each leaves of a tiny BERT and timm's ViT-Tiny.

Random init, no downloads, the README's foreign-model settings (BERT: 2 layers, 64 wide, 4 heads, 16 tokens; timm
``vit_tiny_patch16_224`` with patch 8 at 32x32). Per model, unit and ranking (one ratio per layer, the default, and
``global_pruning=True``): ``prune(model, x, target_speedup=2.0, attention_unit=unit)``, then MACs and parameters as
measured by ``prune``, the heads of all blocks together and the head dims. Prints a Markdown table and writes
``benchmarks/results/attention_unit.json``::

    python benchmarks/attention_unit.py
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from metaprune.io import atomic_write_json

from metaprune.prune import prune


def _bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    sa = lambda m: [layer.attention.self for layer in m.bert.encoder.layer]  # noqa: E731
    return model, torch.randint(0, 100, (1, 16)), lambda m: [(a.num_attention_heads, a.attention_head_size)
                                                             for a in sa(m)]


def _vit():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
    return model.eval(), torch.randn(1, 3, 32, 32), lambda m: [(b.attn.num_heads, b.attn.head_dim) for b in m.blocks]


def _heads(attns) -> str:
    dims = sorted({d for _, d in attns})
    return f"{sum(h for h, _ in attns)} heads × {'/'.join(map(str, dims))}"


MODELS = {"Hugging Face BERT (2 layers, 64 wide, 4 heads)": _bert, "timm `vit_tiny` (patch 8, 32×32)": _vit}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    print("| model | ranking | `attention_unit` | MACs | params | heads (all blocks) × head dim |")
    print("|---|---|---|---|---|---|")
    for name, make in MODELS.items():
        for global_pruning in (False, True):
            for unit in ("dim", "head"):
                torch.manual_seed(0)
                model, x, heads = make()
                before = _heads(heads(model))
                r = prune(model, x, target_speedup=2.0, attention_unit=unit, global_pruning=global_pruning)
                print(f"| {name} | {'global' if global_pruning else 'per layer'} | `{unit}` | "
                      f"{r.base_macs / 1e6:.2f}M → {r.pruned_macs / 1e6:.2f}M ({r.speedup:.2f}×) | "
                      f"{r.base_params / 1e3:.1f}K → {r.pruned_params / 1e3:.1f}K ({r.param_ratio:.2f}×) | "
                      f"{before} → {_heads(heads(model))} |")
                rows.append({"model": name, "global_pruning": global_pruning, "attention_unit": unit,
                             "base_macs": r.base_macs, "pruned_macs": r.pruned_macs, "speedup": r.speedup,
                             "base_params": r.base_params, "pruned_params": r.pruned_params,
                             "heads_before": before, "heads_after": _heads(heads(model))})
    atomic_write_json(Path(__file__).resolve().parent / "results" / "attention_unit.json",
                      {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "torch": torch.__version__, "threads": 1, "target_speedup": 2.0, "rows": rows})


if __name__ == "__main__":
    main()
