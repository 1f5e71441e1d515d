"""Hardening: untrusted models stay inert, custom objects only on request, legacy JSON+weights
files load, nothing read is modified, runs are reproducible, Ctrl-C is clean, and mutated files
never end in an uncaught exception."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import gradinspect
from gradinspect import cli
from gradinspect.errors import ExitStatus

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def digest(*paths: Path) -> dict[str, str]:
    out = {}
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def lambda_models(tmp_path_factory: pytest.TempPathFactory, tfk: Any) -> dict[str, Path]:
    """Models whose Lambda layer creates a marker file when it runs."""
    _, keras = tfk
    tmp = tmp_path_factory.mktemp("lambda")
    marker = tmp / "PAYLOAD_RAN"
    code = f"(__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]"
    fn = eval(f"lambda x: {code}")  # the payload a hostile file would carry
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(fn),
                              keras.layers.Dense(2)])
    model.save(tmp / "lambda.keras")
    model.save(tmp / "lambda.h5")
    tf_keras = pytest.importorskip("tf_keras")
    k2 = tf_keras.Sequential([tf_keras.layers.Lambda(fn, input_shape=(3,)),
                              tf_keras.layers.Dense(2)])
    k2.save(tmp / "lambda_keras2.h5")
    np.save(tmp / "x.npy", np.ones((2, 3), np.float32))
    marker.unlink(missing_ok=True)
    return {"dir": tmp, "marker": marker}


@pytest.mark.parametrize("name", ["lambda.keras", "lambda.h5", "lambda_keras2.h5"])
def test_lambda_payload_does_not_run_without_unsafe(lambda_models: dict[str, Path],
                                                    name: str) -> None:
    tmp, marker = lambda_models["dir"], lambda_models["marker"]
    before = digest(tmp / name)
    result = runner.invoke(cli.app, [str(tmp / name), str(tmp / "x.npy")])
    assert result.exit_code == ExitStatus.MODEL_ERROR
    assert "Lambda" in result.stderr
    assert "--unsafe" in result.stderr
    assert not marker.exists(), "the payload ran without --unsafe"
    trusted = runner.invoke(cli.app, [str(tmp / name), str(tmp / "x.npy"), "--unsafe"])
    assert trusted.exit_code == 0, trusted.stderr
    assert "warning" in trusted.stderr
    assert marker.exists(), "with --unsafe the model (and its Lambda) really runs"
    marker.unlink()
    assert digest(tmp / name) == before
    # the global safe-mode switch is put back: a later load is refused again
    again = runner.invoke(cli.app, [str(tmp / name), str(tmp / "x.npy")])
    assert again.exit_code == ExitStatus.MODEL_ERROR
    assert not marker.exists()


CUSTOM_MODULE = '''
import keras


class ScaledDense(keras.layers.Dense):
    """A Dense whose output is scaled: a custom class Keras cannot know by itself."""

    def __init__(self, units, scale=2.0, **kwargs):
        super().__init__(units, **kwargs)
        self.scale = scale

    def call(self, inputs):
        return super().call(inputs) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
'''


def test_custom_objects_only_on_request(tmp_path: Path) -> None:
    (tmp_path / "my_layers.py").write_text(CUSTOM_MODULE)
    build = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import numpy as np, keras, my_layers\n"
        "m = keras.Sequential([keras.Input((3,)), my_layers.ScaledDense(4, name='scaled'), "
        "keras.layers.Dense(1)])\n"
        "m.save(sys.argv[1] + '/custom.keras')\n"
        "np.save(sys.argv[1] + '/x.npy', np.ones((2, 3), np.float32))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", build, str(tmp_path)], check=True, env=env,
                   capture_output=True)
    (tmp_path / "my_layers.py").rename(tmp_path / "elsewhere.py")  # not importable by name
    base = [sys.executable, "-m", "gradinspect", str(tmp_path / "custom.keras"),
            str(tmp_path / "x.npy")]
    refused = subprocess.run(base, capture_output=True, text=True, env=env, check=False,
                             cwd=tmp_path)
    assert refused.returncode == ExitStatus.MODEL_ERROR, refused.stderr
    assert "ScaledDense" in refused.stderr
    assert "--custom-objects" in refused.stderr
    loaded = subprocess.run([*base, "--custom-objects", str(tmp_path / "elsewhere.py"),
                             "--json"], capture_output=True, text=True, env=env, check=False,
                            cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    doc = json.loads(loaded.stdout)
    assert doc["layers"][0]["class"] == "ScaledDense"
    broken = subprocess.run([*base, "--custom-objects", str(tmp_path / "missing.py")],
                            capture_output=True, text=True, env=env, check=False)
    assert broken.returncode == ExitStatus.USAGE


def test_keras2_json_plus_weights(tmp_path: Path, tfk: Any) -> None:
    tf, _keras = tfk
    tf_keras = pytest.importorskip("tf_keras")
    layers = tf_keras.layers
    tf_keras.utils.set_random_seed(2)
    inner = tf_keras.Sequential([layers.Dense(4, activation="tanh", input_shape=(5,),
                                              name="enc")], name="inner")
    inp = tf_keras.Input((5,))
    h = layers.Dropout(0.2)(inner(inp))
    h = layers.BatchNormalization()(layers.Dense(3, name="pre")(h))
    model = tf_keras.Model(inp, layers.Activation("sigmoid")(h))
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "weights.h5")
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    before = digest(tmp_path)
    report = gradinspect.inspect_files(tmp_path / "arch.json", tmp_path / "x.npy",
                                       load=gradinspect.LoadOptions(
                                           weights=str(tmp_path / "weights.h5")))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model(x))
    grads = {v.name: g for v, g in zip(model.trainable_variables,
                                       tape.gradient(total, model.trainable_variables),
                                       strict=True)}
    assert report.model.format == "json"
    assert report.loss.value == pytest.approx(float(total), rel=1e-5)
    assert report["inner/enc"].grads.kernel.norm == pytest.approx(
        float(np.linalg.norm(grads["enc/kernel:0"])), rel=1e-5)
    assert report["pre"].activity is not None
    assert report["pre"].activity.source.endswith("activation")
    assert digest(tmp_path) == before
    missing = runner.invoke(cli.app, [str(tmp_path / "arch.json"), str(tmp_path / "x.npy")])
    assert missing.exit_code == ExitStatus.MODEL_ERROR
    assert "--weights" in missing.stderr
    weights_as_model = runner.invoke(cli.app, [str(tmp_path / "weights.h5"),
                                               str(tmp_path / "x.npy")])
    assert weights_as_model.exit_code == ExitStatus.MODEL_ERROR
    assert "--weights" in weights_as_model.stderr


def test_keras3_json_plus_weights(tmp_path: Path, tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="elu")])
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "w.weights.h5")
    x = np.ones((2, 5), np.float32)
    np.save(tmp_path / "x.npy", x)
    report = gradinspect.inspect_files(tmp_path / "arch.json", tmp_path / "x.npy",
                                       load=gradinspect.LoadOptions(
                                           weights=str(tmp_path / "w.weights.h5")))
    direct = gradinspect.inspect(model, x)
    assert report.layers[0].grads.kernel.norm == pytest.approx(
        direct.layers[0].grads.kernel.norm, rel=1e-6)


def test_content_decides_the_format_not_the_extension(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes((SAMPLES / "seed_c.keras").read_bytes())
    (tmp_path / "model.keras").write_bytes((SAMPLES / "seed_c.h5").read_bytes())
    (tmp_path / "data.csv").write_bytes((SAMPLES / "seed_c_x.npy").read_bytes())
    a = gradinspect.inspect_files(tmp_path / "model.h5", tmp_path / "data.csv")
    b = gradinspect.inspect_files(tmp_path / "model.keras", SAMPLES / "seed_c_x.npy")
    assert (a.model.format, b.model.format) == ("keras", "h5")
    assert a.layers[0].grads.kernel.norm == pytest.approx(b.layers[0].grads.kernel.norm)


def test_model_without_trainable_variables_is_explained(tmp_path: Path, tfk: Any) -> None:
    _, keras = tfk
    frozen = keras.layers.Conv1D(2, 2)
    model = keras.Sequential([keras.Input((4, 3)), frozen, keras.layers.Flatten()])
    frozen.trainable = False
    model.save(tmp_path / "frozen.keras")
    np.save(tmp_path / "x.npy", np.ones((2, 4, 3), np.float32))
    result = runner.invoke(cli.app, [str(tmp_path / "frozen.keras"), str(tmp_path / "x.npy")])
    assert result.exit_code == ExitStatus.MODEL_ERROR
    assert "no trainable variables" in result.stderr
    assert "Conv1D" in result.stderr
    assert "Traceback" not in result.stderr
    frozen.trainable = True  # the same model without Dense layers is inspected in full
    model.save(tmp_path / "conv.keras")
    result = runner.invoke(cli.app, [str(tmp_path / "conv.keras"), str(tmp_path / "x.npy"),
                                     "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [ly["kind"] for ly in doc["layers"]] == ["conv"]
    assert doc["coverage"]["inspected_params"] == doc["coverage"]["trainable_params"] == 14


def test_unreadable_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root reads everything, so the permission check is exercised through os.access
    from gradinspect.io import sniff

    monkeypatch.setattr(sniff, "_readable", lambda path: False)
    result = runner.invoke(cli.app, [str(SAMPLES / "seed_c.h5"), str(SAMPLES / "seed_c_x.npy")])
    assert result.exit_code == ExitStatus.MODEL_ERROR
    assert "not readable" in result.stderr


def test_inputs_are_never_modified_and_runs_are_reproducible(tmp_path: Path, tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(3)])
    model.compile(loss="mse")
    for fmt in ("keras", "h5"):
        model.save(tmp_path / f"m.{fmt}")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((10, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.standard_normal((10, 3)).astype(np.float32))
    np.save(tmp_path / "bad_y.npy", rng.standard_normal((9, 3)).astype(np.float32))
    inputs = [tmp_path / n for n in ("m.keras", "m.h5", "x.npy", "y.npy", "bad_y.npy")]
    before = digest(*inputs)
    runs = [
        ["m.keras", "x.npy", "-y", "y.npy", "--training", "--seed", "5", "--verify",
         "--gradcheck", "2", "--per-sample", "-o", "out1.json"],
        ["m.keras", "x.npy", "-y", "y.npy", "--training", "--seed", "5", "--verify",
         "--gradcheck", "2", "--per-sample", "-o", "out2.json"],
        ["m.h5", "x.npy", "--batch-size", "3", "--json"],
        ["m.h5", "x.npy", "-y", "bad_y.npy"],  # fails: labels of the wrong length
        ["x.npy", "m.h5"],  # fails: swapped
    ]
    codes = []
    for args in runs:
        result = runner.invoke(cli.app, [str(tmp_path / a) if (tmp_path / a).exists() or
                                         a.endswith(".json") else a for a in args])
        codes.append(result.exit_code)
    assert codes == [0, 0, 0, ExitStatus.DATA_ERROR, ExitStatus.MODEL_ERROR]
    assert digest(*inputs) == before
    assert (tmp_path / "out1.json").read_bytes() == (tmp_path / "out2.json").read_bytes()


def test_ctrl_c_exits_130_and_leaves_no_output(tmp_path: Path) -> None:
    big = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(300_000, 784))
    mm[:] = 0.5
    del mm
    out = tmp_path / "report.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # like `python -m gradinspect`, with Python's SIGINT handler back in place: a child
    # inherits an ignored SIGINT when pytest itself runs in the background
    launcher = ("import runpy, signal, sys; signal.signal(signal.SIGINT, "
                "signal.default_int_handler); sys.argv[0] = 'gradinspect'; "
                "runpy.run_module('gradinspect', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(SAMPLES / "mnist_mlp.h5"),
                             str(big), "--batch-size", "8", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.INTERRUPTED, stderr
    assert stderr.decode().strip().splitlines()[-1] == "gradinspect: interrupted"
    assert b"Traceback" not in stderr
    assert stdout == b""
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["big.npy"]


# ------------------------------------------------------------------ fuzzing

@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    import h5py

    tmp = tmp_path_factory.mktemp("fuzzsrc")
    x = np.load(SAMPLES / "seed_a_x.npy")
    np.savez(tmp / "d.npz", x=x)
    with h5py.File(tmp / "d.h5", "w") as f:
        f["x"] = x
    # link and storage structures for the flips to land in: a soft link, an external link,
    # external raw storage (refused as they are; mutated, they must still end cleanly)
    with h5py.File(tmp / "links.h5", "w") as f:
        f["x"] = x
        f["alias"] = h5py.SoftLink("/x")
        f["elsewhere"] = h5py.ExternalLink("other.h5", "/x")
        f.create_dataset("raw", shape=(2, 3), dtype="f4", external=[("raw.bin", 0, 24)])
    model_links = tmp / "model_links.h5"
    model_links.write_bytes((SAMPLES / "seed_a.h5").read_bytes())
    with h5py.File(model_links, "a") as f:
        f["model_weights/alias"] = h5py.SoftLink("/model_weights")
        f["model_weights/elsewhere"] = h5py.ExternalLink("other.h5", "/")
    return {
        "model.h5": (SAMPLES / "seed_a.h5").read_bytes(),
        "model.keras": (SAMPLES / "seed_a.keras").read_bytes(),
        "model_links.h5": model_links.read_bytes(),
        "data.npy": (SAMPLES / "seed_a_x.npy").read_bytes(),
        "data.npz": (tmp / "d.npz").read_bytes(),
        "data.h5": (tmp / "d.h5").read_bytes(),
        "data_links.h5": (tmp / "links.h5").read_bytes(),
    }


class Mutation(tuple):  # type: ignore[type-arg]
    """(file name, mutated bytes), shown briefly when hypothesis reports a failing case."""

    def __repr__(self) -> str:
        return (f"Mutation({self[0]!r}, {len(self[1])} bytes, sha256 "
                f"{hashlib.sha256(self[1]).hexdigest()[:16]})")


@st.composite
def mutations(draw: Any, sources: dict[str, bytes]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(sources)))
    data = bytearray(sources[name])
    kind = draw(st.sampled_from(["flip", "truncate", "header", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 16))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "header":
        start = draw(st.integers(0, min(511, len(data) - 1)))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[start : start + len(chunk)] = chunk
    else:
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=256))
    return Mutation((name, bytes(data)))


FUZZ_EXAMPLES = 500


def test_fuzzed_files_never_crash(fuzz_sources: dict[str, bytes], tmp_path: Path,
                                  request: pytest.FixtureRequest) -> None:
    examples = FUZZ_EXAMPLES * (10 if request.config.getoption("--thorough") else 1)
    allowed = {ExitStatus.SUCCESS, ExitStatus.FINDINGS, ExitStatus.MODEL_ERROR,
               ExitStatus.DATA_ERROR}
    seen: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutations(fuzz_sources))
    def one(case: tuple[str, bytes]) -> None:
        name, blob = case
        target = tmp_path / name
        target.write_bytes(blob)
        model = target if name.startswith("model") else SAMPLES / "seed_a.h5"
        data = target if name.startswith("data") else SAMPLES / "seed_a_x.npy"
        result = runner.invoke(cli.app, [str(model), str(data), "--json"])
        seen[result.exit_code] = seen.get(result.exit_code, 0) + 1
        (tmp_path / f"last_{name}").write_bytes(blob)  # kept for a post-mortem
        brief = (name, result.exit_code, result.stderr[:300])
        assert result.exit_code in allowed, brief
        assert "Traceback" not in result.stderr, brief
        assert "internal error" not in result.stderr, brief
        if result.exit_code in (0, 1):
            json.loads(result.stdout)
        else:
            assert result.stdout == ""
            assert len(result.stderr.strip().splitlines()) == 1

    one()
    assert sum(seen.values()) >= examples * 0.9
