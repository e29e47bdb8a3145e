"""`python -m makd`: every listed command resolves to a module with ``main`` and answers ``--help``."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

from conftest import VOCAB, tiny_model
from makd import cli
from makd.core.errors import DataError, UsageError
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
        try:
            code = cli.main(["factorize", *argv])
        except SystemExit as exc:                           # argparse's own exit
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, argv                              # a usage error: one line, exit 2
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
    with pytest.raises(UsageError, match="smallest reachable budget"):    # the module itself: an exception
        fcmd.main(["--budget", "100"])


def test_typed_commands_parse_their_config_before_importing_the_run_module(monkeypatch, capsys):
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or real(name))
    for argv in (["distill", "--weighting", "asvd"], ["squad", "--version", "3.0"], ["factorize", "--rank", "0"],
                 ["decoder", "--decoding", "beam"]):
        with pytest.raises(SystemExit) as exc:              # argparse exits (2) with one error line
            cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert imported == ["makd.experiments.config", "makd.experiments.squad_config", "makd.experiments.config",
                        "makd.experiments.decoder_config"]


def test_debug_shows_the_traceback_and_a_bug_keeps_it(monkeypatch, tmp_path, capsys):
    missing = str(tmp_path / "none")
    assert cli.main(["results", missing]) == 1
    assert "Traceback" not in capsys.readouterr().err
    for argv in (["--debug", "results", missing], ["results", missing, "--debug"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith(f"error: no folder {missing}")
    monkeypatch.setenv("MAKD_DEBUG", "1")
    assert cli.main(["results", missing]) == 1 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("MAKD_DEBUG")
    from makd.experiments import results

    def bug(argv):
        raise KeyError("an internal bug")
    monkeypatch.setattr(results, "main", bug)
    with pytest.raises(KeyError):                           # not a user error: the traceback is kept
        cli.main(["results"])

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(results, "main", interrupted)
    assert cli.main(["results"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and err.count("\n") == 1 and "--resume" in err


def test_only_our_own_value_errors_are_shown_as_one_line():
    from makd.tasks.glue import load_task
    with pytest.raises(ValueError) as ours:                 # raised by the package's own check
        load_task("bogus")
    with pytest.raises(ValueError) as library:              # raised inside the standard library
        json.loads("{")
    with pytest.raises(ValueError) as here:                 # raised outside the package
        raise ValueError("not from makd")
    assert cli.exit_code(ours.value) == 1
    assert cli.exit_code(library.value) is None and cli.exit_code(here.value) is None
    assert cli.exit_code(UsageError("x")) == 2 and cli.exit_code(DataError("x")) == 1
