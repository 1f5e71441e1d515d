"""Untrusted files, round 2: configs that would run code or read other files, HDF5 files that
point outside themselves, FIFOs, bombs, text that would drive the terminal, custom losses.

Every hostile file is built here by generator code (no binary blobs in the repository). Each
case is answered with its documented exit code and one plain line on stderr; no payload runs,
no outside byte reaches the report, no input changes. Controls show the same payloads do run
with --unsafe, so these tests can fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import refusals
from refusals import rewrite_keras_config
from typer.testing import CliRunner

from gradinspect import cli
from gradinspect.errors import ExitStatus

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SECRET = "TOP-SECRET-4f1d9c"


def invoke(*args: Any) -> Any:
    return runner.invoke(cli.app, [str(a) for a in args])


def one_plain_line(result: Any, status: ExitStatus, *needles: str) -> None:
    """``refusals.one_plain_line``, and no secret in any output."""
    refusals.one_plain_line(result, status, *needles)
    assert SECRET not in result.stdout + result.stderr


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tfk: Any) -> dict[str, Path]:
    _, keras = tfk
    tmp = tmp_path_factory.mktemp("untrusted")
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(4, name="d"),
                              keras.layers.Dense(2, name="out")])
    model.save(tmp / "m.keras")
    np.save(tmp / "x.npy", np.ones((5, 3), np.float32))
    (tmp / "secret.txt").write_text(SECRET * 100)
    return {"dir": tmp, "model": tmp / "m.keras", "x": tmp / "x.npy",
            "secret": tmp / "secret.txt"}


def _layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = config["config"]["layers"]
    return layers


CONFIG_ATTACKS = {
    # a Lambda wrapping a Keras function, not marshalled code: still refused
    "lambda_keras_function": (lambda c: _layers(c).insert(1, {
        "module": "keras.layers", "class_name": "Lambda", "registered_name": None,
        "config": {"name": "sneaky", "function": {
            "module": "keras.src.utils.file_utils", "class_name": "function",
            "config": "get_file", "registered_name": "function"}}}), "Lambda"),
    "tfsm_layer": (lambda c: _layers(c).insert(1, {
        "module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None,
        "config": {"name": "saved", "filepath": "/tmp/attacker_savedmodel"}}), "TFSMLayer"),
    "file_vocabulary": (lambda c: _layers(c).insert(1, {
        "module": "keras.layers", "class_name": "StringLookup", "registered_name": None,
        "config": {"name": "lookup", "vocabulary": "/etc/passwd"}}), "/etc/passwd"),
    "foreign_module": (lambda c: _layers(c)[1]["config"].update(activation={
        "module": "os", "class_name": "function", "config": "system",
        "registered_name": "function"}), "'os'"),
    "keras_utility_as_activation": (lambda c: _layers(c)[1]["config"].update(activation={
        "module": "keras.src.utils.file_utils", "class_name": "function",
        "config": "get_file", "registered_name": "function"}), "file_utils"),
    "builtin_function": (lambda c: _layers(c)[1]["config"].update(activation={
        "module": "builtins", "class_name": "function", "config": "eval",
        "registered_name": "function"}), "'eval'"),
}


@pytest.mark.parametrize("attack", sorted(CONFIG_ATTACKS))
def test_config_allow_list_refuses_before_keras_builds(base: dict[str, Path], attack: str,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where a fetch would land (~/.keras)
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    edit, needle = CONFIG_ATTACKS[attack]
    hostile = rewrite_keras_config(base["model"], base["dir"] / f"{attack}.keras", edit)
    before = sha(hostile)
    result = invoke(hostile, base["x"])
    one_plain_line(result, ExitStatus.MODEL_ERROR, needle, "--unsafe")
    assert sha(hostile) == before
    assert list(home.iterdir()) == [], "nothing may be written in HOME"


def test_deeply_nested_config_is_one_line(base: dict[str, Path]) -> None:
    def edit(config: dict[str, Any]) -> None:
        _layers(config)[1]["config"]["deep"] = "DEEP"

    hostile = rewrite_keras_config(base["model"], base["dir"] / "deep.keras", edit)
    with zipfile.ZipFile(hostile) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    nested = "[" * 5000 + '"leaf"' + "]" * 5000  # json.dumps itself could not write this
    members["config.json"] = members["config.json"].replace(b'"DEEP"', nested.encode())
    with zipfile.ZipFile(hostile, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    one_plain_line(invoke(hostile, base["x"]), ExitStatus.MODEL_ERROR, "nested")
    raw = base["dir"] / "deep.json"
    raw.write_text("[" * 100_000 + "]" * 100_000)
    one_plain_line(invoke(raw, base["x"], "--weights", base["x"]), ExitStatus.MODEL_ERROR)


def _wide(width: int) -> Any:
    def edit(config: dict[str, Any]) -> None:
        _layers(config)[0]["config"]["batch_shape"] = [None, width]
        _layers(config)[1]["config"]["units"] = width
        _layers(config)[1]["build_config"]["input_shape"] = [None, width]
        _layers(config)[2]["build_config"]["input_shape"] = [None, width]
    return edit


def test_a_huge_declared_model_is_refused_before_allocation(base: dict[str, Path]) -> None:
    # a 50000 x 50000 kernel (10 GB) declared in a file of a few KB
    hostile = rewrite_keras_config(base["model"], base["dir"] / "huge.keras", _wide(50_000))
    result = invoke(hostile, base["x"], "--max-model-bytes", "64MiB")
    one_plain_line(result, ExitStatus.MODEL_ERROR, "64 MiB", "(50000, 50000)",
                   "--max-model-bytes")
    # a 2000 x 2000 kernel (16 MB): over an 8 MiB budget, within a 64 MiB one, where the
    # build goes on (and then fails on the stored weights, which do not match)
    wide = rewrite_keras_config(base["model"], base["dir"] / "wide.keras", _wide(2000))
    one_plain_line(invoke(wide, base["x"], "--max-model-bytes", "8MiB"),
                   ExitStatus.MODEL_ERROR, "8 MiB")
    fits = invoke(wide, base["x"], "--max-model-bytes", "64MiB")
    assert "--max-model-bytes" not in fits.stderr


def _h5_with(path: Path, build: Any) -> Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _external_link(secret: Path) -> Any:
    def build(f: Any) -> None:
        with h5py.File(secret.with_suffix(".h5"), "w") as g:
            g["x"] = np.frombuffer(SECRET.encode() * 3, dtype=np.uint8)[:45].reshape(5, 9)
        f["x"] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/x")
    return build


def _external_storage(secret: Path) -> Any:
    def build(f: Any) -> None:
        f.create_dataset("x", shape=(5, 3), dtype="f4",
                         external=[(str(secret), 0, 60)])
    return build


def _virtual(secret: Path) -> Any:
    def build(f: Any) -> None:
        with h5py.File(secret.with_suffix(".src.h5"), "w") as g:
            g["data"] = np.arange(15, dtype=np.float32).reshape(5, 3)
        layout = h5py.VirtualLayout(shape=(5, 3), dtype="f4")
        layout[:] = h5py.VirtualSource(str(secret.with_suffix(".src.h5")), "data", shape=(5, 3))
        f.create_virtual_dataset("x", layout)
    return build


def _soft_through_external(secret: Path) -> Any:
    def build(f: Any) -> None:
        _external_link(secret)(f)
        f["y"] = h5py.SoftLink("/x")
    return build


def _sparse(secret: Path) -> Any:
    def build(f: Any) -> None:
        f.create_dataset("x", shape=(2**28, 3), dtype="f8", chunks=(1024, 3))
    return build


H5_ATTACKS = {"external_link": (_external_link, "external link"),
              "external_storage": (_external_storage, "external raw files"),
              "virtual_dataset": (_virtual, "virtual dataset"),
              "soft_link_through_external": (_soft_through_external, "external link"),
              "chunks_never_written": (_sparse, "implausible")}


@pytest.mark.parametrize("attack", sorted(H5_ATTACKS))
def test_hdf5_data_and_labels_never_read_another_file(base: dict[str, Path],
                                                      attack: str) -> None:
    build, needle = H5_ATTACKS[attack]
    hostile = _h5_with(base["dir"] / f"{attack}.h5", build(base["secret"]))
    before = sha(hostile)
    one_plain_line(invoke(base["model"], hostile), ExitStatus.DATA_ERROR, needle)
    one_plain_line(invoke(base["model"], base["x"], "--labels", hostile, "--loss", "mse"),
                   ExitStatus.DATA_ERROR, needle)
    assert sha(hostile) == before


def test_hdf5_weights_and_models_never_read_another_file(base: dict[str, Path], tfk: Any,
                                                         tmp_path: Path) -> None:
    _, keras = tfk
    model = keras.models.load_model(base["model"], compile=False)
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "good.weights.h5")
    ok = invoke(tmp_path / "arch.json", base["x"], "--weights", tmp_path / "good.weights.h5")
    assert ok.exit_code == 0, ok.stderr
    with h5py.File(tmp_path / "evil.weights.h5", "w") as f:
        f["layers"] = h5py.ExternalLink(str(tmp_path / "good.weights.h5"), "/layers")
    one_plain_line(invoke(tmp_path / "arch.json", base["x"], "--weights",
                          tmp_path / "evil.weights.h5"), ExitStatus.MODEL_ERROR, "external")
    model.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        f["leak"] = h5py.ExternalLink(str(base["secret"].with_suffix(".h5")), "/x")
    one_plain_line(invoke(tmp_path / "m.h5", base["x"]), ExitStatus.MODEL_ERROR, "external")


def test_fifos_are_refused_without_blocking(base: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    h5 = _h5_with(tmp_path / "ext.h5", lambda f: f.create_dataset(
        "x", shape=(5, 3), dtype="f4", external=[(str(fifo), 0, 60)]))
    for args, status in (([fifo, base["x"]], ExitStatus.MODEL_ERROR),
                         ([base["model"], fifo], ExitStatus.DATA_ERROR),
                         ([base["model"], h5], ExitStatus.DATA_ERROR)):
        result = subprocess.run([sys.executable, "-m", "gradinspect", *map(str, args)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == status, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


PEAK_RSS = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.stderr.write(p.stderr)
"""


