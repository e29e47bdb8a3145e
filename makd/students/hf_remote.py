"""Low-rank (truncated-SVD) students of makd, loadable with transformers alone.

This file is copied as ``modeling_makd.py`` into every student folder that makd saves; it imports only torch and
transformers, so ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` (or
``AutoModel``, ``AutoModelForQuestionAnswering``, ``AutoModelForCausalLM``, ``pipeline(...)``) works without
makd installed. The folder's ``config.json`` is the teacher's config plus:

- ``model_type``: ``makd_<teacher model_type>`` (so that a loader without ``trust_remote_code`` refuses the folder
  instead of building a dense teacher with missing weights);
- ``makd_teacher_model_type``: the teacher's ``model_type`` (``bert``, ``gpt2``, ``llama``, ...);
- ``makd_ranks``: ``{module name: rank}`` of every factorised matrix (and embedding table), names as in the saved
  architecture;
- ``auto_map``: ``AutoConfig`` -> ``LowRank<TeacherConfig>``, ``AutoModel*`` -> ``LowRank<Architecture>``.

Each class is the teacher's transformers class with the factorised modules swapped for two-factor modules right
after the architecture is built (before the weights are loaded): ``LowRankBertForSequenceClassification`` is
``BertForSequenceClassification`` whose listed ``nn.Linear`` / GPT-2 ``Conv1D`` / ``nn.Embedding`` modules became
``LowRankLinear`` (``y = up(down(x))``) / ``LowRankEmbedding`` (``proj(embed(ids))``). The classes are made on
demand from their names (``module.__getattr__``), for any architecture transformers provides.
"""
from __future__ import annotations

import torch
import transformers
from torch import nn

PREFIX = "LowRank"


class LowRankLinear(nn.Module):
    """y = up(down(x)) = (x Bᵀ) Aᵀ + b; ``down`` = B (d_in → r, no bias), ``up`` = A (r → d_out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # (..., d_in)
        return self.up(self.down(x))                                          # (..., d_out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankEmbedding(nn.Module):
    """table ≈ E P: ``embed`` looks up E (V, r), ``proj`` applies P (r, d)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx, device=device, dtype=dtype)
        self.proj = nn.Linear(rank, embedding_dim, bias=False, device=device, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:                     # (B, T)
        return self.proj(self.embed(ids))                                     # (B, T, d)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"


def _local_name(model: nn.Module, name: str) -> str:
    """``name`` as it is called in ``model``: the saved head class's names also fit the bare base model
    (``bert.encoder...`` -> ``encoder...``) and the other way round."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name]
    if prefix:
        candidates += [name[len(prefix) + 1:]] if name.startswith(prefix + ".") else [f"{prefix}.{name}"]
    for candidate in candidates:
        try:
            model.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    raise ValueError(f"config.makd_ranks names {name!r}, which {type(model).__name__} does not have")


def _two_factor(old: nn.Module, rank: int) -> nn.Module:
    """An empty two-factor module shaped like ``old`` (Linear, GPT-2 Conv1D with weight (d_in, d_out), Embedding)."""
    weight = old.weight
    if isinstance(old, nn.Embedding):
        return LowRankEmbedding(old.num_embeddings, old.embedding_dim, rank, old.padding_idx,
                                device=weight.device, dtype=weight.dtype)
    d_in, d_out = ((old.in_features, old.out_features) if isinstance(old, nn.Linear)
                   else (int(weight.shape[0]), int(weight.shape[1])))        # Conv1D stores (d_in, d_out)
    return LowRankLinear(d_in, d_out, rank, bias=getattr(old, "bias", None) is not None,
                         device=weight.device, dtype=weight.dtype)


def swap_in_factors(model: nn.Module, config) -> nn.Module:
    """Replace every module named in ``config.makd_ranks`` by an empty two-factor module of that rank."""
    for name, rank in (getattr(config, "makd_ranks", None) or {}).items():
        local = _local_name(model, name)
        model.set_submodule(local, _two_factor(model.get_submodule(local), int(rank)))
    return model


_MADE: dict[str, type] = {}


def _config_class(base: type) -> type:
    name = PREFIX + base.__name__
    if name not in _MADE:
        _MADE[name] = type(name, (base,), {"model_type": "makd_" + base.model_type, "__module__": __name__,
                                           "__doc__": f"{base.__name__} of a makd low-rank student."})
    return _MADE[name]


def _model_class(base: type) -> type:
    name = PREFIX + base.__name__
    if name not in _MADE:
        def __init__(self, config, *args, **kwargs):
            made = type(config)
            if made.__name__ == PREFIX + base.config_class.__name__:   # the teacher's own config class while
                config.__class__ = base.config_class                 # the modules are built: heads that build
            try:                                                     # their body with AutoModel.from_config
                base.__init__(self, config, *args, **kwargs)         # find it
            finally:
                config.__class__ = made
            swap_in_factors(self, config)
        _MADE[name] = type(name, (base,), {"__init__": __init__, "__module__": __name__,
                                           "config_class": _config_class(base.config_class),
                                           "__doc__": f"{base.__name__} with makd's two-factor modules."})
    return _MADE[name]


def __getattr__(name: str) -> type:
    """``LowRank<X>``: the student class of transformers' ``X`` (a config or a model class), made once."""
    base = getattr(transformers, name[len(PREFIX):], None) if name.startswith(PREFIX) else None
    if not isinstance(base, type):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if issubclass(base, transformers.PretrainedConfig):
        return _config_class(base)
    if issubclass(base, transformers.PreTrainedModel):
        return _model_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {base.__name__} is neither a config "
                         "nor a model class")
