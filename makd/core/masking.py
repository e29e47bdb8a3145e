"""Padding masks and masked reductions shared by every loss (:mod:`makd.core.losses`, :mod:`makd.core.baseline_losses`).

A padding mask ``mask`` is (B, T) or (B,) with 1/True = valid (bool, int or float); ``None`` means all valid.
Half-precision inputs are upcast to float32 before any reduction.
"""
from __future__ import annotations

import torch
from torch import Tensor


def upcast(x: Tensor) -> Tensor:
    """Upcast half precision to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def valid_mask(mask, shape: tuple[int, ...], device) -> Tensor:
    """Boolean mask of ``shape`` (all True when ``mask`` is None), checked against the data's shape."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the loss needs {tuple(shape)} "
                         "(one entry per example/token, 1 = valid, 0 = padding)")
    return mask != 0


def key_rows(mask, key_mask, shape: tuple[int, int], device) -> Tensor:
    """The keys an attention-type loss sums over, (B, T) bool: ``key_mask`` when given, else ``mask`` (the queries'
    mask; the two differ when only some queries count, e.g. a decoder's response tokens, which attend to the
    prompt's tokens too)."""
    return valid_mask(mask if key_mask is None else key_mask, shape, device)


def same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    """ValueError naming the loss when the student's and the teacher's tensors differ in shape."""
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}")


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_last p (log p − log q) with 0·log 0 = 0; inputs are log-probabilities (..., K) -> (...)."""
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))           # no 0·(−inf) NaN, even in grads
    return (p * diff).sum(-1)


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` over True entries of ``valid`` (same shape); 0 when nothing is valid."""
    x = torch.where(valid, x, torch.zeros_like(x))
    return x.sum() / valid.sum().clamp_min(1)


class _PrecomputedGrad(torch.autograd.Function):
    """``value`` (any shape, no graph) whose gradient w.r.t. ``x`` is ``grad`` · (upstream broadcast over x's extra
    trailing dims): the loss and its gradient are computed together in one no-grad pass, and the only tensor kept
    for backward is ``grad`` itself (not the several intermediates autograd would keep)."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.extra = grad.dim() - value.dim()
        ctx.dtype = x.dtype
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream: Tensor):
        (grad,) = ctx.saved_tensors
        up = upstream.reshape(upstream.shape + (1,) * ctx.extra)
        return (grad * up).to(ctx.dtype), None, None


def with_grad(x: Tensor, value: Tensor, grad: Tensor | None) -> Tensor:
    """``value`` with d value / d x = ``grad`` (shape of x; for a non-scalar value, d value[i] / d x[i, ...]).

    ``grad`` None (x needs no gradient): ``value`` as it is. Used by the losses that compute their gradient in
    the forward pass (:func:`makd.core.losses.masked_mse`, the attention losses on scores); once differentiable."""
    if grad is None or not x.requires_grad:
        return value
    return _PrecomputedGrad.apply(x, value, grad)
