"""Fused low-rank execution: sibling ``LowRankLinear`` modules that read the same input share ONE GEMM.

Q, K and V of an attention layer (BERT / MiniLM, Llama) read the same hidden states, and so do Llama's
``gate_proj`` and ``up_proj``. After :func:`fuse` the first of them to be called computes

    Z = X [B_1; B_2; …]ᵀ      (N, Σ w_i),   w_i = r_i (low rank) or d_out,i (dense)

once, and each member takes its own columns: a low-rank member applies its ``up`` factor, ``y_i = Z_i A_iᵀ + b_i``.
A member whose factors cost no less than the matrix they replace, r·(d_in + d_out) ≥ d_in·d_out (times
``dense_from``), contributes its dense product W = A B instead and runs as one GEMM, so no matrix is slower than the
teacher's; a lone such matrix (GPT-2's ``c_attn``, an FFN matrix) runs ``F.linear(x, A B, b)``.

Nothing a model exposes changes: every module is still called by its parent with its own input (forward hooks on
q/k/v/gate/up see that module's input and output, :mod:`makd.core.capture`), module names, parameters and
state-dict keys are those of the unfused student, outputs differ only by float rounding. Caches:

- the shared product Z is kept, with a reference to X, only until every member of the group has taken its columns
  (at most one per group while some member is still to come); a member is served from it only when X is the *same
  tensor object* with the same ``_version`` (inference tensors keep none: under ``torch.inference_mode`` only the
  identity is checked), the same grad / inference / autocast mode, and every factor has the identity, ``_version``,
  address, dtype and shape it had, and only once per computation;
- the stacked first-stage weight (and the dense A B) is cached only when no gradient can flow into it (grad mode
  off, or no factor requires grad), under the same parameter key — in evaluation this holds a copy of the stacked
  B's and of every dense A B; in training it is rebuilt every call (Σ w_i × d_in numbers, negligible beside the
  GEMM), so an optimizer step can never leave it stale.

A module called outside its group (a shallow copy such as a ``DataParallel`` replica) runs unfused. Deep copies and
pickles carry the groups without their caches. :func:`unfuse` restores the plain two-GEMM forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from makd.core import families
from makd.core.lowrank import LowRankLinear

__all__ = ["fuse", "unfuse", "is_fused", "runs_dense", "sibling_groups", "SHARED_INPUT", "DENSE_FROM"]

SHARED_INPUT = (("q", "k", "v"), ("ffn_gate", "ffn_in"))   # roles whose matrices read the same tensor
DENSE_FROM = 1.0   # a matrix runs dense when r·(d_in + d_out) ≥ DENSE_FROM · d_in·d_out


def runs_dense(module: LowRankLinear, dense_from: float = DENSE_FROM) -> bool:
    """True when r·(d_in + d_out) ≥ dense_from · d_in·d_out: the factors cost no less than the dense matrix."""
    d_in, d_out = module.in_features, module.out_features
    return module.rank * (d_in + d_out) >= dense_from * d_in * d_out


def sibling_groups(model: nn.Module, modules: dict[str, str] | None = None) -> list[list[str]]:
    """Names of the LowRankLinear modules that read one input, per layer and :data:`SHARED_INPUT` role set
    (only groups of two or more with one d_in, dtype and device); [] for an architecture of no known family.
    ``modules``: a hand-written module map (default: the one recorded by ``factorize``, if any)."""
    if modules is None:
        modules = (getattr(model, "makd_factorization", None) or {}).get("modules")
    try:
        family = families.detect_family(model, modules)
        layers = families.get_layers(model, family)
        prefix = families.layer_prefix(model, family)
    except families.UnsupportedModelError:
        return []
    out = []
    for i, layer in enumerate(layers):
        for roles in SHARED_INPUT:
            found = {}
            for rel in (family.modules[r] for r in roles if r in family.modules):
                try:
                    m = layer.get_submodule(rel)
                except AttributeError:
                    continue
                if isinstance(m, LowRankLinear):
                    found[f"{prefix}.{i}.{rel}"] = m
            same = [n for n, m in found.items() if _signature(m) == _signature(next(iter(found.values())))]
            if len(same) > 1:
                out.append(same)
    return out


def _signature(m: LowRankLinear) -> tuple:
    w = m.down.weight
    return m.in_features, w.dtype, w.device


def _version(t: torch.Tensor) -> int:
    """``t._version``; -1 for an inference tensor (created under inference_mode), which keeps no counter."""
    return -1 if t.is_inference() else t._version


def _grad_state(x: torch.Tensor) -> tuple:
    kind = x.device.type
    auto = torch.is_autocast_enabled(kind)
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), auto,
            torch.get_autocast_dtype(kind) if auto else None)


def _factors(m: LowRankLinear, dense: bool) -> tuple[torch.Tensor, ...]:
    """What a member's columns of Z depend on: B, and A too when it runs dense (read past Module.__getattr__)."""
    down = m._modules["down"]._parameters["weight"]
    return (down, m._modules["up"]._parameters["weight"]) if dense else (down,)


def _key(params) -> tuple:
    return tuple((id(p), _version(p), p.data_ptr(), p.dtype, p.device, p.shape) for p in params)


