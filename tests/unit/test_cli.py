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
        ("import sys\nsys.exit(0)\n", "it called sys.exit(0) while being imported"),
        ("raise SystemExit('usage: my_plugins.py FILE')", "sys.exit('usage: my_plugins.py FILE')"),
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


# --- each stage's options come from the RunConfig fields; every command that loads a model takes
# --device and --dtype, checked before it loads ---------------------------------------------------
def options_of(command: str) -> set[str]:
    return {p.name for p in typer.main.get_command(app).commands[command].params}


def test_each_stage_command_has_exactly_the_fields_its_stage_takes():
    from tasklens.runs.pipeline import STAGE_FIELDS, stage_options

    compare, ablate, locate = options_of("compare"), options_of("ablate"), options_of("locate")
    assert {"stability_splits", "method", "params", "select", "value", "split", "device", "dtype"} <= compare
    assert {"intervention", "controls", "device", "dtype"} <= ablate and "method" not in ablate
    assert {"method", "select", "device", "dtype", "out"} <= locate and "intervention" not in locate
    for stage, options in (("locate", locate), ("ablate", ablate), ("compare", compare)):
        assert options == set(stage_options(stage))
        # where it ran, and where it kept finished random sets, are not recorded
        assert set(STAGE_FIELDS[stage]) == options - {"out", "device", "journal"}


class Loaded(Exception):
    """Raised by the stand-in load_model once it has seen its arguments."""


@pytest.fixture
def loads(monkeypatch, tmp_path):
    """What load_model receives (it then stops the command); run in a folder of its own."""
    monkeypatch.chdir(tmp_path)
    seen = []

    def load_model(spec, device="cpu", dtype=None):
        seen.append((spec, device, dtype))
        raise Loaded

    monkeypatch.setattr("tasklens.models.load_model", load_model)
    return seen


@pytest.mark.parametrize(
    "args",
    [
        ["locate", "-t", "continent_of", "--method", "activation_stats", "--out", "run"],
        ["demo"],
        ["neuron", "0.1", "-t", "continent_of"],
        ["finetune", "currency_code"],
        ["organism", "eval"],
    ],
    ids=lambda args: " ".join(args[:2]) if args[0] == "organism" else args[0],
)
def test_every_command_that_loads_a_model_passes_device_and_dtype_to_it(loads, args):
    import torch

    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--dtype", "bfloat16"])
    assert isinstance(result.exception, Loaded), result.output
    assert loads == [("organism", "cpu", torch.bfloat16)]
    for bad, shown in ((["--device", "gpu"], "Unknown device 'gpu'"), (["--dtype", "int8"], "dtype")):
        one_line_error(CliRunner().invoke(app, [*args, *bad]), shown)
    assert len(loads) == 1  # refused before the model loads


def test_run_takes_device_and_dtype_over_the_config_files(loads, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    config = tmp_path / "run.toml"
    config.write_text('tasks = ["continent_of"]\nout = "run"\ndevice = "cuda"\ndtype = "bfloat16"\n')
    result = CliRunner().invoke(app, ["run", str(config)])
    assert isinstance(result.exception, Loaded), result.output
    result = CliRunner().invoke(app, ["run", str(config), "--device", "cpu", "--dtype", "float32"])
    assert isinstance(result.exception, Loaded), result.output
    assert [load[1:] for load in loads] == [("cuda", torch.bfloat16), ("cpu", torch.float32)]
    one_line_error(CliRunner().invoke(app, ["run", str(config), "--device", "gpu"]), "Unknown device 'gpu'")
    assert len(loads) == 2


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


@pytest.mark.reliability
def test_models_list_and_an_unknown_model_give_every_name_once(tmp_path, monkeypatch):
    """gemma3-270m and the Qwen models list their own name among their aliases."""
    from tasklens.models.zoo import SOURCES

    monkeypatch.setenv("TASKLENS_HOME", str(tmp_path))
    listing = CliRunner().invoke(app, ["models", "list"])
    assert listing.exit_code == 0, listing.output
    names = [n for source in SOURCES.values() for n in (source.name, *source.aliases)]
    assert len(set(names)) < len(names)  # the aliases do repeat names
    shown = [line.split()[0] for line in listing.output.splitlines() if line[:1].strip()]
    shown += [
        n
        for line in listing.output.splitlines()
        if "also: " in line
        for n in line.split("also: ")[1].split(", ")
    ]
    assert sorted(shown) == sorted({"organism", *names})
    result = CliRunner().invoke(app, ["models", "download", "nosuch"])
    one_line_error(result, "Unknown model 'nosuch'")
    listed = result.output.split("choose one of ")[1]
    assert all(listed.count(f"'{name}'") == 1 for name in names), listed