def test_bombs_are_refused_with_bounded_memory(base: dict[str, Path], tmp_path: Path) -> None:
    """Refused before anything inflates: the peak RSS of the whole command stays that of
    loading TensorFlow and the model (the npz member is 80 MB, the HDF5 dataset 8 GiB)."""
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.ones((5, 3), np.float32),
                        unused=np.zeros(20_000_000, np.float32))
    sparse = _h5_with(tmp_path / "sparse.h5", _sparse(base["secret"]))
    for data, needle in ((bomb, "inflates"), (sparse, "implausible")):
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m",
                              "gradinspect", str(base["model"]), str(data)],
                             capture_output=True, text=True, timeout=300, check=False)
        code, peak = (int(v) for v in out.stdout.split())
        assert code == ExitStatus.DATA_ERROR, out.stderr
        assert needle in out.stderr
        assert peak < 1536 << 20, f"peak RSS {peak / 2**20:.0f} MiB"


def test_npz_bomb_and_overflowing_npy_header(base: dict[str, Path], tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.ones((5, 3), np.float32),
                        unused=np.zeros(20_000_000, np.float32))  # 80 MB of zeros
    assert bomb.stat().st_size < 1_000_000
    one_plain_line(invoke(base["model"], bomb), ExitStatus.DATA_ERROR, "inflates")
    fine = tmp_path / "fine.npz"
    np.savez_compressed(fine, x=np.ones((5, 3), np.float32), other=np.zeros(1000))
    assert invoke(base["model"], fine).exit_code == 0
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**62, 2**62, 3)}
    huge = tmp_path / "huge.npy"
    with huge.open("wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        fh.write(b"\0" * 64)
    one_plain_line(invoke(base["model"], huge), ExitStatus.DATA_ERROR, "header")


def test_text_from_files_is_printed_as_plain_text(base: dict[str, Path], tmp_path: Path
                                                  ) -> None:
    missing = tmp_path / "exp[final]_missing.npy"
    one_plain_line(invoke(base["model"], missing), ExitStatus.DATA_ERROR,
                   "exp[final]_missing.npy")
    odd = tmp_path / "keys.npz"
    np.savez(odd, **{"\x1b[2Jevil[/x]": np.ones((5, 3)), "second": np.ones((5, 3))})
    result = invoke(base["model"], odd)
    one_plain_line(result, ExitStatus.DATA_ERROR, "\\x1b[2Jevil[/x]")
    plot = invoke(base["model"], base["x"], "--plot", tmp_path / "p.png")
    assert plot.exit_code in (0, ExitStatus.USAGE)  # matplotlib is a test extra
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 2, "layers": [{"nopath": 1}]}))
    malformed = runner.invoke(cli.diff_app, [str(bad), str(bad)])
    one_plain_line(malformed, ExitStatus.DATA_ERROR, "malformed")


