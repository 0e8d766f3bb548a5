"""Embedded tasks for the non-image families, built in memory with no download.

- ``digits_seq``: scikit-learn's handwritten digits (real data) read as sequences: each 8x8 image becomes
  8 time steps of 8 features (its rows), for the LSTM. Same splits and normalisation as ``digits``.
- ``sbm``: a *synthetic* stochastic-block-model graph for node classification (GAT). Nodes of class ``c``
  connect with probability ``p_in`` inside their block and ``p_out`` across; features are a noisy class
  centroid, noisy enough that neighbours help. The dataset items are ``(node id, label)`` pairs; the graph
  itself (``x``, ``edge_index``) lives in ``info["graph"]`` and inside the model (see ``models/gnn.py``).
- ``shapes3d``: *synthetic* point clouds sampled from parametric 3-D surfaces (sphere, cube, cylinder,
  cone, torus, ellipsoid, pyramid, helix) under a random rotation (yaw by default), anisotropic scale and
  jitter, for DGCNN.

Everything is generated from a fixed seed, so the same call returns the same tensors.
"""
from __future__ import annotations

import math

import torch

from .core import DataBundle, TensorPairs, get_data, register_data


# ---------------------------------------------------------------- digits as sequences
def _digits_seq(seed: int = 0, **kw) -> DataBundle:
    d = get_data("digits", seed=seed, **{k: v for k, v in kw.items() if k in ("val_fraction", "test_fraction")})
    split = {s: TensorPairs(getattr(d, s).x.squeeze(1).contiguous(), getattr(d, s).y) for s in ("train", "val", "test")}
    info = dict(d.info, derived_from="digits", layout="8 time steps (image rows) x 8 features (pixels)")
    return DataBundle("digits_seq", split["train"], split["val"], split["test"], 10, (8, 8), info)