class _Shared:
    """Z = X Wᵀ for one input X, until every member has taken its columns."""
    __slots__ = ("x", "version", "mode", "params", "keys", "z", "pending")

    def __init__(self, x, mode, params, keys, z, n):
        self.x, self.version, self.mode, self.params, self.keys, self.z = x, _version(x), mode, params, keys, z
        self.pending = set(range(n))


class _Group:
    """Members reading one input; computes their shared first GEMM and hands each member its columns."""

    def __init__(self, members: list[LowRankLinear], dense: list[bool]):
        self.members, self.dense = members, dense
        widths = [m.out_features if d else m.rank for m, d in zip(members, dense)]
        self.columns = [(sum(widths[:j]), sum(widths[:j + 1])) for j in range(len(members))]   # member's Z columns
        self._weight = None          # (key, params, stacked weight): only while no gradient can flow into it
        self._shared = None          # _Shared, while some member is still to be served

    def __getstate__(self):          # deepcopy / pickle: the members, never a cache
        return {**self.__dict__, "_weight": None, "_shared": None}

    # ----------------------------------------------------------------------------------------- weights
    def _stack(self) -> torch.Tensor:
        parts = [m.up.weight @ m.down.weight if dense else m.down.weight          # (d_out, d_in) | (r, d_in)
                 for m, dense in zip(self.members, self.dense)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]                    # (Σ w_i, d_in)

    def weight(self, params: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """The stacked first-stage weight (Σ w_i, d_in); cached only while no gradient can flow into it."""
        grad = torch.is_grad_enabled()
        if grad and any(p.requires_grad for ps in params for p in ps):
            self._weight = None
            return self._stack()
        key = (tuple(_key(ps) for ps in params), grad, torch.is_inference_mode_enabled())
        if self._weight is None or self._weight[0] != key:
            with torch.no_grad():
                self._weight = (key, params, self._stack())
        return self._weight[2]

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, module: LowRankLinear, x: torch.Tensor) -> torch.Tensor:      # (..., d_in)
        i = next((j for j, m in enumerate(self.members) if m is module), None)
        if i is None:                              # a shallow copy (DataParallel replica): run unfused
            return module.up(module.down(x))
        bias = module._modules["up"].bias
        if len(self.members) == 1:                 # a lone dense matrix: one GEMM with A·B
            return F.linear(x, self.weight([_factors(module, True)]), bias)         # (..., d_out)
        z = self._shared_product(x, i)                                              # (N, Σ w_i)
        lo, hi = self.columns[i]
        part = z[:, lo:hi]                            # (N, w_i): rows strided, still one addmm without a copy
        if not self.dense[i]:
            y = F.linear(part, module._modules["up"].weight, bias)                  # (N, d_out)
        else:
            y = part + bias if bias is not None else part.contiguous()               # (N, d_out)
        return y.view(*x.shape[:-1], y.shape[-1])                                    # (..., d_out)

    def _shared_product(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Z for input ``x``: served from the cache when it was computed from this very tensor, unchanged, in this
        mode, with member i's factors as they are now (its columns depend on nothing else), i not yet served."""
        mode, c = _grad_state(x), self._shared
        if (c is None or c.x is not x or c.version != _version(x) or c.mode != mode or i not in c.pending
                or c.keys[i] != _key(_factors(self.members[i], self.dense[i]))):
            params = [_factors(m, d) for m, d in zip(self.members, self.dense)]
            z = F.linear(x.reshape(-1, x.shape[-1]), self.weight(params))            # (N, Σ w_i): the one GEMM
            c = self._shared = _Shared(x, mode, params, [_key(ps) for ps in params], z, len(self.members))
        c.pending.discard(i)
        if not c.pending:                          # every member served: drop X and Z
            self._shared = None
        return c.z


def fuse(model: nn.Module, *, modules: dict[str, str] | None = None, dense_from: float = DENSE_FROM) -> nn.Module:
    """Switch ``model``'s LowRankLinear modules to fused execution in place (see the module docstring) and return it.

    ``modules``: a hand-written module map, as for :func:`makd.core.factorize.factorize` (else the one the student's
    record holds, else the detected family; an unknown architecture gets the dense fallback only). ``dense_from``:
    a matrix runs dense when r·(d_in + d_out) ≥ dense_from · d_in·d_out (1.0: whenever the factors are not cheaper).
    Idempotent.
    """
    if not dense_from > 0:
        raise ValueError(f"dense_from must be > 0, got {dense_from}")
    unfuse(model)
    grouped = set()
    for names in sibling_groups(model, modules):
        members = [model.get_submodule(n) for n in names]
        group = _Group(members, [runs_dense(m, dense_from) for m in members])
        for m in members:
            m._fused = group
        grouped.update(names)
    for name, m in model.named_modules():
        if isinstance(m, LowRankLinear) and name not in grouped and runs_dense(m, dense_from):
            m._fused = _Group([m], [True])
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Back to the plain ``up(down(x))`` forward for every LowRankLinear of ``model`` (in place); returns it."""
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            m.__dict__.pop("_fused", None)
    return model


def is_fused(model: nn.Module) -> bool:
    """True when some LowRankLinear of ``model`` runs fused (shares a GEMM or runs dense)."""
    return any(isinstance(m, LowRankLinear) and m._fused is not None for m in model.modules())