def test_compiled_custom_loss_functions_are_used(tfk: Any, tmp_path: Path) -> None:
    """A model compiled with a loss function of its own (Keras 3 registered, or Keras 2 by
    name) is inspected with that loss once --custom-objects defines it."""
    tf, keras = tfk
    module = tmp_path / "my_losses.py"
    module.write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='mine')\n"
        "def my_loss(y_true, y_pred):\n"
        "    return keras.ops.mean(2.0 * keras.ops.square(y_true - y_pred), axis=-1)\n\n"
        "def k2_loss(y_true, y_pred):\n"
        "    return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import my_losses  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", loss=my_losses.my_loss)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    y = np.random.default_rng(2).standard_normal((6, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    want = float(np.mean(2.0 * np.square(y - np.asarray(model(x))), axis=-1).mean())
    args = [tmp_path / "m.keras", tmp_path / "x.npy", "-y", tmp_path / "y.npy"]
    for extra in ([], ["--loss", "my_loss"]):
        result = invoke(*args, "--custom-objects", module, *extra, "--json")
        assert result.exit_code == 0, result.stderr
        loss = json.loads(result.stdout)["loss"]
        assert loss["name"] == "my_loss"
        assert loss["value"] == pytest.approx(want, rel=1e-5)
    one_plain_line(invoke(*args, "--loss", "nope_loss"), ExitStatus.USAGE, "nope_loss")
    # in a process where nothing registered my_loss (this one has: it imported the module)
    alone = subprocess.run([sys.executable, "-m", "gradinspect", *map(str, args)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert alone.returncode == ExitStatus.USAGE, alone.stderr
    assert "my_loss" in alone.stderr
    assert "--custom-objects" in alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    tf_keras = pytest.importorskip("tf_keras")
    k2 = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])

    def k2_loss(y_true: Any, y_pred: Any) -> Any:
        return tf_keras.backend.mean(tf_keras.backend.abs(y_true - y_pred), axis=-1)

    k2.compile("sgd", loss=k2_loss)
    k2.save(tmp_path / "k2.h5")
    result = invoke(tmp_path / "k2.h5", tmp_path / "x.npy", "-y", tmp_path / "y.npy",
                    "--custom-objects", module, "--json")
    assert result.exit_code == 0, result.stderr
    loss = json.loads(result.stdout)["loss"]
    assert loss["name"] == "k2_loss"
    want_k2 = float(np.mean(np.abs(y - np.asarray(k2(x))), axis=-1).mean())
    assert loss["value"] == pytest.approx(want_k2, rel=1e-5)
    del tf
