"""The token mixers by name: the names the API, the command line and the results use."""
from __future__ import annotations

from makd.students.mixers.base import Mixer
from makd.students.mixers.deltanet import DeltaNet
from makd.students.mixers.gated_deltanet import GatedDeltaNet
from makd.students.mixers.gla import GLA
from makd.students.mixers.linear import LinearAttention
from makd.students.mixers.mamba2 import Mamba2
from makd.students.mixers.metala import MetaLA
from makd.students.mixers.mlstm import MLSTM
from makd.students.mixers.retnet import RetNet
from makd.students.mixers.softmax import SoftmaxAttention

MIXERS: dict[str, type[Mixer]] = {
    "linear": LinearAttention,
    "retnet": RetNet,
    "gla": GLA,
    "mlstm": MLSTM,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "mamba2": Mamba2,
    "metala": MetaLA,
    "softmax": SoftmaxAttention,   # not subquadratic: the teacher's attention, the stages' identity check
}
NAMES: tuple[str, ...] = tuple(sorted(MIXERS))
SUBQUADRATIC: tuple[str, ...] = tuple(n for n in NAMES if n != "softmax")   # the students of the study


def mixer_class(name: str) -> type[Mixer]:
    """The mixer class registered as ``name``; a ValueError listing the known names otherwise."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}: known mixers are {', '.join(sorted(MIXERS))}")
    return MIXERS[name]