# ---------------------------------------------------------------- stochastic block model graph
def sbm_graph(num_nodes: int = 600, num_classes: int = 5, num_features: int = 32, p_in: float = 0.04,
              p_out: float = 0.004, noise: float = 2.0, seed: int = 0):
    """A symmetric SBM graph: ``(x [N, F], edge_index [2, E] both directions, y [N])``, deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % num_classes
    y = y[torch.randperm(num_nodes, generator=g)]
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    upper = torch.triu(torch.rand(num_nodes, num_nodes, generator=g) < prob, diagonal=1)
    src, dst = upper.nonzero(as_tuple=True)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    centroids = torch.randn(num_classes, num_features, generator=g)
    x = centroids[y] + noise * torch.randn(num_nodes, num_features, generator=g)
    return x, edge_index, y


def _sbm(seed: int = 0, num_nodes: int = 600, num_classes: int = 5, num_features: int = 32, p_in: float = 0.04,
         p_out: float = 0.004, noise: float = 2.0, train_fraction: float = 0.3, val_fraction: float = 0.2,
         **_) -> DataBundle:
    x, edge_index, y = sbm_graph(num_nodes, num_classes, num_features, p_in, p_out, noise, seed)
    perm = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed + 1))
    n_tr, n_va = int(train_fraction * num_nodes), int(val_fraction * num_nodes)
    parts = {"train": perm[:n_tr], "val": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}
    split = {k: TensorPairs(v.sort().values, y[v.sort().values]) for k, v in parts.items()}
    info = {"synthetic": "stochastic block model", "graph": {"x": x, "edge_index": edge_index},
            "num_nodes": num_nodes, "num_edges": edge_index.shape[1], "num_features": num_features,
            "p_in": p_in, "p_out": p_out, "noise": noise, "seed": seed,
            "inputs": "node ids (LongTensor); the graph is held by the model"}
    # input_shape describes one item: a node id; the feature width is info["num_features"]
    return DataBundle("sbm", split["train"], split["val"], split["test"], num_classes, (num_features,), info)


# ---------------------------------------------------------------- parametric 3-D shapes
def _sphere(u, v):
    th, ph = 2 * math.pi * u, torch.acos(1 - 2 * v)
    return torch.stack([torch.sin(ph) * torch.cos(th), torch.sin(ph) * torch.sin(th), torch.cos(ph)], -1)


def _cube(u, v, face):
    a, b = 2 * u - 1, 2 * v - 1
    axis, sign = face // 2, (face % 2) * 2 - 1
    p = torch.stack([a, b, sign.float()], -1)
    # move the constant coordinate (column 2) onto the face's axis
    orders = torch.tensor([[2, 0, 1], [0, 2, 1], [0, 1, 2]])
    return p.gather(-1, orders[axis])


def _cylinder(u, v, cap):
    th = 2 * math.pi * u
    side = torch.stack([torch.cos(th), torch.sin(th), 2 * v - 1], -1)
    r = torch.sqrt(v)
    lid = torch.stack([r * torch.cos(th), r * torch.sin(th), torch.where(u < 0.5, -1.0, 1.0)], -1)
    return torch.where(cap[..., None], lid, side)


def _cone(u, v, cap):
    th, h = 2 * math.pi * u, torch.sqrt(v)  # uniform in area along the slant
    side = torch.stack([h * torch.cos(th), h * torch.sin(th), 1 - 2 * h], -1)
    r = torch.sqrt(v)
    base = torch.stack([r * torch.cos(th), r * torch.sin(th), -torch.ones_like(u)], -1)
    return torch.where(cap[..., None], base, side)


def _torus(u, v, R=0.7, r=0.3):
    th, ph = 2 * math.pi * u, 2 * math.pi * v
    return torch.stack([(R + r * torch.cos(ph)) * torch.cos(th), (R + r * torch.cos(ph)) * torch.sin(th),
                        r * torch.sin(ph)], -1)


def _helix(u, v):
    t = 4 * math.pi * u
    tube = 0.12 * torch.stack([torch.cos(2 * math.pi * v), torch.sin(2 * math.pi * v)], -1)
    return torch.stack([0.7 * torch.cos(t) + tube[..., 0], 0.7 * torch.sin(t) + tube[..., 1], u * 2 - 1], -1)


def _pyramid(u, v, face):
    # four triangular sides over a square base; face 4 = the base
    a, b = u, v * (1 - u)  # uniform-ish barycentric coordinates
    corners = torch.tensor([[1.0, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, 1, -1]])
    apex = torch.tensor([0.0, 0.0, 1.0])
    f = face.clamp(max=3)
    side = apex + a[..., None] * (corners[f] - apex) + b[..., None] * (corners[f + 1] - apex)
    base = torch.stack([2 * u - 1, 2 * v - 1, -torch.ones_like(u)], -1)
    return torch.where((face == 4)[..., None], base, side)


SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "ellipsoid", "pyramid", "helix")


def _sample_shape(kind: int, n: int, num_points: int, g: torch.Generator) -> torch.Tensor:
    u, v = torch.rand(n, num_points, generator=g), torch.rand(n, num_points, generator=g)
    name = SHAPES[kind]
    if name == "sphere":
        return _sphere(u, v)
    if name == "ellipsoid":
        return _sphere(u, v) * torch.tensor([1.0, 0.6, 0.35])
    if name == "cube":
        return _cube(u, v, torch.randint(0, 6, (n, num_points), generator=g))
    if name == "cylinder":
        return _cylinder(u, v, torch.rand(n, num_points, generator=g) < 0.25)
    if name == "cone":
        return _cone(u, v, torch.rand(n, num_points, generator=g) < 0.3)
    if name == "torus":
        return _torus(u, v)
    if name == "pyramid":
        return _pyramid(u, v, torch.randint(0, 5, (n, num_points), generator=g))
    return _helix(u, v)


def _random_rotations(n: int, g: torch.Generator, kind: str = "z") -> torch.Tensor:
    """``[n, 3, 3]`` rotations: ``z`` = random yaw about the vertical axis, ``so3`` = uniform, ``none``."""
    if kind == "none":
        return torch.eye(3).expand(n, 3, 3)
    if kind == "z":
        a = 2 * math.pi * torch.rand(n, generator=g)
        c, s, o, z = torch.cos(a), torch.sin(a), torch.ones(n), torch.zeros(n)
        return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], 1)
    if kind == "so3":
        q = torch.linalg.qr(torch.randn(n, 3, 3, generator=g)).Q
        return q * torch.linalg.det(q).sign()[:, None, None]  # proper rotations
    raise ValueError(f"shapes3d rotation={kind!r}: use 'z', 'so3' or 'none'")


def shape_clouds(n_per_class: int, num_points: int = 128, classes=SHAPES, jitter: float = 0.02,
                 rotation: str = "z", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points [n, 3, num_points], labels [n])``: shapes under a random rotation (``rotation``: z = yaw only,
    as ModelNet-style augmentation; so3; none), scale 0.7-1.3 per axis and Gaussian jitter, centred, unit ball."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, name in enumerate(classes):
        p = _sample_shape(SHAPES.index(name), n_per_class, num_points, g)
        scale = 0.7 + 0.6 * torch.rand(n_per_class, 1, 3, generator=g)
        p = (p * scale) @ _random_rotations(n_per_class, g, rotation)
        p = p + jitter * torch.randn(p.shape, generator=g)
        p = p - p.mean(1, keepdim=True)
        p = p / p.norm(dim=-1).amax(1)[:, None, None]  # unit ball
        xs.append(p.transpose(1, 2))
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(xs).float().contiguous(), torch.cat(ys)


def _shapes3d(seed: int = 0, num_points: int = 128, n_train: int = 64, n_val: int = 16, n_test: int = 32,
              classes=SHAPES, jitter: float = 0.02, rotation: str = "z", **_) -> DataBundle:
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"shapes3d: unknown shape(s) {unknown}; known: {list(SHAPES)}")
    split = {}
    for i, (s, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        x, y = shape_clouds(n, num_points, classes, jitter, rotation, seed=seed * 3 + i)
        split[s] = TensorPairs(x, y)
    info = {"synthetic": "points sampled from parametric 3-D shapes", "classes": list(classes),
            "per_class": {"train": n_train, "val": n_val, "test": n_test}, "jitter": jitter,
            "rotation": rotation}
    return DataBundle("shapes3d", split["train"], split["val"], split["test"], len(classes), (3, num_points), info)


register_data("digits_seq", _digits_seq)
register_data("sbm", _sbm)
register_data("shapes3d", _shapes3d)
