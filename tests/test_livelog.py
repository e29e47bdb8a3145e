"""The notebook loss table (makd.core.livelog) and the teacher prepared by the accelerator, on tiny models:
on_log events fill one table updated in place, no raw log dict is printed while it is active, the tqdm bar stays,
and outside a notebook nothing changes."""
from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from makd.core import livelog
from makd.core.factorize import factorize
from makd.core.livelog import LiveLossTable, ProgressBarOnly, live_log
from makd.core.objective import MaKDObjective
from makd.core.trainer import DistillTrainer

from conftest import tiny_batch, tiny_model


class FakeDisplay:
    """IPython's display(obj, display_id=True) -> handle with handle.update(obj), recorded."""

    def __init__(self):
        self.shown, self.updates = [], []

    def __call__(self, obj, display_id=None):
        assert display_id is True
        self.shown.append(obj.copy())
        return self

    def update(self, obj):
        self.updates.append(obj.copy())


def _rows(n: int = 8):
    b = tiny_batch(batch=n, seq=8, pad=False, seed=1)
    return [{"input_ids": b["input_ids"][i], "attention_mask": b["attention_mask"][i], "labels": i % 2}
            for i in range(n)]


def _trainer(tmp_path, **kw) -> DistillTrainer:
    teacher = tiny_model("bert", head="cls")
    kw = {"disable_tqdm": True, "max_steps": 3, **kw}
    args = TrainingArguments(output_dir=str(tmp_path), seed=0, report_to="none", save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, per_device_train_batch_size=4, logging_steps=1,
                             learning_rate=1e-2, **kw)
    return DistillTrainer(model=factorize(teacher, layer_ratio=0.5), args=args, teacher=teacher,
                          objective=MaKDObjective(2, "layer-only"), train_dataset=_rows())


def test_on_log_events_update_one_table_with_every_loss_term():
    screen = FakeDisplay()
    table = LiveLossTable(display=screen)
    state, control = TrainerState(), TrainerControl()
    for step, loss in [(1, 3.0), (2, 2.0)]:
        state.global_step = step
        table.on_log(None, state, control, logs={"loss": loss, "loss_attn": loss / 2, "loss_hidn": loss / 4,
                                                 "grad_norm": 9.0, "learning_rate": 1e-3 * step, "epoch": 0.1})
    state.global_step = 2
    table.on_log(None, state, control, logs={"eval_loss": 5.0, "eval_loss_attn": 4.0, "eval_runtime": 0.1})
    table.on_log(None, state, control, logs={"train_runtime": 1.0, "train_loss": 2.5})   # the summary: no row
    assert len(screen.shown) == 1 and len(screen.updates) == 2                   # shown once, updated in place
    final = screen.updates[-1]
    assert list(final.columns) == ["loss", "loss_attn", "loss_hidn", "eval_loss", "eval_loss_attn", "lr"]
    assert list(final.index) == [1, 2] and final.index.name == "step"
    assert final.loc[2, "loss_hidn"] == 0.5 and final.loc[2, "eval_loss_attn"] == 4.0
    assert final.loc[1, "lr"] == "1.00e-03" and table.table.loc[1, "lr"] == 1e-3    # shown in e-notation
    assert final.drop(columns="lr").equals(table.table.drop(columns="lr"))


def test_outside_a_notebook_nothing_changes_and_the_dicts_are_printed(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    assert not any(isinstance(cb, LiveLossTable) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    assert "'loss_attn'" in capsys.readouterr().out                           # PrinterCallback's raw dicts


def test_in_a_notebook_the_trainer_shows_one_live_table_and_prints_no_dict(tmp_path, capsys, monkeypatch):
    screen = FakeDisplay()
    monkeypatch.setattr(livelog, "is_in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", screen)
    trainer = _trainer(tmp_path)
    assert not any(isinstance(cb, PrinterCallback) for cb in trainer.callback_handler.callbacks)
    assert live_log(trainer) is live_log(trainer)                              # installed once
    trainer.train()
    out = capsys.readouterr()
    assert "{'" not in out.out + out.err and "'loss'" not in out.out + out.err
    assert len(screen.shown) == 1 and len(screen.updates) == 2
    final = screen.updates[-1]
    assert {"loss", "loss_attn", "loss_hidn", "loss_pred", "lr"} <= set(final.columns) and len(final) == 3


def test_in_a_notebook_the_progress_bar_stays_without_its_dicts(tmp_path, capsys):
    trainer = _trainer(tmp_path, disable_tqdm=False)
    assert live_log(trainer, display=FakeDisplay(), notebook=True) is not None
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert ProgressBarOnly in kinds and ProgressCallback not in kinds
    trainer.train()
    out = capsys.readouterr()
    assert "3/3" in out.err and "'loss'" not in out.out + out.err               # the bar, and no dict


def test_the_teacher_goes_through_the_accelerator_for_evaluation(tmp_path):
    seen = []
    trainer = _trainer(tmp_path, bf16=True, max_steps=1)                     # CPU autocast, bfloat16
    query = trainer.teacher.bert.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}                            # mixed precision reaches the teacher
    assert trainer.teacher in trainer.accelerator._models
    assert not isinstance(trainer.teacher, torch.nn.parallel.DistributedDataParallel)
    assert all(not p.requires_grad for p in trainer.teacher.parameters())


@pytest.mark.parametrize("how", ["env", "args"])
def test_fsdp_on_cpu_processes_is_refused_with_one_clear_message(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        kw = {}
    else:
        kw = {"fsdp": True}
    with pytest.raises(ValueError, match="FSDP cannot shard on CPU processes.*torchrun --nproc_per_node"):
        _trainer(tmp_path, **kw)
