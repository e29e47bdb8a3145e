"""What a factorisation learns from calibration inputs: per-matrix input statistics, from forward passes.

Two statistics of the inputs ``x`` (d_in,) a matrix sees on the valid (non-padding) tokens of a calibration set:

- activation scales (ASVD-style): s_j = (mean_t |x_tj|)^½, used as ``W·diag(s)`` → truncated SVD → ``B·diag(1/s)``;
- the input Gram matrix G = Σ_t x_t x_tᵀ (d_in, d_in), in float64, and its whitening factor S, the Cholesky
  factor of G + λ·mean(diag G)·I = S Sᵀ (λ = ``damping``, 1e-4 by default; raised ×10 until the factorisation
  succeeds when G is numerically singular — the λ used is returned).

Why the Gram matrix: the teacher-forced matrix aspect of MaKD asks for the rank-r ``A B`` that minimises
‖W X − A B X‖_F² over the teacher's inputs X (d_in, N). Since ‖M X‖_F² = tr(M G Mᵀ) = ‖M S‖_F², the loss is
‖W S − A B S‖_F², minimised by the truncated SVD of ``W S``: U_r Σ_r V_rᵀ = [W S]_r, A = U_r Σ_r^½,
B = Σ_r^½ V_rᵀ S⁻¹ (SVD-LLM's truncation-aware whitening). The residual is Σ_{i>r} σ_i(W S)², exact when λ = 0.
So the matrix aspect with teacher forcing is solved in closed form at initialisation.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from makd.core.capture import LABEL_KEYS

__all__ = ["input_statistics", "activation_scales", "input_grams", "whitening_factor", "layer_calls",
           "layer_input_grams"]



def model_inputs(batch: Mapping, device) -> dict:
    """``batch`` without its label keys, tensors moved to ``device``: what the model's forward takes."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k not in LABEL_KEYS}


def first_output(output):
    """The hidden states a transformer layer returns (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def as_batches(calibration) -> list[Mapping]:
    """A batch dict (or BatchEncoding) or a non-empty list of them, as a list of batches."""
    batches = [calibration] if isinstance(calibration, Mapping) else list(calibration)  # BatchEncoding too
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise ValueError("calibration must be a dict of model inputs or a non-empty list of such dicts")
    return batches


def input_statistics(model: nn.Module, names, calibration,
                     reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Σ over valid tokens of ``reduce(x)`` for the input x (N, d_in) of each module in ``names``, and the token
    counts, from one no-grad pass of ``model`` over ``calibration`` (its padding mask selects the tokens)."""
    names = list(names)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(name):
        def pre(_mod, args):
            x = args[0].detach()                                              # (B, T, d_in)
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask]                                                   # (N, d_in)
            x = x.reshape(-1, x.shape[-1]).double()                           # (N, d_in)
            sums[name] = sums.get(name, 0) + reduce(x)
            counts[name] += x.shape[0]
        return pre

    device = next(model.parameters()).device
    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in as_batches(calibration):
                batch = model_inputs(batch, device)
                mask = batch.get("attention_mask")
                state["mask"] = mask.bool() if mask is not None else None
                model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if not counts[n]]
    if missing:
        raise ValueError(f"calibration never reached module(s) {missing}")
    return sums, counts


def activation_scales(model: nn.Module, names, calibration) -> dict[str, torch.Tensor]:
    """s_j = (mean |x_j| over valid tokens)^½ of each module's input (d_in,), floored at 1e-6 of its max."""
    sums, counts = input_statistics(model, names, calibration, lambda x: x.abs().sum(0))
    out = {}
    for n, total in sums.items():
        s = (total / counts[n]).sqrt()                                        # (d_in,)
        out[n] = s.clamp_min(1e-6 * float(s.max()) + 1e-12)
    return out


def input_grams(model: nn.Module, names, calibration) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """G = Σ_t x_t x_tᵀ (d_in, d_in, float64) of each module's input over valid tokens, and the token counts."""
    return input_statistics(model, names, calibration, lambda x: x.T @ x)


