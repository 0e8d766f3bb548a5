"""The metanetwork: a GNN (torch-geometric ``MessagePassing``) that rewrites a trained network's weights.

``Metanet.for_graphs(graphs, hidden=..., layers=..., aggr=..., scale=...)`` builds one with typed encoders for
the zoo's layer kinds; ``metanet.transform(graph)`` returns the graph with new weights;
``apply_metanet(metanet, model, example_inputs)`` does model -> graph -> metanet -> model in one call;
``save_metanet`` / ``load_metanet`` keep it as safetensors + config JSON + the zoo split it was trained on.
"""
from .checkpoint import UnseenTypesError, apply_metanet, load_metanet, save_metanet
from .conv import EdgeNodeConv
from .model import Metanet, type_names

__all__ = ["Metanet", "EdgeNodeConv", "type_names", "apply_metanet", "save_metanet", "load_metanet",
           "UnseenTypesError"]
