"""`python -m makd`: every listed command resolves to a module with ``main`` and answers ``--help``."""
from __future__ import annotations

import importlib

import pytest

from makd import cli


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
