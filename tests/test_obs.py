"""Data-free OBS pruning: the compensation is optimal under the assumed statistics, and it helps a real network."""
import copy

import pytest
import torch
import torch.nn as nn

from metaprune.metrics import macs_and_params
import torch_pruning as tp

from metaprune.prune.obs import compensate_group, moments, obs_prune, prune_to_speedup, relu_moments
from metaprune.train import evaluate, train_network


def _bn_relu_pair(kind: str, seed: int = 0):
    """producer -> BN -> ReLU -> consumer, with a BN whose (beta, gamma) vary across channels."""
    torch.manual_seed(seed)
    c = 12
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 7, 3, padding=1))
        example = torch.randn(1, 3, 6, 6)
    else:
        model = nn.Sequential(nn.Linear(5, c), nn.BatchNorm1d(c), nn.ReLU(), nn.Linear(c, 7))
        example = torch.randn(2, 5)
    with torch.no_grad():
        model[1].weight.uniform_(0.3, 2.0)
        model[1].bias.normal_(0, 1.0)
        model[3].weight.add_(0.05)  # trained consumers rarely have zero-mean rows
    return model.eval(), example


def _removed_group(model, example, removed):
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    fn = tp.prune_conv_out_channels if isinstance(model[0], nn.Conv2d) else tp.prune_linear_out_channels
    return DG, DG.get_pruning_group(model[0], fn, idxs=removed)


