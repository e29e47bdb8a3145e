"""Training logs in a notebook: one loss table updated in place instead of one printed dict per logging step.

transformers prints every log as a raw dict: ``PrinterCallback`` does (``disable_tqdm=True``, which makd's
``quiet`` gives) and so does ``ProgressCallback.on_log`` (below the tqdm bar). In a notebook (an IPython kernel)
:func:`live_log` replaces both printers by :class:`LiveLossTable`: one pandas table — step, ``loss``, every
``loss_<term>``, the evaluation losses when there are any, the learning rate — displayed once and updated in place
at each log. A tqdm progress bar stays (only its printing of the dicts goes); outside a notebook nothing changes.
:class:`makd.core.trainer.DistillTrainer` calls it, so every training cell of the notebooks gets the table.
"""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import is_in_notebook


def _is_loss(key: str) -> bool:
    """``loss``, ``loss_<term>``, ``eval_loss`` and ``eval_loss_<term>`` (not the run summary's ``train_loss``)."""
    return key in ("loss", "eval_loss") or key.startswith(("loss_", "eval_loss_"))


class LiveLossTable(TrainerCallback):
    """One table of the logged losses (a row per step) shown with ``display`` and updated in place.

    ``display``: IPython's ``display`` (default) or any callable ``display(obj, display_id=True) -> handle``
    whose handle has ``update(obj)``. :attr:`table` is the current table (index ``step``); the one displayed
    writes the learning rate as ``1.00e-04`` (pandas' fixed decimals would round it to 0)."""

    def __init__(self, display: Callable[..., Any] | None = None):
        self._display = display
        self._handle = None
        self.rows: dict[int, dict[str, float]] = {}                 # step -> column -> value

    @property
    def table(self) -> pd.DataFrame:
        df = pd.DataFrame.from_dict(self.rows, orient="index")
        # training losses (in the order first logged), then evaluation losses, then the learning rate
        df = df[sorted(df.columns, key=lambda c: (c == "lr", c.startswith("eval_")))]
        df.index.name = "step"
        return df

    def _view(self) -> pd.DataFrame:
        df = self.table
        if "lr" in df:
            df["lr"] = df["lr"].map(lambda v: "" if pd.isna(v) else f"{v:.2e}")
        return df

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {k: float(v) for k, v in logs.items() if _is_loss(k) and isinstance(v, (int, float))}
        if row and isinstance(logs.get("learning_rate"), (int, float)):
            row["lr"] = float(logs["learning_rate"])
        if not row:
            return
        self.rows.setdefault(state.global_step, {}).update(row)
        if self._handle is None:
            if self._display is None:
                from IPython.display import display
                self._display = display
            self._handle = self._display(self._view(), display_id=True)
        else:
            self._handle.update(self._view())


class ProgressBarOnly(ProgressCallback):
    """transformers' tqdm progress bars without the raw dict it writes below the bar at each log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def live_log(trainer: Trainer, *, display: Callable[..., Any] | None = None,
             notebook: bool | None = None) -> LiveLossTable | None:
    """In a notebook (``notebook=None``: detected; or with ``notebook=True``), show ``trainer``'s losses as one
    :class:`LiveLossTable` and stop the printing of raw log dicts; return the table's callback (``None`` outside
    a notebook, where nothing is changed). Idempotent: a second call returns the table already installed."""
    if not (is_in_notebook() if notebook is None else notebook):
        return None
    callbacks = trainer.callback_handler.callbacks
    existing = next((cb for cb in callbacks if isinstance(cb, LiveLossTable)), None)
    if existing is not None:
        return existing
    trainer.remove_callback(PrinterCallback)
    for cb in [cb for cb in callbacks if type(cb) is ProgressCallback]:
        trainer.remove_callback(cb)
        trainer.add_callback(ProgressBarOnly(max_str_len=cb.max_str_len))
    table = LiveLossTable(display)
    trainer.add_callback(table)
    return table
