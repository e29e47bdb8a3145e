"""The low-rank modules of an SVD student: ``LowRankLinear`` (two thin linear maps) and ``LowRankEmbedding``.

For a weight ``W`` (d_out, d_in) with SVD ``W = U Σ Vᵀ`` the rank-r factors are

    A = U_r Σ_r^½   (d_out, r)      B = Σ_r^½ V_rᵀ   (r, d_in)      y = (x Bᵀ) Aᵀ + b

computed in float64 and cast back. Weighted variants factorise ``W·T`` and undo ``T`` on ``B``: a diagonal
T = diag(s) (activation-aware) or a whitening factor T = S, lower triangular with S Sᵀ = the input Gram matrix
(:mod:`makd.core.calibration`), where B = Σ_r^½ V_rᵀ S⁻¹ minimises ‖W X − A B X‖_F over the calibration inputs X.
Which matrices to factorise and at which ranks: :mod:`makd.core.factorize`.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["LowRankLinear", "LowRankEmbedding", "dims", "dense_weight"]


def _svd_factors(w: torch.Tensor, rank: int, scale: torch.Tensor | None = None,
                 whiten: torch.Tensor | None = None, cross: torch.Tensor | None = None):
    """A = U_r Σ_r^½ (d_out, r), B = Σ_r^½ V_rᵀ T⁻¹ (r, d_in) from the SVD U Σ Vᵀ of W·T, in float64;
    T = I, diag(``scale``) or the lower-triangular ``whiten`` factor S (d_in, d_in). With ``cross`` = XᵀX̃ (the
    Gram of the teacher's inputs X against the student's X̃ at the same tokens, d_in × d_in) and ``whiten`` the
    Cholesky factor of X̃ᵀX̃: the SVD of W·cross·S⁻ᵀ instead of W·S — the rank-r minimiser of ‖W Xᵀ − A B X̃ᵀ‖_F
    (reduced-rank regression; X = X̃ gives W·S back)."""
    if scale is not None and whiten is not None:
        raise ValueError("give scale= or whiten=, not both")
    if cross is not None and whiten is None:
        raise ValueError("cross= needs whiten= (the Cholesky factor of the student inputs' Gram matrix)")
    w64 = w.detach().to(torch.float64)                                       # (d_out, d_in)
    if scale is not None:
        s = scale.detach().to(device=w.device, dtype=torch.float64)                 # (d_in,)
        w64 = w64 * s[None, :]
    if whiten is not None:
        chol = whiten.detach().to(device=w.device, dtype=torch.float64)             # (d_in, d_in), lower
        if cross is None:
            w64 = w64 @ chol                                                  # W S
        else:                                                                 # W·cross·S⁻ᵀ: solve G Sᵀ = W·cross
            wc = w64 @ cross.detach().to(device=w.device, dtype=torch.float64)
            w64 = torch.linalg.solve_triangular(chol.T, wc, upper=True, left=False)
    u, sig, vh = torch.linalg.svd(w64, full_matrices=False)                    # (o, k), (k,), (k, i)
    root = sig[:rank].sqrt()                                                  # (r,)
    a = u[:, :rank] * root[None, :]                                           # (d_out, r)
    b = root[:, None] * vh[:rank]                                             # (r, d_in)
    if scale is not None:
        b = b / s[None, :]
    if whiten is not None:                                                    # B S = Σ_r^½ V_rᵀ  →  B = (…) S⁻¹
        b = torch.linalg.solve_triangular(chol, b, upper=False, left=False)
    return a.to(w.dtype), b.to(w.dtype)


def dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear, GPT-2 Conv1D, LowRankLinear or nn.Embedding (V, d)."""
    if isinstance(module, (nn.Linear, LowRankLinear)):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, LowRankEmbedding):
        return module.num_embeddings, module.embedding_dim
    raise TypeError(f"cannot factorise a {type(module).__name__}: only nn.Linear, transformers Conv1D "
                    "and nn.Embedding are supported")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (d_out, d_in) matrix of a Linear/Conv1D/LowRankLinear, or the (V, d) table of an embedding."""
    if isinstance(module, Conv1D):
        return module.weight.t()
    if isinstance(module, (LowRankLinear, LowRankEmbedding)):
        return module.dense_weight()
    return module.weight


class LowRankLinear(nn.Module):
    """y = up(down(x)) = (x Bᵀ) Aᵀ + b with ``down`` = B (d_in → r, no bias), ``up`` = A (r → d_out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    _fused = None   # set by makd.core.fused.fuse: run with the siblings that share this input (or dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # (..., d_in)
        if self._fused is not None:
            return self._fused.forward(self, x)                               # (..., d_out)
        return self.up(self.down(x))                                          # (..., d_out)

    def dense_weight(self) -> torch.Tensor:
        return self.up.weight @ self.down.weight                              # (d_out, d_in)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def empty_like(cls, module: nn.Module, rank: int) -> "LowRankLinear":
        """Uninitialised factors shaped for ``module`` (used to rebuild saved students, no SVD)."""
        d_in, d_out = dims(module)
        return cls(d_in, d_out, rank, bias=module.bias is not None,
                   device=module.weight.device, dtype=module.weight.dtype)

    @classmethod
    def from_linear(cls, module: nn.Module, rank: int, scale: torch.Tensor | None = None,
                    whiten: torch.Tensor | None = None, cross: torch.Tensor | None = None) -> "LowRankLinear":
        """Truncated SVD of an nn.Linear or GPT-2 Conv1D: of W, of W·diag(scale) (scale (d_in,)), of W·S for a
        whitening factor S (d_in, d_in), lower triangular, or of W·cross·S⁻ᵀ (``cross``: see :func:`_svd_factors`)."""
        new = cls.empty_like(module, rank)
        if scale is not None and scale.shape != (new.in_features,):
            raise ValueError(f"scale must have shape ({new.in_features},), got {tuple(scale.shape)}")
        if whiten is not None and whiten.shape != (new.in_features, new.in_features):
            raise ValueError(f"whiten must have shape ({new.in_features}, {new.in_features}), got {tuple(whiten.shape)}")
        a, b = _svd_factors(dense_weight(module), rank, scale, whiten, cross)
        with torch.no_grad():
            new.up.weight.copy_(a)
            new.down.weight.copy_(b)
            if module.bias is not None:
                new.up.bias.copy_(module.bias)
        return new


class LowRankEmbedding(nn.Module):
    """table ≈ E P with E = U_r Σ_r^½ (V, r) looked up, P = Σ_r^½ V_rᵀ (r, d) applied by ``proj``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        if not 1 <= rank <= min(num_embeddings, embedding_dim):
            raise ValueError(f"rank must be in [1, {min(num_embeddings, embedding_dim)}], got {rank}")
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx, device=device, dtype=dtype)
        self.proj = nn.Linear(rank, embedding_dim, bias=False, device=device, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:                     # (B, T)
        return self.proj(self.embed(ids))                                     # (B, T, d)

    def dense_weight(self) -> torch.Tensor:
        return self.embed.weight @ self.proj.weight.t()                       # (V, d)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"

    @classmethod
    def empty_like(cls, emb: nn.Embedding, rank: int) -> "LowRankEmbedding":
        return cls(emb.num_embeddings, emb.embedding_dim, rank, emb.padding_idx,
                   device=emb.weight.device, dtype=emb.weight.dtype)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, rank: int) -> "LowRankEmbedding":
        new = cls.empty_like(emb, rank)
        u_s, s_v = _svd_factors(emb.weight, rank)                             # (V, r), (r, d)
        with torch.no_grad():
            new.embed.weight.copy_(u_s)
            new.proj.weight.copy_(s_v.t())
        return new
