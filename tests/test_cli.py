"""The command line: every exit code, stdout carries data only, errors are one line without a
traceback, --json is valid and complete, --output is atomic, --help/--version skip TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gradinspect import cli
from gradinspect.errors import ExitStatus, ProbeError
from gradinspect.render import OutputFormat

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def invoke(*args: str | Path) -> Any:
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def seed_c(samples_dir: Path) -> tuple[Path, Path]:
    return samples_dir / "seed_c.h5", samples_dir / "seed_c_x.npy"


def test_success_prints_table_on_stdout_only(seed_c: tuple[Path, Path]) -> None:
    result = invoke(*seed_c)
    assert result.exit_code == ExitStatus.SUCCESS, result.stderr
    assert "‖∂L/∂W‖" in result.stdout
    assert "dense_2" in result.stdout
    assert result.stderr == ""


G_KEYS = {"shape", "norm", "max_abs", "mean_abs", "nan", "inf"}


def validate_schema(doc: dict[str, Any]) -> None:
    """The documented schema-2 keys, with their types (Dense entries keep schema 1's)."""
    assert list(doc)[:1] == ["schema_version"]
    assert doc["schema_version"] == 2
    assert set(doc) >= {"schema_version", "tool", "model", "data", "loss", "coverage", "layers",
                        "warnings"}
    coverage = doc["coverage"]
    assert set(coverage) == {"trainable_params", "inspected_params", "entries", "skipped"}
    assert coverage["entries"] == len(doc["layers"])
    assert coverage["inspected_params"] == sum(ly["params"] for ly in doc["layers"])
    assert doc["tool"]["name"] == "gradinspect"
    assert isinstance(doc["tool"]["version"], str)
    assert set(doc["model"]) >= {"path", "format", "name"}
    assert doc["model"]["format"] in {"keras", "h5", "live"}
    assert set(doc["data"]) >= {"path", "arrays", "samples"}
    for arr in doc["data"]["arrays"]:
        assert set(arr) >= {"name", "shape", "dtype"}
    assert set(doc["loss"]) >= {"name", "reduction", "value"}
    assert doc["loss"]["reduction"] in {"sum", "mean"}
    for layer in doc["layers"]:
        assert set(layer) >= {"name", "path", "kind", "class", "activation", "units",
                              "use_bias", "params", "calls", "input_shape", "output_shape",
                              "weights", "grads", "grad_norm", "weight_grad_norm",
                              "grad_to_weight", "backward_gain", "warnings"}
        variables = {k for k, w in layer["weights"].items() if w is not None}
        assert set(layer["grads"]) - {"input"} == set(layer["weights"])
        assert layer["params"] == sum(int(np.prod(layer["weights"][k]["shape"]))
                                      for k in variables)
        for key in variables:
            assert set(layer["weights"][key]) == {"shape", "norm", "path"}
            assert set(layer["grads"][key]) == G_KEYS
        if layer["grads"]["input"] is not None:
            assert set(layer["grads"]["input"]) == G_KEYS
        if layer["kind"] == "dense":  # schema 1's layout, unchanged
            assert set(layer["grads"]) == {"kernel", "bias", "input"}
            assert (layer["weights"]["bias"] is None) == (not layer["use_bias"])
            assert (layer["grads"]["bias"] is None) == (not layer["use_bias"])
        for finding in layer["warnings"]:
            assert set(finding) >= {"code", "severity", "message", "hint"}
    for finding in doc["warnings"]:
        assert set(finding) >= {"code", "severity", "message", "hint"}


@pytest.mark.parametrize("name", ["seed_a", "seed_b", "seed_c", "mnist_mlp"])
def test_json_has_documented_schema(samples_dir: Path, name: str) -> None:
    result = invoke(samples_dir / f"{name}.keras", samples_dir / f"{name}_x.npy", "--json")
    assert result.exit_code == 0, result.stderr
    assert "NaN" not in result.stdout
    assert "Infinity" not in result.stdout
    doc = json.loads(result.stdout)
    validate_schema(doc)
    assert doc["model"]["format"] == "keras"
    assert doc["data"]["samples"] == np.load(samples_dir / f"{name}_x.npy").shape[0]


def test_nonfinite_figures_are_null_in_json(tmp_path: Path, tfk: Any) -> None:
    _, keras = tfk
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    w, b = model.layers[0].get_weights()
    w[0, 0] = np.inf
    model.layers[0].set_weights([w, b])
    model.save(tmp_path / "inf.keras")
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    result = invoke(tmp_path / "inf.keras", tmp_path / "x.npy", "--json", "--fail-on", "error")
    assert result.exit_code == ExitStatus.FINDINGS
    doc = json.loads(result.stdout)
    assert doc["layers"][0]["weights"]["kernel"]["norm"] is None
    codes = {f["code"] for f in doc["layers"][0]["warnings"]}
    assert "nonfinite_weights" in codes


def test_output_file_is_written_atomically(seed_c: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = invoke(*seed_c, "--output", out)
    assert result.exit_code == 0
    validate_schema(json.loads(out.read_text()))
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert "‖∂L/∂W‖" in result.stdout  # the table still goes to stdout


def test_output_to_missing_folder_is_exit_6(seed_c: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke(*seed_c, "--output", tmp_path / "no" / "such" / "r.json")
    assert result.exit_code == ExitStatus.OUTPUT_ERROR
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("sample", "fail_on", "expected"),
    [
        ("seed_c", "info", 0),  # no findings at all
        ("mnist_mlp", "never", 0),  # worst finding: info (dead relu units at init)
        ("mnist_mlp", "info", 1),
        ("mnist_mlp", "warning", 0),
        ("mnist_mlp", "error", 0),
    ],
)
def test_fail_on_gates_on_severity(samples_dir: Path, sample: str, fail_on: str,
                                   expected: int) -> None:
    result = invoke(samples_dir / f"{sample}.h5", samples_dir / f"{sample}_x.npy", "--json",
                    "--fail-on", fail_on)
    doc = json.loads(result.stdout)
    severities = {f["severity"] for ly in doc["layers"] for f in ly["warnings"]}
    assert severities <= {"info"}
    assert result.exit_code == expected


def _bad_files(tmp: Path, samples: Path) -> dict[str, tuple[list[str], int, str]]:
    """name -> (args, exit code, a word the message must contain)."""
    (tmp / "empty.h5").write_bytes(b"")
    (tmp / "garbage.h5").write_bytes(os.urandom(300))
    good = (samples / "seed_c.h5").read_bytes()
    (tmp / "truncated.h5").write_bytes(good[: len(good) // 2])
    keras_zip = (samples / "seed_c.keras").read_bytes()
    (tmp / "truncated.keras").write_bytes(keras_zip[: len(keras_zip) // 2])
    (tmp / "saved").mkdir()
    (tmp / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "wrong_features.npy", np.ones((2, 7), np.float32))
    np.save(tmp / "wrong_rank.npy", np.ones((10,), np.float32))
    np.save(tmp / "strings.npy", np.array([["a"] * 10]))
    np.save(tmp / "zero.npy", np.ones((0, 10), np.float32))
    np.savez(tmp / "two.npz", a=np.ones((2, 10)), b=np.ones((2, 10)))
    (tmp / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    import h5py

    with h5py.File(tmp / "weights_only.h5", "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    model, data = str(samples / "seed_c.h5"), str(samples / "seed_c_x.npy")
    t = str(tmp)
    return {
        "missing model": ([f"{t}/nope.h5", data], 3, "not found"),
        "empty model": ([f"{t}/empty.h5", data], 3, "empty"),
        "garbage model": ([f"{t}/garbage.h5", data], 3, "unrecognised"),
        "truncated h5": ([f"{t}/truncated.h5", data], 3, "damaged"),
        "truncated keras": ([f"{t}/truncated.keras", data], 3, "damaged"),
        "directory": ([t, data], 3, "directory"),
        "savedmodel": ([f"{t}/saved", data], 3, "SavedModel"),
        "weights only": ([f"{t}/weights_only.h5", data], 3, "weights only"),
        "swapped": ([data, model], 3, "swap"),
        "missing data": ([model, f"{t}/nope.npy"], 4, "not found"),
        "pickled": ([model, f"{t}/pickled.npy"], 4, "pickled"),
        "wrong features": ([model, f"{t}/wrong_features.npy"], 4, "expects 10"),
        "wrong rank": ([model, f"{t}/wrong_rank.npy"], 4, "batch axis"),
        "strings": ([model, f"{t}/strings.npy"], 4, "not numbers"),
        "zero samples": ([model, f"{t}/zero.npy"], 4, "zero samples"),
        "ambiguous npz": ([model, f"{t}/two.npz"], 4, "cannot tell"),
        "corrupt npy": ([model, f"{t}/bad.npy"], 4, "damaged"),
        "model as data": ([model, model], 4, "swap"),
        "bad threshold": ([model, data, "--threshold", "nope=1"], 2, "unknown threshold"),
        "bad option": ([model, data, "--frobnicate"], 2, "No such option"),
    }


def test_bad_input_table(tmp_path: Path, samples_dir: Path) -> None:
    """One row per bad input: exit code, one line on stderr, no traceback, nothing on stdout."""
    failures = []
    for name, (args, code, word) in _bad_files(tmp_path, samples_dir).items():
        result = runner.invoke(cli.app, args)
        err = result.stderr
        problems = []
        if result.exit_code != code:
            problems.append(f"exit {result.exit_code} != {code}")
        if word.lower() not in err.lower():
            problems.append(f"{word!r} not in {err!r}")
        if "Traceback" in err or result.stdout:
            problems.append("traceback or stdout output")
        if code != 2 and len(err.strip().splitlines()) != 1:
            problems.append(f"not one line: {err!r}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


def test_traceback_flag_shows_the_traceback(tmp_path: Path, samples_dir: Path) -> None:
    result = invoke(tmp_path / "nope.h5", samples_dir / "seed_c_x.npy", "--traceback")
    assert result.exit_code == ExitStatus.MODEL_ERROR
    assert "Traceback" in result.stderr


def test_run_error_and_internal_error_and_interrupt(monkeypatch: pytest.MonkeyPatch,
                                                    seed_c: tuple[Path, Path]) -> None:
    from gradinspect import api

    def probe_fails(*a: Any, **k: Any) -> Any:
        raise ProbeError("the forward/backward pass failed at layer dense_2")

    monkeypatch.setattr(api, "inspect_files", probe_fails)
    result = invoke(*seed_c)
    assert result.exit_code == ExitStatus.RUN_ERROR
    assert "dense_2" in result.stderr

    def bug(*a: Any, **k: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(api, "inspect_files", bug)
    result = invoke(*seed_c)
    assert result.exit_code == ExitStatus.RUN_ERROR
    assert "internal error" in result.stderr
    assert "Traceback" not in result.stderr

    def interrupted(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "inspect_files", interrupted)
    result = invoke(*seed_c)
    assert result.exit_code == ExitStatus.INTERRUPTED == 130


def test_every_output_format_renders(seed_c: tuple[Path, Path], capsys: Any) -> None:
    import gradinspect

    report = gradinspect.inspect_files(*seed_c)
    for fmt in OutputFormat:
        config = cli.CliConfig(model=seed_c[0], data=str(seed_c[1]), labels=None,
                               load=cli.LoadOptions(),
                               options=cli.InspectOptions(),
                               output_format=fmt, output=None, flow=True, plot=None,
                               fail_on=cli.FailOn.NEVER,
                               details=True, show_traceback=False)
        cli.emit(report, config)
        assert capsys.readouterr().out.strip()


def test_exit_codes_are_documented_in_readme_and_help() -> None:
    readme = (ROOT / "README.md").read_text()
    for status in ExitStatus:
        assert f"| {int(status)} |" in readme, f"exit code {int(status)} missing from README"
        assert f"{int(status)} " in cli.EXIT_CODES_HELP


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_tensorflow(flag: str) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['gradinspect', '{flag}']\n"
        "from gradinspect.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert ("gradinspect" in result.stdout) if flag == "--version" else "Usage" in result.stdout


def test_cli_process_pauses_collection_for_the_imports_and_the_library_does_not() -> None:
    """The command line pauses the cyclic collector while TensorFlow imports, freezes what
    the imports made and collects again after; outside ``cli_process`` (the library) the
    collector is left as Python set it."""
    code = (
        "import gc\n"
        "from gradinspect._tf import cli_process, tf_modules\n"
        "with cli_process():\n"
        "    assert not gc.isenabled()\n"
        "    tf_modules()\n"
        "    assert gc.isenabled() and gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n"
        "    gc.unfreeze()\n"
        "    with cli_process():  # TensorFlow is imported already: nothing to pause\n"
        "        assert gc.isenabled() and gc.get_freeze_count() == 0\n"
        "assert gc.isenabled() and gc.get_freeze_count() > 0\n"
    )
    library = (
        "import gc\n"
        "from gradinspect._tf import tf_modules\n"
        "tf_modules()\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0\n"
    )
    for source in (code, library):
        result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stderr


def test_console_script_end_to_end_has_no_tf_noise(seed_c: tuple[Path, Path]) -> None:
    result = subprocess.run([sys.executable, "-m", "gradinspect", *map(str, seed_c), "--json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stderr == "", result.stderr
    validate_schema(json.loads(result.stdout))


def test_integer_data_is_cast_and_said(tmp_path: Path, samples_dir: Path) -> None:
    np.save(tmp_path / "ints.npy", np.arange(20, dtype=np.int64).reshape(2, 10))
    result = invoke(samples_dir / "seed_c.h5", tmp_path / "ints.npy", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["data"]["arrays"][0]["dtype"] == "int64"
    assert any("cast" in n for n in doc["data"]["notes"])
    table = invoke(samples_dir / "seed_c.h5", tmp_path / "ints.npy")
    assert "cast to float32" in table.stdout


def test_thresholds_from_pyproject_and_flag(tmp_path: Path, samples_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    args = (samples_dir / "mnist_mlp.h5", samples_dir / "mnist_mlp_x.npy", "--json")
    monkeypatch.chdir(tmp_path)
    base = json.loads(invoke(*args).stdout)
    assert any(f["code"] == "dead_units" for ly in base["layers"] for f in ly["warnings"])
    (tmp_path / "pyproject.toml").write_text(
        "[tool.gradinspect.thresholds]\nsaturation_derivative = 0.0\ndead_entries = 2\n")
    quiet = json.loads(invoke(*args).stdout)
    assert not any(f["code"] == "dead_units" for ly in quiet["layers"] for f in ly["warnings"])
    # the flag wins over the file
    loud = json.loads(invoke(*args, "--threshold", "saturation_derivative=0.01").stdout)
    assert any(f["code"] == "dead_units" for ly in loud["layers"] for f in ly["warnings"])
    (tmp_path / "pyproject.toml").write_text("[tool.gradinspect.thresholds]\nbogus = 1\n")
    bad = invoke(*args)
    assert bad.exit_code == ExitStatus.USAGE
    assert "bogus" in bad.stderr


def test_every_subpackage_is_packaged() -> None:
    """pyproject.toml lists the packages explicitly: a new subpackage missing from the list
    works in the editable checkout and is absent from the wheel a user installs."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "gradinspect").rglob("__init__.py")}
    assert found == listed