def test_relu_moments_match_sampling():
    beta, gamma = torch.tensor([-1.0, 0.0, 0.5, 2.0]), torch.tensor([0.5, 1.0, 2.0, 0.3])
    mean, var = relu_moments(beta, gamma)
    y = torch.relu(beta + gamma * torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(mean, y.mean(0), atol=5e-3)
    assert torch.allclose(var, y.var(0), atol=1e-2)


def test_independent_moments_are_rectified_gaussian_behind_bn_relu():
    model, example = _bn_relu_pair("linear")
    stats = moments(model, example, num_samples=20_000, mode="independent")
    mean, var = relu_moments(model[1].bias.detach(), model[1].weight.detach())
    assert torch.allclose(stats[model[3]][0], mean, atol=0.03)
    assert torch.allclose(stats[model[3]][1].diagonal(), var, rtol=0.05, atol=0.03)
    assert torch.count_nonzero(stats[model[3]][1] - torch.diag(stats[model[3]][1].diagonal())) == 0


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_compensation_reduces_reconstruction_error(kind):
    """Inputs drawn from the assumed law relu(N(beta, gamma^2)): after the group removes channels, the OBS
    update leaves exactly the predicted (variance-only) error, less than plain pruning, and no other bias
    does better."""
    model, example = _bn_relu_pair(kind)
    consumer = model[3]
    beta, gamma = model[1].bias.detach(), model[1].weight.detach()
    mean, var = relu_moments(beta, gamma)
    shape, view = ((3000, 12, 6, 6), (1, -1, 1, 1)) if kind == "conv" else ((20000, 12), (1, -1))
    x = torch.relu(beta.view(view) + gamma.view(view) * torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    removed = [0, 3, 4, 9]
    kept = [i for i in range(12) if i not in removed]
    w = consumer.weight.detach().clone().reshape(7, 12, -1)
    plain, compensated = copy.deepcopy(model), copy.deepcopy(model)
    _removed_group(plain, example, removed)[1].prune()
    DG, group = _removed_group(compensated, example, removed)
    assert compensate_group(group, {compensated[3]: (mean, torch.diag(var))}, DG) == 1
    group.prune()
    with torch.no_grad():
        z = consumer(x)
        z_plain, z_obs = plain[3](x[:, kept]), compensated[3](x[:, kept])
    dims = [0, 2, 3] if kind == "conv" else [0]
    err = lambda a: (z - a).pow(2).mean(dims)  # noqa: E731  per output channel
    inner = (lambda a: (z - a)[:, :, 1:-1, 1:-1].pow(2).mean([0, 2, 3])) if kind == "conv" else err
    shift = (w[:, removed].sum(2) * mean[removed]).sum(1)
    predicted = (w[:, removed].pow(2).sum(2) * var[removed]).sum(1)  # OBS saliency per output
    assert (err(z_obs) < err(z_plain)).all()
    assert torch.allclose(inner(z_obs), predicted, rtol=0.1)
    assert torch.allclose(inner(z_plain) - inner(z_obs), shift.pow(2), rtol=0.1, atol=0.02 * predicted.mean())
    for delta in (0.2, -0.2):  # optimal (away from zero padding): moving the bias either way adds error
        assert (inner(z_obs + delta) > inner(z_obs)).all()


def test_correlated_compensation_uses_the_kept_channels():
    """With correlated inputs N(mu, C), folding the regression on the kept channels into their weights beats
    the mean shift alone, and the error left is the OBS prediction sum_o w_S (C_SS - C_SR C_RR^-1 C_RS) w_S."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 10), nn.Linear(10, 6)).eval()
    example = torch.randn(2, 4)
    a = torch.randn(10, 10)
    cov = a @ a.t() / 10 + 0.05 * torch.eye(10)
    mu = torch.randn(10)
    x = mu + torch.randn(50_000, 10, generator=torch.Generator().manual_seed(2)) @ torch.linalg.cholesky(cov).t()
    removed, kept = [1, 5, 6], [i for i in range(10) if i not in (1, 5, 6)]
    full, mean_only = copy.deepcopy(model), copy.deepcopy(model)
    DG, group = _removed_group(full, example, removed)
    compensate_group(group, {full[1]: (mu, cov)}, DG)
    group.prune()
    DG, group = _removed_group(mean_only, example, removed)
    compensate_group(group, {mean_only[1]: (mu, torch.diag(cov.diagonal()))}, DG)
    group.prune()
    with torch.no_grad():
        z = model[1](x)
        e_full = (z - full[1](x[:, kept])).pow(2).mean(0)
        e_mean = (z - mean_only[1](x[:, kept])).pow(2).mean(0)
    w_s = model[1].weight.detach()[:, removed]
    S, R = torch.tensor(removed), torch.tensor(kept)
    resid = cov[S][:, S] - cov[S][:, R] @ torch.linalg.solve(cov[R][:, R], cov[R][:, S])
    predicted = torch.einsum("os,st,ot->o", w_s, resid, w_s)
    assert e_full.sum() < 0.5 * e_mean.sum()
    assert torch.allclose(e_full, predicted, rtol=0.1, atol=1e-3)


_TRAINED = {}


def _trained_resnet(digits, seed):
    """A digits-trained ResNet-20 (cached per seed for this module)."""
    if seed not in _TRAINED:
        model, _ = train_network("resnet", {"depth": 20}, optim={"epochs": 12}, seed=seed, data=digits, progress=False)
        _TRAINED[seed] = model.eval()
    return _TRAINED[seed]


def test_obs_prune_reaches_target_data_free(digits):
    """One trained ResNet-20, 2x MACs, no data: OBS hits the target and keeps clearly more accuracy than
    plain group-L2 pruning of the same network (the two-seed version with a larger margin is marked slow)."""
    trained = _trained_resnet(digits, 0)
    x = digits.example_inputs()
    loader = digits.loader("val", 512, shuffle=False)
    model = copy.deepcopy(trained)
    base, _ = macs_and_params(model, x)
    report = obs_prune(model, x, 2.0, steps=30, num_samples=512)  # the benchmark's (cheaper) settings
    macs, _ = macs_and_params(model, x)
    assert base / macs >= 2.0 and report["compensated_layers"] > 0
    l2 = copy.deepcopy(trained)
    prune_to_speedup(l2, x, 2.0, steps=30)
    acc_obs, acc_l2 = evaluate(model, loader, "cpu")["acc"], evaluate(l2, loader, "cpu")["acc"]
    print(f"2x data-free on ResNet-20 seed 0 (val): OBS {acc_obs:.3f}, group-L2 {acc_l2:.3f}")
    assert acc_obs >= acc_l2 + 0.1


@pytest.mark.slow
def test_obs_beats_group_l2_at_2x_without_data(digits):
    """No data, no finetuning, 2x MACs: OBS (saliency + compensation) beats group-L2 pruning, with either
    allocation (uniform per group or one global threshold), by a clear margin averaged over two seeds."""
    x = digits.example_inputs()
    loader = digits.loader("val", 512, shuffle=False)
    acc = {"obs": [], "l2": [], "l2_global": []}
    for seed in (0, 1):
        model = _trained_resnet(digits, seed)
        for name in acc:
            m = copy.deepcopy(model)
            if name == "obs":
                obs_prune(m, x, 2.0)
            else:
                prune_to_speedup(m, x, 2.0, global_pruning=name == "l2_global")
            acc[name].append(evaluate(m, loader, "cpu")["acc"])
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    print(acc)
    assert mean["obs"] >= max(mean["l2"], mean["l2_global"]) + 0.15
