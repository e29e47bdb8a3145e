"""`python -m makd`: every listed command resolves to a module with ``main`` and answers ``--help``."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

from conftest import VOCAB, tiny_model
from makd import cli
from makd.experiments import factorize as fcmd


def test_usage_lists_every_command_and_unknown_commands_fail(capsys):
    assert cli.main([]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in cli.COMMANDS)
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_a_help(name, capsys):
    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.main)
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- CLI
class _FakeTokenizer:
    def __call__(self, texts, **kw):
        ids = torch.randint(1, VOCAB, (len(texts), 12), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def save_pretrained(self, path):
        pass


def test_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fcmd, "load_model", lambda name, head="base": (tiny_model("bert", head=head), _FakeTokenizer()))
    assert fcmd.main(["--layer-ratio", "0.5", "--weighting", "activation", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ffn_out" in out and "student_params" in out
    data = json.loads((tmp_path / "report.json").read_text())
    assert abs(data["totals"]["layer_ratio"] - 0.5) < 0.005 and len(data["matrices"]) == 12
    assert (tmp_path / "report.csv").is_file() and (tmp_path / "makd_factorization.json").is_file()
    for argv, message in ((["--budget", "100"], "smallest reachable budget"),
                          (["--rank", "4", "--budget", "0.5"], "give only one of"),
                          ([], "give one of --layer-ratio, --budget, --rank"),
                          (["--rank", "4", "--weighting", "asvd"], "invalid choice: 'asvd'")):
        with pytest.raises(SystemExit) as exc:              # a command: argparse's error, exit 2
            fcmd.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv


def test_distill_and_squad_parse_their_config_before_importing_the_run_module(monkeypatch, capsys):
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or real(name))
    for argv in (["distill", "--weighting", "asvd"], ["squad", "--version", "3.0"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2 and "error:" in capsys.readouterr().err
    assert imported == ["makd.experiments.config", "makd.experiments.squad_config"]