def whitening_factor(gram: torch.Tensor, damping: float = 1e-4, tries: int = 8) -> tuple[torch.Tensor, float]:
    """(S, λ): the lower-triangular Cholesky factor of G + λ·mean(diag G)·I = S Sᵀ (float64), with λ = ``damping``
    raised ×10 (at most ``tries`` times) until G + λ·mean(diag G)·I is numerically positive definite."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    g = gram.to(torch.float64)                                                # (d_in, d_in)
    g = (g + g.T) / 2
    level = _level(g)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    lam = damping
    for _ in range(tries):
        chol, info = torch.linalg.cholesky_ex(g + lam * level * eye)
        if int(info) == 0:
            return chol, lam
        lam = max(lam * 10, 1e-10)
    raise ValueError(f"the input Gram matrix is not positive definite even with damping {lam / 10:g}: "
                     "give more calibration tokens")


def _level(gram: torch.Tensor) -> float:
    """The scale the damping λ is a fraction of: mean(diag G), or 1 for an all-zero G."""
    return float(gram.to(torch.float64).diagonal().mean()) or 1.0


def damped_cross(cross: torch.Tensor, gram: torch.Tensor, lam: float) -> torch.Tensor:
    """XᵀX̃ + λ·mean(diag X̃ᵀX̃)·I: the cross Gram with the damping :func:`whitening_factor` added to X̃ᵀX̃, as if
    the same virtual tokens were added to both sides — the damping then pulls the fit towards W (X = X̃ gives the
    plain whitened factors back exactly) instead of towards 0."""
    eye = torch.eye(cross.shape[0], dtype=torch.float64, device=cross.device)
    return cross.to(torch.float64) + lam * _level(gram) * eye


def layer_calls(model: nn.Module, layers: nn.ModuleList, calibration) -> list[list[tuple[tuple, dict]]]:
    """How each of ``layers`` is called on each calibration batch: ``[batch][layer] = (args, kwargs)``, from one
    no-grad pass (``args[0]`` or ``kwargs["hidden_states"]``: the layer's input; the rest — attention mask,
    position embeddings — is what calling the layer alone needs). Lets a layer-by-layer procedure run one layer
    at a time instead of the whole model once per layer."""
    calls: list[list[tuple[tuple, dict]]] = []
    current: list[tuple[tuple, dict] | None] = []

    def hook(i):
        def pre(_mod, args, kwargs):
            current[i] = (tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs))
        return pre

    device = next(model.parameters()).device
    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in as_batches(calibration):
                current[:] = [None] * len(layers)
                inputs = model_inputs(batch, device)
                if "use_cache" in inspect.signature(model.forward).parameters:
                    inputs["use_cache"] = False            # no KV cache: each recorded call replays on its own
                model(**inputs)
                calls.append(list(current))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})


def _valid_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A module input (B, T, d_in) as float64 rows (N, d_in) of its valid tokens (all rows without a mask)."""
    x = x.detach()
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        x = x[mask]                                                           # (N, d_in)
    return x.reshape(-1, x.shape[-1]).double()


def layer_input_grams(layer: nn.Module, names: dict[str, nn.Module], calls: list[tuple[tuple, dict]],
                      hidden: list[torch.Tensor], masks: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """G = Σ x xᵀ (float64) of the inputs of the modules ``names`` (name -> module inside ``layer``) when
    ``layer`` alone runs on ``hidden[b]`` with the rest of its recorded call ``calls[b]``, valid tokens only."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name, b):
        def pre(_mod, args):
            x = _valid_rows(args[0], masks[b])                                # (N, d_in)
            sums[name] = sums.get(name, 0) + x.T @ x
        return pre

    with torch.no_grad():
        for b, (args, kwargs) in enumerate(calls):
            handles = [m.register_forward_pre_hook(hook(n, b)) for n, m in names.items()]
            try:
                layer(*_with_hidden(args, kwargs, hidden[b])[0], **_with_hidden(args, kwargs, hidden[b])[1])
            finally:
                for h in handles:
                    h.remove()
    return sums


def layer_cross_grams(teacher_layer: nn.Module, student_layer: nn.Module, names: list[str],
                      calls: list[tuple[tuple, dict]], hidden_t: list[torch.Tensor], hidden_s: list[torch.Tensor],
                      masks: list[torch.Tensor | None]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """For the modules ``names`` (relative to the layer, the same in both): the student inputs' Gram X̃ᵀX̃ and the
    cross Gram XᵀX̃ of the teacher's inputs X against the student's X̃ at the same valid tokens (float64,
    d_in × d_in), with ``teacher_layer`` run on ``hidden_t[b]`` and ``student_layer`` on ``hidden_s[b]``, each with
    the rest of its recorded call ``calls[b]``."""
    grams: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}

    def teacher_hook(name, b):
        def pre(_mod, args):
            seen[name] = _valid_rows(args[0], masks[b])
        return pre

    def student_hook(name, b):
        def pre(_mod, args):
            x = _valid_rows(args[0], masks[b])                                # X̃ (N, d_in)
            grams[name] = grams.get(name, 0) + x.T @ x
            cross[name] = cross.get(name, 0) + seen.pop(name).T @ x           # Xᵀ X̃
        return pre

    with torch.no_grad():
        for b, (args, kwargs) in enumerate(calls):
            for layer, hidden, hook in ((teacher_layer, hidden_t, teacher_hook), (student_layer, hidden_s, student_hook)):
                handles = [layer.get_submodule(n).register_forward_pre_hook(hook(n, b)) for n in names]
                try:
                    a, k = _with_hidden(args, kwargs, hidden[b])
                    layer(*a, **k)
                finally:
                    for h in handles:
                        h.remove()
    return grams, cross


def layer_outputs(layer: nn.Module, calls: list[tuple[tuple, dict]], hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """``layer`` alone on ``hidden[b]`` with the rest of its recorded call: its output hidden states per batch."""
    with torch.no_grad():
        return [first_output(layer(*_with_hidden(a, k, h)[0], **_with_hidden(a, k, h)[1])) for (a, k), h in zip(calls, hidden)]
