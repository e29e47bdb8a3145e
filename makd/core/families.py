"""Which matrices of which architectures `makd` factorises and distils.

A *family* maps an architecture to its transformer layers and, inside each layer, to the module that
holds each weight matrix of multi-head attention (MHA) and the feed-forward network (FFN). Roles:

=========  =====================================================================
role       meaning
=========  =====================================================================
q, k, v    attention projections (GPT-2 fuses them into one ``qkv`` Conv1D)
o          attention output projection
ffn_in     first FFN matrix (BERT ``intermediate.dense``, GPT-2 ``c_fc``, Llama ``up_proj``)
ffn_gate   Llama's gate projection (SwiGLU)
ffn_out    last FFN matrix (BERT ``output.dense``, GPT-2 ``mlp.c_proj``, Llama ``down_proj``)
=========  =====================================================================

Unsupported architectures raise :class:`UnsupportedModelError`, which lists the families and says how to
pass module names by hand (``modules={"layers": "path.to.layers", "q": "...", ...}``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from makd.core.errors import MakdError

MHA_ROLES = ("q", "k", "v", "o")
FFN_ROLES = ("ffn_in", "ffn_gate", "ffn_out")


class UnsupportedModelError(MakdError, ValueError):
    """The model's architecture is not in :data:`FAMILIES` and no module map was given."""


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]          # candidate dotted paths to the ModuleList of layers
    modules: dict[str, str]          # role -> dotted path inside one layer
    causal: bool
    fused_qkv: str | None = None     # GPT-2: the fused Conv1D producing [q | k | v]
    conv1d: bool = False             # weights stored (d_in, d_out) as in GPT-2's Conv1D
    rope: bool = False
    examples: tuple[str, ...] = field(default=())

    def matrix_paths(self) -> dict[str, str]:
        """role (or 'qkv') -> dotted path inside a layer, for every weight matrix to factorise."""
        if not self.fused_qkv:
            return dict(self.modules)
        rest = {r: p for r, p in self.modules.items() if r not in ("q", "k", "v")}
        return {"qkv": self.fused_qkv, **rest}


FAMILIES: dict[str, Family] = {
    "bert": Family(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        layers=("bert.encoder.layer", "roberta.encoder.layer", "electra.encoder.layer", "encoder.layer"),
        modules={
            "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "o": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
        },
        causal=False,
        examples=("bert-base-uncased", "roberta-base", "sentence-transformers/all-MiniLM-L6-v2"),
    ),
    "gpt2": Family(
        name="gpt2",
        model_types=("gpt2",),
        layers=("transformer.h", "h"),
        modules={"o": "attn.c_proj", "ffn_in": "mlp.c_fc", "ffn_out": "mlp.c_proj"},
        causal=True, fused_qkv="attn.c_attn", conv1d=True,
        examples=("gpt2", "gpt2-medium", "distilgpt2"),
    ),
    "llama": Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers=("model.layers", "layers"),
        modules={
            "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
            "o": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_in": "mlp.up_proj",
            "ffn_out": "mlp.down_proj",
        },
        causal=True, rope=True,
        examples=("HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-3.2-1B"),
    ),
}


def supported_message() -> str:
    lines = [f"  - {f.name}: model_type in {list(f.model_types)} (e.g. {', '.join(f.examples)})"
             for f in FAMILIES.values()]
    return (
        "Supported families:\n" + "\n".join(lines) + "\n"
        "For another architecture pass the module names by hand, e.g. "
        "modules={'layers': 'model.decoder.layers', 'q': 'self_attn.q_proj', 'k': 'self_attn.k_proj', "
        "'v': 'self_attn.v_proj', 'o': 'self_attn.out_proj', 'ffn_in': 'fc1', 'ffn_out': 'fc2'} "
        "(paths inside one layer; nn.Linear modules only)."
    )


def family_from_modules(modules: dict[str, str]) -> Family:
    """A custom family from a hand-written module map (see :func:`supported_message`)."""
    modules = dict(modules)
    if "layers" not in modules:
        raise UnsupportedModelError("a hand-written module map needs a 'layers' entry: " + supported_message())
    layers = modules.pop("layers")
    unknown = sorted(set(modules) - set(MHA_ROLES) - set(FFN_ROLES))
    if unknown:
        raise UnsupportedModelError(
            f"unknown role(s) {unknown} in the module map; roles are {list(MHA_ROLES + FFN_ROLES)}")
    return Family(name="custom", model_types=(), layers=(layers,), modules=modules, causal=False)


def detect_family(model: nn.Module, modules: dict[str, str] | None = None) -> Family:
    """The family of ``model`` (from ``config.model_type``), or a custom one from ``modules``."""
    if modules is not None:
        return family_from_modules(modules)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise UnsupportedModelError(
        f"model_type {model_type!r} ({type(model).__name__}) is not supported.\n" + supported_message())


def get_layers(model: nn.Module, family: Family | None = None) -> nn.ModuleList:
    """The ModuleList of transformer layers of ``model``."""
    family = family or detect_family(model)
    for path in family.layers:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UnsupportedModelError(
        f"could not find the layers of {type(model).__name__} at any of {list(family.layers)}.\n"
        + supported_message())


def layer_prefix(model: nn.Module, family: Family | None = None) -> str:
    """Dotted path of the layer list inside ``model`` (e.g. ``'bert.encoder.layer'``)."""
    family = family or detect_family(model)
    layers = get_layers(model, family)
    for name, mod in model.named_modules():
        if mod is layers:
            return name
    raise UnsupportedModelError("layer list not found among named modules")  # pragma: no cover


def matrix_modules(model: nn.Module, family: Family | None = None) -> dict[str, tuple[int, str]]:
    """Full dotted name -> (layer index, role) for every weight matrix of every layer.

    GPT-2's fused projection has role ``'qkv'``.
    """
    family = family or detect_family(model)
    prefix = layer_prefix(model, family)
    out: dict[str, tuple[int, str]] = {}
    for i, layer in enumerate(get_layers(model, family)):
        for role, rel in family.matrix_paths().items():
            try:
                layer.get_submodule(rel)
            except AttributeError as err:
                raise UnsupportedModelError(
                    f"layer {i} of {type(model).__name__} has no module {rel!r} (role {role}).\n"
                    + supported_message()) from err
            out[f"{prefix}.{i}.{rel}"] = (i, role)
    return out


def attention_geometry(config) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) of a transformers config (GQA: n_kv_heads < n_heads)."""
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    head_dim = getattr(config, "head_dim", None) or hidden // n_heads
    return int(n_heads), int(n_kv), int(head_dim)


def num_layers(config) -> int:
    return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))


def copy_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """A deep copy of ``model`` keeping only the layers ``keep`` (DistilBERT-style dense student init).

    The config's layer count (and per-layer lists such as ``layer_types``) and each attention module's
    ``layer_idx`` (the KV-cache slot of decoders) are renumbered."""
    import copy as _copy

    n = num_layers(model.config)
    if not keep or any(not 0 <= i < n for i in keep):
        raise ValueError(f"keep must name layers in 0..{n - 1}, got {keep}")
    student = _copy.deepcopy(model).requires_grad_(True)  # trainable even if the teacher was frozen
    layers = get_layers(student)
    kept = [layers[i] for i in keep]
    for i in range(len(layers) - 1, -1, -1):
        del layers[i]
    layers.extend(kept)
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    cfg = student.config
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, name):
            setattr(cfg, name, len(keep))
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    return student


def evenly_spaced(n: int, k: int) -> list[int]:
    """k of n layer indices, evenly spaced, always ending at the top layer (k = 1: the top layer)."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]
