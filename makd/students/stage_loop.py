"""The training loop every distillation stage of a subquadratic student runs (:mod:`makd.students.stages`).

A stage is a :class:`StageSpec`: a token budget, a learning rate and a schedule. :func:`train_stage` turns the
budget into optimiser steps (``ceil(tokens / (batch_size · block_length))``, each step one batch of packed blocks),
draws the batches in a seeded order (an epoch is a permutation of the blocks seeded by ``seed`` and the epoch:
step k's batch is a function of (seed, k) alone), runs AdamW on the stage's parameters with linear warm-up then
cosine decay to 0 (or a constant rate), clips the gradient norm, logs every loss term of every step to a
history list, shows a progress bar, and checkpoints.

Checkpoints (one file per stage, replaced atomically every ``save_every`` steps and at the end): the stage's
trained parameters — never the rest, which earlier stages' checkpoints and the seeded student already fix —,
the optimiser and schedule state, the history and the spec. A resumed stage reloads them and continues at the
next step; with the seeded order and no randomness in training (no dropout), a run killed mid-stage and resumed
ends with the same weights as an uninterrupted one (tests/test_subquadratic_stages.py). A finished stage's file
keeps its parameters and history only (``done``): a resumed run loads them and skips the stage. CPU and wall
times add up over invocations, for the steps kept (the steps after the last checkpoint of a killed run are
counted once, when they are re-done).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from makd.core.losses import check_finite

SCHEDULES = ("cosine", "constant")
StepFn = Callable[[Mapping[str, Tensor]], dict[str, Tensor]]   # batch -> terms ("loss" first), backward done


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``tokens`` of training (0: skipped), peak ``lr``, ``schedule`` and the ``warmup`` fraction."""
    name: str
    tokens: int
    lr: float
    schedule: str = "cosine"
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.lr <= 0 or not 0 <= self.warmup < 1 or self.schedule not in SCHEDULES:
            raise ValueError(f"stage {self.name}: tokens >= 0, lr > 0, warmup in [0, 1) and schedule in "
                             f"{SCHEDULES} are needed, got {dataclasses.asdict(self)}")

    def steps(self, batch_size: int, block_length: int) -> int:
        """Optimiser steps that spend the budget: ceil(tokens / (batch_size · block_length))."""
        return math.ceil(self.tokens / (batch_size * block_length))


def lr_factor(schedule: str, steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The multiplier of the peak rate at step s (0-based): (s + 1) / w during the w warm-up steps, then 1
    (constant) or ½(1 + cos(π (s − w) / (steps − w))) (cosine, to 0 at the end)."""
    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (s - warmup_steps) / max(1, steps - warmup_steps)))
    return factor


def batch_indices(n_blocks: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The blocks of step ``step``: positions step·B … step·B + B − 1 of the concatenated seeded epochs."""
    perms: dict[int, Tensor] = {}
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, n_blocks)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perms[epoch][k]))
    return out


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_params(model: nn.Module, params: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, value in params.items():
            model.get_parameter(name).copy_(value)


def train_stage(model: nn.Module, spec: StageSpec, params: dict[str, nn.Parameter], step_fn: StepFn,
                blocks: Mapping[str, Tensor], *, batch_size: int, seed: int, checkpoint: Path | None = None,
                resume: bool = False, save_every: int = 50, max_grad_norm: float | None = 1.0,
                progress: bool = True, on_step: Callable[[str, dict[str, float]], None] | None = None
                ) -> dict[str, Any]:
    """Run one stage on ``model`` in place; returns {"history", "steps", "tokens", "cpu_s", "wall_s", "resumed"}.

    ``params``: the named parameters the stage trains (all others get no update); ``step_fn(batch)`` computes the
    stage's loss terms on a batch AND calls backward (so a layer-local stage can free each layer's graph), and
    returns the terms (tensors, "loss" being the total). ``blocks``: input_ids / attention_mask / labels (N, T).
    ``on_step(stage, entry)`` runs after every step (tests raise from it to simulate a kill).
    """
    n, length = blocks["input_ids"].shape
    steps = spec.steps(batch_size, length)
    t0, c0 = time.time(), time.process_time()
    history: list[dict[str, float]] = []
    opt = torch.optim.AdamW(list(params.values()), lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(spec.schedule, steps, round(spec.warmup * steps)))
    start, resumed, cpu_before, wall_before = 0, False, 0.0, 0.0
    if resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["spec"] != dataclasses.asdict(spec) or state["batch_size"] != batch_size or state["seed"] != seed:
            raise ValueError(f"{checkpoint} was written by a {spec.name} stage with other settings "
                             f"({state['spec']}, batch {state['batch_size']}, seed {state['seed']}): delete the "
                             "checkpoints folder or run without --resume")
        _load_params(model, state["params"])
        history, start, resumed = state["history"], state["step"], True
        cpu_before, wall_before = state.get("cpu_s", 0.0), state.get("wall_s", 0.0)
        if not state.get("done"):
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        else:
            start = steps
    bar = None
    if progress and start < steps:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=f"stage {spec.name}", leave=False)

    def payload(step: int, done: bool) -> dict[str, Any]:
        out = {"spec": dataclasses.asdict(spec), "batch_size": batch_size, "seed": seed, "step": step,
               "done": done, "history": history, "params": {k: p.detach().clone() for k, p in params.items()},
               "cpu_s": cpu_before + time.process_time() - c0, "wall_s": wall_before + time.time() - t0}
        if not done:
            out.update(optimizer=opt.state_dict(), scheduler=sched.state_dict())
        return out

    device = next(model.parameters()).device
    model.train()
    try:
        for step in range(start, steps):
            idx = batch_indices(n, batch_size, step, seed)
            batch = {k: v[idx].to(device) for k, v in blocks.items()}              # on the model's device
            opt.zero_grad(set_to_none=True)
            terms = step_fn(batch)
            for name, value in terms.items():
                check_finite(f"{spec.name}/{name}", value, step)
            if max_grad_norm:
                nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            entry = {"step": step + 1, "tokens": (step + 1) * batch_size * length, "lr": lr,
                     **{k: float(v) for k, v in terms.items()}}
            history.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{entry['loss']:.4g}")
            if checkpoint is not None and (step + 1) % save_every == 0 and step + 1 < steps:
                _save(checkpoint, payload(step + 1, False))
            if on_step is not None:
                on_step(spec.name, entry)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    if checkpoint is not None and not (resumed and start == steps):
        _save(checkpoint, payload(steps, True))
    return {"history": history, "steps": steps, "tokens": steps * batch_size * length, "resumed": resumed,
            "cpu_s": round(cpu_before + time.process_time() - c0, 2), "wall_s": round(wall_before + time.time() - t0, 2)}
