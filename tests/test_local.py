"""The layer-local distillation stage (makd.core.local): block-forced passes, block-local gradients, training."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_batch, tiny_model
from makd.core import factorize as fz
from makd.core import families
from makd.core.local import _rel, block_io, local_stage


def test_block_io_chains_blocks_and_stops_after_the_last(family):
    model = tiny_model(family, head="base", n_layers=3)
    batch = tiny_batch(3, 10)
    ins, outs, mats = block_io(model, batch, matrices=[next(iter(families.matrix_modules(model)))])
    assert len(ins) == len(outs) == 3 and len(mats) == 1
    for i in range(2):
        torch.testing.assert_close(ins[i + 1], outs[i])
    forced_ins, forced_outs, _ = block_io(model, batch, forced=ins)        # the teacher forced with its own inputs
    for a, b in zip(forced_outs, outs):
        torch.testing.assert_close(a, b)


def test_gradients_stay_inside_their_block():
    teacher = tiny_model("llama", head="base", n_layers=3)
    student = fz.factorize(teacher, rank=0.5)
    batch = tiny_batch(3, 10)
    t_in, t_out, _ = block_io(teacher, batch)
    _, s_out, _ = block_io(student, batch, forced=t_in, grad=True)
    _rel(s_out[2], t_out[2], batch["attention_mask"].bool()).backward()
    layers = families.get_layers(student)
    assert all(p.grad is None or not p.grad.any() for p in layers[1].parameters())
    assert any(p.grad is not None and p.grad.any() for p in layers[2].parameters())


@pytest.mark.parametrize("matrix_weight", [0.0, 0.1])
def test_local_stage_lowers_every_blocks_error_and_touches_only_blocks(family, matrix_weight):
    teacher = tiny_model(family, head="base", n_layers=2)
    calibration = [tiny_batch(8, 12, seed=s) for s in (1, 2)]
    student = fz.factorize(teacher, rank=0.25, weighting="whiten", calibration=calibration)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if "embed" in n or "wte" in n or "wpe" in n}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    hist = local_stage(student, teacher, calibration, epochs=10, lr=3e-3, matrix_weight=matrix_weight,
                       progress=False)
    assert len(hist) == 20 and {"loss", "loss_block", "loss_matrix", "loss_block/L0", "loss_block/L1"} <= set(hist[0])
    if matrix_weight == 0:                                  # blocks alone: their error falls
        assert hist[-1]["loss_block"] < 0.9 * hist[0]["loss_block"], (hist[0], hist[-1])
    else:                                                   # anchored at the matrix optimum: the sum still falls
        assert hist[-1]["loss"] < hist[0]["loss"], (hist[0], hist[-1])
    assert (hist[0]["loss_matrix"] > 0) == (matrix_weight > 0)
    for n, p in student.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())


def test_one_epoch_without_the_cache_is_the_first_epoch_of_a_cached_run():
    # one epoch computes each batch's teacher tensors at its step instead of caching them: the same steps exactly
    teacher = tiny_model("llama", head="base", n_layers=2)
    calibration = [tiny_batch(4, 10, seed=s) for s in (1, 2, 3)]
    one, two = (fz.factorize(teacher, rank=0.5, weighting="whiten", calibration=calibration) for _ in range(2))
    h1 = local_stage(one, teacher, calibration, epochs=1, lr=1e-3, progress=False)
    h2 = local_stage(two, teacher, calibration, epochs=2, lr=1e-3, progress=False)
    assert h1 == h2[:len(calibration)]


def test_local_stage_refuses_bad_settings():
    teacher = tiny_model("bert", head="base")
    student = fz.factorize(teacher, rank=0.5)
    with pytest.raises(ValueError, match="epochs >= 1"):
        local_stage(student, teacher, [tiny_batch()], epochs=0)
    with pytest.raises(ValueError, match="at least one batch"):
        local_stage(student, teacher, [])
    with pytest.raises(ValueError, match="1:1"):
        local_stage(fz.factorize(tiny_model("bert", head="base", n_layers=3), rank=0.5), teacher, [tiny_batch()])
