"""DGCNN-style point-cloud classifier: EdgeConv layers with a plain-torch kNN.

Input ``[batch, 3, points]``. Each ``EdgeConv`` finds the ``k`` nearest neighbours of every point in the
current feature space (``torch.cdist`` + ``topk``, dynamic graph), builds edge features
``[x_j - x_i, x_i]`` (a concatenation: ``2C`` channels), applies a shared 1x1 ``Conv2d`` + BN + LeakyReLU and
max-pools over the neighbours. The EdgeConv outputs are concatenated, lifted by a 1x1 ``Conv1d`` to
``emb`` channels, max- and mean-pooled over points, then an MLP head classifies. Every layer is a standard
conv/BN/linear, so torch-pruning groups it as it is (the two concatenations included).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, N, k]`` of the ``k`` nearest points (Euclidean, self included) in features ``x [B, C, N]``."""
    with torch.no_grad():
        xt = x.detach().transpose(1, 2)
        return torch.cdist(xt, xt).topk(min(k, xt.shape[1]), dim=-1, largest=False).indices


def edge_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, 2C, N, k]``: ``cat(x_j - x_i, x_i)`` over the kNN graph of ``x [B, C, N]``."""
    B, C, N = x.shape
    idx = knn(x, k)                                                          # [B, N, k]
    flat = (idx + torch.arange(B, device=x.device)[:, None, None] * N).flatten()
    neighbours = x.transpose(1, 2).reshape(B * N, C)[flat].view(B, N, -1, C).permute(0, 3, 1, 2)  # [B, C, N, k]
    centre = x.unsqueeze(-1).expand_as(neighbours)
    # concatenated on the channel dim, as the 1x1 conv reads it (dependency tracing relies on this)
    return torch.cat([neighbours - centre, centre], dim=1)


class EdgeConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(2 * cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        e = F.leaky_relu(self.bn(self.conv(edge_features(x, self.k))), 0.2)
        return e.amax(dim=-1)


class DGCNN(nn.Module):
    def __init__(self, widths=(32, 32, 64), emb: int = 128, head: int = 64, k: int = 10, num_classes: int = 8,
                 in_channels: int = 3, dropout: float = 0.3):
        super().__init__()
        self.edge_convs = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.edge_convs.append(EdgeConv(cin, w, k))
            cin = w
        self.lift = nn.Sequential(nn.Conv1d(sum(widths), emb, 1, bias=False), nn.BatchNorm1d(emb))
        self.fc1 = nn.Linear(2 * emb, head, bias=False)
        self.bn1 = nn.BatchNorm1d(head)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError(f"dgcnn expects points [batch, channels, points], got shape {tuple(x.shape)}")
        feats = []
        for ec in self.edge_convs:
            x = ec(x)
            feats.append(x)
        x = F.leaky_relu(self.lift(torch.cat(feats, dim=1)), 0.2)
        x = torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)
        x = self.drop(F.leaky_relu(self.bn1(self.fc1(x)), 0.2))
        return self.fc(x)


@register("dgcnn")
def dgcnn(widths: list | tuple = (32, 32, 64), emb: int = 128, head: int = 64, k: int = 10, num_classes: int = 8,
          in_channels: int = 3, dropout: float = 0.3) -> nn.Module:
    return DGCNN(tuple(widths), emb, head, k, num_classes, in_channels, dropout)
