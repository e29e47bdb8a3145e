"""The layer-local distillation stage: every block of the student trained alone on the teacher's block inputs.

Block l of the student receives the TEACHER's input to block l, h^t_{l-1} (teacher forcing at block level), and
is trained to reproduce the teacher's output h^t_l. Per step, with valid tokens only (padding masked):

    L = Σ_l  ‖f^s_l(h^t_{l-1}) − h^t_l‖_F² / ‖h^t_l‖_F²                         (layer aspect, block-local)
      + w_m Σ_l mean_m ‖A_m B_m x^t_m − W_m x^t_m‖_F² / ‖W_m x^t_m‖_F²        (matrix aspect, teacher-forced)

where x^t_m is the teacher's input to matrix m. Each block's input is a detached teacher tensor, so no gradient
crosses blocks: the stage costs one forward and one backward of the blocks only (no embedding, LM head or
vocabulary softmax). With several epochs the teacher's block inputs and outputs are computed once per batch and
cached for every epoch (one (B, T, d) tensor per block and batch: gigabytes for hundreds of calibration pairs on a
135M model); with one epoch nothing is cached, each batch's are computed at its step (the same values, the
same work, one batch's worth of memory); the matrix inputs (hundreds of MB per batch on a 135M model) are
recomputed by a no-grad teacher pass per step when the matrix term is on.
Relative errors keep blocks with massive activations from drowning the others. The matrix term starts at its
optimum after a whitened factorisation (:mod:`makd.core.calibration`), so it can only pull the matrices back
towards it while the blocks adapt: a small weight (w_m = 0.1 by default; the mean over a layer's matrices makes
it one number per layer, like the block term) anchors without freezing. Our design (a CPU-affordable stage before end-to-end distillation), not the
paper's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from makd.core import families
from makd.core.calibration import first_output, model_inputs
from makd.core.lowrank import LowRankLinear, dense_weight

__all__ = ["block_io", "local_stage"]

class _Stop(Exception):
    """Raised by the last block's hook: nothing after the blocks needs computing."""


def block_io(model: nn.Module, batch: Mapping, *, matrices: Iterable[str] = (), forced: list[Tensor] | None = None,
             grad: bool = False) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
    """(inputs, outputs, matrix inputs) of every block of ``model`` on ``batch``, stopping after the last block.

    ``forced``: per block, the hidden states (B, T, d) to feed it instead of the previous block's output
    (detached: block-local gradients). ``matrices``: names of Linear/Conv1D/LowRankLinear modules whose input
    to record. Without ``grad`` the pass runs under no_grad and the tensors are detached.
    """
    layers = families.get_layers(model)
    ins: list[Tensor | None] = [None] * len(layers)
    outs: list[Tensor | None] = [None] * len(layers)
    mats: dict[str, Tensor] = {}
    handles = []

    def pre(i):
        def hook(_mod, args, kwargs):
            if forced is not None:
                x = forced[i].detach()
                if args:
                    args = (x, *args[1:])
                else:
                    kwargs = {**kwargs, "hidden_states": x}
            ins[i] = args[0] if args else kwargs["hidden_states"]
            return args, kwargs
        return hook

    def post(i):
        def hook(_mod, _args, output):
            outs[i] = first_output(output)
            if i == len(layers) - 1:
                raise _Stop
        return hook

    def mat_hook(name):
        def hook(_mod, args):
            mats[name] = args[0]
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i)))
    for name in matrices:
        handles.append(model.get_submodule(name).register_forward_pre_hook(mat_hook(name)))
    try:
        with torch.set_grad_enabled(grad):
            model(**model_inputs(batch, next(model.parameters()).device))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if grad:
        return ins, outs, mats
    return [t.detach() for t in ins], [t.detach() for t in outs], {k: v.detach() for k, v in mats.items()}


def _rel(s: Tensor, t: Tensor, mask: Tensor | None) -> Tensor:
    """‖s − t‖² / ‖t‖² over valid tokens: s, t (B, T, d), mask (B, T)."""
    if mask is not None and s.dim() == 3 and s.shape[:2] == mask.shape:
        s, t = s[mask], t[mask]                                               # (N, d)
    return ((s - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-12)


def local_stage(student: nn.Module, teacher: nn.Module, batches: list[Mapping], *, epochs: int = 1,
                lr: float = 1e-4, matrix_weight: float = 0.1, progress: bool = True) -> list[dict[str, float]]:
    """Train ``student``'s blocks in place, each on the teacher's block inputs (see the module docstring), for
    ``epochs`` passes over ``batches`` (Adam on the block parameters; embeddings and heads untouched). Returns
    one log entry per step: ``loss``, ``loss_block`` (Σ over blocks), ``loss_matrix`` and ``loss_block/L<l>``."""
    if epochs < 1 or lr <= 0 or matrix_weight < 0:
        raise ValueError(f"local_stage needs epochs >= 1, lr > 0, matrix_weight >= 0 (got {epochs}, {lr}, "
                         f"{matrix_weight})")
    if not batches:
        raise ValueError("local_stage needs at least one batch")
    s_layers, t_layers = families.get_layers(student), families.get_layers(teacher)
    if len(s_layers) != len(t_layers):
        raise ValueError(f"the layer-local stage pairs blocks 1:1: student {len(s_layers)} vs teacher {len(t_layers)}")
    lowrank = [n for n, m in student.named_modules() if isinstance(m, LowRankLinear)] if matrix_weight else []
    roles = families.matrix_modules(teacher)
    per_layer = {n: sum(roles[m][0] == roles[n][0] for m in lowrank) for n in lowrank}   # matrices in n's layer
    weights = {n: dense_weight(teacher.get_submodule(n)).detach() for n in lowrank}   # (d_out, d_in)
    was_training = teacher.training
    teacher.eval()
    cache = [block_io(teacher, b)[:2] for b in batches] if epochs > 1 else None       # reused by every epoch
    params = [p for layer in s_layers for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    student.train()
    history: list[dict[str, float]] = []
    steps = [(e, i) for e in range(epochs) for i in range(len(batches))]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(steps), desc="layer-local stage", leave=False)
    try:
        for epoch, i in steps:
            t_in, t_out = cache[i] if cache is not None else block_io(teacher, batches[i])[:2]
            t_mats = block_io(teacher, batches[i], matrices=lowrank)[2] if lowrank else {}
            mask = batches[i].get("attention_mask")
            mask = mask.bool().to(t_out[0].device) if mask is not None else None
            _, s_out, _ = block_io(student, batches[i], forced=t_in, grad=True)
            per_block = [_rel(s, t, mask) for s, t in zip(s_out, t_out)]
            block = torch.stack(per_block).sum()
            matrix = torch.zeros((), device=block.device)
            for n in lowrank:                                                   # biases left out on both sides
                x, mod = t_mats[n], student.get_submodule(n)                    # x (B, T, d_in)
                y_s = mod.down(x) @ mod.up.weight.T                             # (B, T, d_out)
                matrix = matrix + _rel(y_s, x @ weights[n].T, mask) / per_layer[n]
            total = block + matrix_weight * matrix
            if not torch.isfinite(total):
                raise FloatingPointError(f"layer-local stage: non-finite loss at step {len(history)}")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            entry = {"step": len(history) + 1, "epoch": epoch, "loss": total.item(), "loss_block": block.item(),
                     "loss_matrix": matrix.item()}
            entry.update({f"loss_block/L{l}": v.item() for l, v in enumerate(per_block)})
            history.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
    finally:
        if bar is not None:
            bar.close()
        teacher.train(was_training)
    student.eval()
    return history
