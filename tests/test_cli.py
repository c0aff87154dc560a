import subprocess
import sys

import pytest

from drivesim import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*cli.LIGHTNING_COMMANDS, "data", *cli.COMMANDS]:
        assert f"    {name}" in out


def test_data_help_lists_tools(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.DATA_COMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'trian'" in err and "eval" in err   # names the commands there are


def test_every_registered_tool_module_has_the_tool_interface():
    import importlib

    for module_name, _ in [*cli.COMMANDS.values(), *cli.DATA_COMMANDS.values()]:
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), module_name


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "drivesim.cli", "--help"], capture_output=True,
                          text=True, check=True)
    assert "rollout" in proc.stdout
