"""The command line: plug-ins given every way a user gives them, and one line + exit 2 for user errors."""

from __future__ import annotations

import os
import sys
from importlib.metadata import EntryPoint

import pytest
import typer
from typer.testing import CliRunner

from tasklens import registry
from tasklens.cli import TasklensApp, app
from tasklens.errors import TasklensWarning
from tasklens.evaluation.metrics import METRICS

PLUGIN = """
import tasklens

@tasklens.register_metric("{name}")
def metric(logits, batch):
    '''A metric from a plug-in file.'''
    return logits[:, 0, 0]
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The working folder of a console-script user: not on sys.path; plug-ins forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.setattr(METRICS, "_items", dict(METRICS._items))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(tmp_path) in sys.modules[name].__file__:
            del sys.modules[name]


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


@pytest.mark.reliability
def test_a_plugin_module_in_the_working_folder_is_found_by_the_console_script(workdir):
    (workdir / "h5_cwd_plugins.py").write_text(PLUGIN.format(name="h5_cwd_metric"))
    result = CliRunner().invoke(app, ["list", "--plugin", "h5_cwd_plugins"])
    assert result.exit_code == 0, result.output
    assert "h5_cwd_metric" in result.output and "A metric from a plug-in file." in result.output


@pytest.mark.reliability
def test_a_plugin_given_as_a_file_path_is_loaded(workdir):
    (workdir / "h5_file_plugins.py").write_text(PLUGIN.format(name="h5_file_metric"))
    result = CliRunner().invoke(app, ["list", "--plugin", "./h5_file_plugins.py"])
    assert result.exit_code == 0, result.output
    assert "h5_file_metric" in result.output
    one_line_error(CliRunner().invoke(app, ["list", "--plugin", "./missing.py"]), "does not exist")


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("raise RuntimeError('needs a GPU')", "RuntimeError: needs a GPU"),
        ("def broken(:\n    pass\n", "SyntaxError"),
        ("import h5_no_such_dependency\n", "No module named 'h5_no_such_dependency'"),
    ],
)
def test_a_plugin_that_fails_on_import_is_one_clear_line(workdir, source, shown):
    (workdir / "h5_bad_plugins.py").write_text(source)
    for given in ("h5_bad_plugins", "h5_bad_plugins.py"):
        result = CliRunner().invoke(app, ["list", "--plugin", given])
        one_line_error(result, f"'{given}' failed while importing", shown, "fix the module")
        assert "h5_bad_plugins" not in sys.modules


@pytest.mark.reliability
def test_an_unknown_plugin_module_says_how_to_name_one(workdir):
    result = CliRunner().invoke(app, ["list", "--plugin", "h5_absent"])
    one_line_error(result, "Could not import", "my_plugins.py")


@pytest.mark.reliability
def test_a_broken_entry_point_warns_and_the_rest_still_lists(monkeypatch):
    broken = EntryPoint(name="broken_h5", value="h5_absent_package.plugins", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    shown = r"'broken_h5' = 'h5_absent_package.plugins'.*ModuleNotFoundError.*fix or uninstall"
    with pytest.warns(TasklensWarning, match=shown):
        result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "gradient_attribution" in result.output and "logprob" in result.output


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (FileNotFoundError(2, "No such file or directory", "data/x.jsonl"), "No such file or directory"),
        (IsADirectoryError(21, "Is a directory", "data/x.jsonl"), "Is a directory"),
        (NotADirectoryError(20, "Not a directory", "data/x.jsonl"), "Not a directory"),
        (PermissionError(13, "Permission denied", "data/x.jsonl"), "check its permissions"),
        (FileExistsError(17, "File exists", "data/x.jsonl"), "File exists"),
    ],
)
def test_path_errors_of_a_command_are_one_line_and_exit_2(error, shown):
    toy = TasklensApp()

    @toy.command()
    def read() -> None:
        raise error

    @toy.command()
    def bug() -> None:
        raise KeyError("a programming error")

    one_line_error(CliRunner().invoke(toy, ["read"]), shown, "'data/x.jsonl'")
    result = CliRunner().invoke(toy, ["bug"])  # not a user error: it keeps its traceback
    assert isinstance(result.exception, KeyError) and result.exit_code == 1


def test_fail_keeps_one_line(capsys):
    with pytest.raises(typer.Exit) as exit_:
        from tasklens.cli import fail

        fail(ValueError("first\nsecond"))
    assert exit_.value.exit_code == 2
    assert capsys.readouterr().err == "error: first second\n"


# --- replayed review cases: --version and the one error handler ------------------------------------


@pytest.mark.reliability
def test_cli_version_and_one_error_handler(tmp_path):
    import tasklens

    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and tasklens.__version__ in result.output
    cases = [
        ["locate", "-t", "continent_of", "--controls", "-1"],  # not a locate option: usage error
        ["ablate", "--out", str(tmp_path / "nothing"), "--controls", "-1"],
        ["locate", "-t", "continent_of", "--out", str(tmp_path / "r"), "--param", "foo=1"],
        ["locate", "-t", "continent_of", "--out", str(tmp_path / "r"), "--max-prompts", "-1"],
        ["report", str(tmp_path / "nothing")],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
