"""The reparameterizations computed by PyTorch, called with normref's arguments and returning
normref's outputs in order: the independent implementation the tests (and the golden cases'
check in tests/golden/test_golden.py, through `torch_reparam_ops`) compare normref against.

weight_norm and spectral_norm run PyTorch's own parametrizations; the others have no PyTorch op
and are written from their papers' reference code with torch operations, so that autograd, not a
hand derivation, supplies the gradients.
"""

from __future__ import annotations

import numpy as np


def torch_reparam_ops(torch):
    """{op name: function(*inputs, **hyperparameters) -> output or tuple of outputs}."""
    F = torch.nn.functional

    def weight_norm(g, v, *, dim):
        # PyTorch's parametrization calls torch._weight_norm(v, g, dim), with g in the keepdims
        # shape and dim=-1 (what dim=None becomes there) meaning the whole tensor.
        if dim is None:
            return torch._weight_norm(v, g.reshape(()), -1)
        keep = tuple(n if i == dim else 1 for i, n in enumerate(v.shape))
        return torch._weight_norm(v, g.reshape(keep), dim)

    def spectral_norm(weight, u, v, *, dim, n_power_iterations, eps, training, exact):
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=eps), None, None
        if exact:
            return _exact_spectral_norm(torch, weight, u, v, dim, training)
        module = torch_spectral_norm_module(
            torch, weight, dim=dim, n_power_iterations=n_power_iterations, eps=eps
        )
        with torch.no_grad():
            module._u.copy_(u)
            module._v.copy_(v)
        module.train(training)
        w = module(weight)
        return w, module._u.detach().clone(), module._v.detach().clone()

    def weight_standardization(weight, *, eps):
        # joe-siyuan-qiao/WeightStandardization: std_mean over the fan-in (unbiased), eps on std
        std, mean = torch.std_mean(weight, dim=tuple(range(1, weight.ndim)), keepdim=True)
        return (weight - mean) / (std + eps)

    def scaled_weight_standardization(weight, gain, *, gamma, eps):
        # deepmind-research nfnets/base.py WSConv2D.standardize_weight, in PyTorch's layout
        dims = tuple(range(1, weight.ndim))
        fan_in = int(np.prod(weight.shape[1:]))
        var, mean = torch.var_mean(weight, dim=dims, keepdim=True, unbiased=False)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=eps)) * gamma
        if gain is not None:
            scale = scale * gain.reshape((-1,) + (1,) * (weight.ndim - 1))
        return weight * scale - mean * scale

    def weight_compander(v, a, b):
        a = 1.0 if a is None else a
        b = 1.0 if b is None else b
        return a * torch.atan(v / b)

    def binary_connect(w, *, stochastic, seed, scale, mask_gradient):
        if stochastic:
            p = torch.clamp((w.detach().double() / scale + 1) / 2, 0, 1)
            draws = np.random.Generator(np.random.PCG64(seed)).random(tuple(w.shape))
            up = torch.from_numpy(draws) < p
        else:
            up = w.detach() >= 0
        hard = torch.where(up, scale, -scale).to(w.dtype)
        # straight-through: the value of `hard`, the gradient of `surrogate`
        surrogate = w * (w.detach().abs() <= scale) if mask_gradient else w
        return surrogate + (hard - surrogate).detach()

    return {
        "weight_norm": weight_norm,
        "spectral_norm": spectral_norm,
        "weight_standardization": weight_standardization,
        "scaled_weight_standardization": scaled_weight_standardization,
        "weight_compander": weight_compander,
        "binary_connect": binary_connect,
    }


def torch_spectral_norm_module(torch, weight, *, dim, n_power_iterations, eps):
    """PyTorch's spectral-norm parametrization (the `_SpectralNorm` module that
    torch.nn.utils.parametrizations.spectral_norm registers), built for `weight`. Calling it on a
    weight tensor runs PyTorch's power method on its u, v buffers (in training mode) and returns
    weight / sigma, differentiable with respect to that tensor."""
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(weight.detach().clone())
    # Registering draws u, v from PyTorch's global generator: keep the caller's stream intact.
    with torch.random.fork_rng():
        # PyTorch refuses 0 power steps at construction; the attribute itself may be 0.
        torch.nn.utils.parametrizations.spectral_norm(
            holder, dim=dim, n_power_iterations=max(n_power_iterations, 1), eps=eps
        )
    module = holder.parametrizations.weight[0]
    module.n_power_iterations = n_power_iterations
    return module


def _exact_spectral_norm(torch, weight, u, v, dim, training):
    """weight / sigma_max with sigma_max from torch.linalg.matrix_norm(ord=2) (autograd through
    the SVD); the singular vectors signed like normref's (u1 agrees with the given u)."""
    perm = (dim,) + tuple(i for i in range(weight.ndim) if i != dim)
    mat = weight.permute(perm).reshape(weight.shape[dim], -1)
    sigma = torch.linalg.matrix_norm(mat, ord=2)
    if not training:
        return weight / sigma, u, v
    left, _, right_t = torch.linalg.svd(mat.detach(), full_matrices=False)
    u1, v1 = left[:, 0], right_t[0]
    sign = -1.0 if float(u1 @ u.detach().to(u1.dtype)) < 0 else 1.0
    return weight / sigma, (sign * u1).to(u.dtype), (sign * v1).to(v.dtype)
