"""Losses with labels (by name, compiled, per output with weights), every data format, batched
streaming and training mode — each loss and gradient compared with the same Keras loss computed
by hand on the model."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import gradinspect
from gradinspect import cli
from gradinspect.cli import terminal as cli_terminal
from gradinspect.errors import DataError, ExitStatus, UsageError

RNG = np.random.default_rng(5)
X = RNG.standard_normal((12, 4)).astype(np.float32)
runner = CliRunner()


def classifier(keras: Any, out_activation: str | None = "softmax", classes: int = 3) -> Any:
    keras.utils.set_random_seed(8)
    return keras.Sequential([
        keras.Input((4,), name="x"),
        keras.layers.Dense(6, activation="tanh", name="hidden"),
        keras.layers.Dense(classes, activation=out_activation, name="out"),
    ], name="clf")


def by_hand(tf: Any, model: Any, fn: Any, y: np.ndarray, reduction: str = "mean",
            **kwargs: Any) -> tuple[float, np.ndarray]:
    """The Keras loss function on the model, reduced by hand, and dL/dW of the first layer."""
    with tf.GradientTape() as tape:
        values = fn(tf.constant(y), model(X), **kwargs)
        total = tf.reduce_mean(values) if reduction == "mean" else tf.reduce_sum(values)
    grad = tape.gradient(total, model.get_layer("hidden").kernel)
    return float(total), np.asarray(grad, dtype=np.float64)


CASES = [
    ("mse", None, "float"),
    ("mae", None, "float"),
    ("huber", None, "float"),
    ("kl_divergence", "softmax", "prob"),
    ("binary_crossentropy", "sigmoid", "binary"),
    ("categorical_crossentropy", "softmax", "onehot"),
    ("sparse_categorical_crossentropy", "softmax", "ids"),
]


def _labels(kind: str) -> np.ndarray:
    if kind == "float":
        return RNG.standard_normal((12, 3)).astype(np.float32)
    if kind == "prob":
        p = RNG.uniform(0.1, 1, (12, 3)).astype(np.float32)
        return p / p.sum(axis=1, keepdims=True)
    if kind == "binary":
        return RNG.integers(0, 2, (12, 3)).astype(np.float32)
    if kind == "onehot":
        return np.eye(3, dtype=np.float32)[RNG.integers(0, 3, 12)]
    return RNG.integers(0, 3, 12).astype(np.int64)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("name", "activation", "kind"), CASES)
def test_keras_loss_by_name_matches_hand_computation(tfk: Any, name: str, activation: str | None,
                                                     kind: str, reduction: str) -> None:
    tf, keras = tfk
    model = classifier(keras, activation)
    y = _labels(kind)
    report = gradinspect.inspect(model, X, y, loss=name, reduction=reduction)
    value, grad = by_hand(tf, model, keras.losses.get(name), y, reduction)
    assert report.loss.name == keras.losses.get(name).__name__  # canonical: mse -> mean_sq...
    assert report.loss.reduction == reduction
    assert report.loss.source == "flag"
    assert report.loss.value == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert report["hidden"].grads.kernel.norm == pytest.approx(np.linalg.norm(grad), rel=1e-4,
                                                               abs=1e-7)


@pytest.mark.parametrize("batch_size", [1, 5, 12])
def test_batched_keras_loss_equals_one_pass(tfk: Any, batch_size: int) -> None:
    tf, keras = tfk
    model = classifier(keras, None)
    y = RNG.integers(0, 3, 12)
    kwargs = {"loss": "sparse_categorical_crossentropy", "from_logits": True}
    whole = gradinspect.inspect(model, X, y, **kwargs)
    batched = gradinspect.inspect(model, X, y, batch_size=batch_size, **kwargs)
    value, grad = by_hand(tf, model, keras.losses.sparse_categorical_crossentropy, y,
                          from_logits=True)
    for r in (whole, batched):
        assert r.loss.value == pytest.approx(value, rel=1e-5)
        assert r["hidden"].grads.kernel.norm == pytest.approx(np.linalg.norm(grad), rel=1e-4)
        assert r.loss.from_logits is True


def test_integer_labels_are_one_hot_for_categorical(tfk: Any) -> None:
    tf, keras = tfk
    model = classifier(keras)
    ids = RNG.integers(0, 3, 12)
    report = gradinspect.inspect(model, X, ids, loss="categorical_crossentropy")
    value, _ = by_hand(tf, model, keras.losses.categorical_crossentropy,
                       np.eye(3, dtype=np.float32)[ids])
    assert report.loss.value == pytest.approx(value, rel=1e-5)
    assert any("one-hot" in n for n in report.data.notes)


def test_label_errors_are_clear(tfk: Any) -> None:
    _, keras = tfk
    model = classifier(keras)
    with pytest.raises(DataError, match=r"outside 0\.\.2"):
        gradinspect.inspect(model, X, np.full(12, 3), loss="sparse_categorical_crossentropy")
    with pytest.raises(DataError, match="shape"):
        gradinspect.inspect(model, X, np.zeros((12, 5), np.float32), loss="mse")
    with pytest.raises(DataError, match="rows"):
        gradinspect.inspect(model, X, np.zeros((11, 3), np.float32), loss="mse")
    with pytest.raises(DataError, match="needs labels"):
        gradinspect.inspect(model, X, loss="mse")
    with pytest.raises(UsageError, match="unknown loss"):
        gradinspect.inspect(model, X, np.zeros((12, 3)), loss="nonsense")
    with pytest.raises(DataError, match="class ids"):
        gradinspect.inspect(model, X, np.zeros((12, 3)), loss="sparse_categorical_crossentropy")


def _save_compiled(keras: Any, path: Path, fmt: str) -> Any:
    model = classifier(keras)
    model.compile(loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  loss_weights=[2.0])
    model.save(path / f"m.{fmt}")
    return model


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_compiled_loss_is_the_default_with_labels(tfk: Any, tmp_path: Path, fmt: str) -> None:
    tf, keras = tfk
    model = _save_compiled(keras, tmp_path, fmt)
    y = _labels("onehot")
    np.savez(tmp_path / "d.npz", x=X, y=y)
    report = gradinspect.inspect_files(tmp_path / f"m.{fmt}", tmp_path / "d.npz")
    value, grad = by_hand(tf, model, keras.losses.categorical_crossentropy, y,
                          label_smoothing=0.1)
    assert report.loss.source == "compiled"
    assert report.loss.name == "categorical_crossentropy"
    assert report.loss.value == pytest.approx(2.0 * value, rel=1e-5)
    assert report["hidden"].grads.kernel.norm == pytest.approx(2.0 * np.linalg.norm(grad),
                                                               rel=1e-4)
    plain = gradinspect.inspect_files(tmp_path / f"m.{fmt}", tmp_path / "d.npz",
                                      gradinspect.InspectOptions(loss="sum"))
    assert plain.loss.name == "sum"
    np.save(tmp_path / "x.npy", X)
    no_labels = gradinspect.inspect_files(tmp_path / f"m.{fmt}", tmp_path / "x.npy")
    assert no_labels.loss.name == "sum"
    assert no_labels.loss.source == "default"


def test_keras2_compiled_loss_with_from_logits(tfk: Any, tmp_path: Path) -> None:
    tf, _ = tfk
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([tf_keras.layers.Dense(5, activation="relu", input_shape=(4,),
                                                       name="hidden"),
                                 tf_keras.layers.Dense(3, name="out")])
    model.compile("adam", loss=tf_keras.losses.CategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "k2.h5")
    y = _labels("onehot")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    report = gradinspect.inspect_files(tmp_path / "k2.h5", tmp_path / "x.npy",
                                       labels_path=tmp_path / "y.npy")
    with tf.GradientTape() as tape:
        total = tf.reduce_mean(tf_keras.losses.categorical_crossentropy(y, model(X),
                                                                        from_logits=True))
    grad = tape.gradient(total, model.layers[0].kernel)
    assert report.loss.source == "compiled"
    assert report.loss.from_logits is True
    assert report.loss.value == pytest.approx(float(total), rel=1e-5)
    assert report["hidden"].grads.kernel.norm == pytest.approx(float(np.linalg.norm(grad)),
                                                               rel=1e-4)
    assert not [f for ly in report.layers for f in ly.warnings if f.code == "logits_mismatch"]


def test_multi_output_compiled_losses_and_weights(tfk: Any, tmp_path: Path) -> None:
    tf, keras = tfk
    keras.utils.set_random_seed(3)
    inp = keras.Input((4,), name="x")
    h = keras.layers.Dense(6, activation="relu", name="hidden")(inp)
    a = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    b = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model(inp, [a, b])
    model.compile(loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5})
    model.save(tmp_path / "mo.keras")
    ya = RNG.integers(0, 3, 12)
    yb = RNG.standard_normal((12, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=X, y_cls=ya, y_reg=yb)
    report = gradinspect.inspect_files(tmp_path / "mo.keras", tmp_path / "d.npz")
    with tf.GradientTape() as tape:
        pa, pb = model(X)
        total = (tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(ya, pa))
                 + 0.5 * tf.reduce_mean(keras.losses.mean_squared_error(yb, pb)))
    grad = tape.gradient(total, model.get_layer("hidden").kernel)
    assert report.loss.name == "sparse_categorical_crossentropy+mean_squared_error"
    assert report.loss.value == pytest.approx(float(total), rel=1e-5)
    assert report["hidden"].grads.kernel.norm == pytest.approx(float(np.linalg.norm(grad)),
                                                               rel=1e-4)


def test_hdf5_csv_and_dataset_paths(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = classifier(keras, None)
    model.save(tmp_path / "m.keras")
    y = RNG.standard_normal((12, 3)).astype(np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = X
        f["y"] = y
        f["group/other"] = X * 2
    with (tmp_path / "d.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "d"])
        w.writerows(X.tolist())
    np.save(tmp_path / "x.npy", X)
    opts = gradinspect.InspectOptions(loss="mse")
    ref = gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "x.npy", opts,
                                    labels_path=f"{tmp_path}/d.h5:/y")
    from_h5 = gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "d.h5", opts)
    streamed = gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "d.h5",
                                         gradinspect.InspectOptions(loss="mse", batch_size=5))
    from_csv = gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "d.csv", opts,
                                         labels_path=f"{tmp_path}/d.h5:/y")
    doubled = gradinspect.inspect_files(tmp_path / "m.keras", f"{tmp_path}/d.h5:/group/other",
                                        opts, labels_path=f"{tmp_path}/d.h5:/y")
    for r in (from_h5, streamed, from_csv):
        assert r.loss.value == pytest.approx(ref.loss.value, rel=1e-5)
        assert r["hidden"].grads.kernel.norm == pytest.approx(ref["hidden"].grads.kernel.norm,
                                                              rel=1e-5)
    assert doubled.loss.value != pytest.approx(ref.loss.value, rel=1e-3)
    assert from_csv.data.arrays[0].dtype == "float64"


def _without_paths(report: Any) -> list[Any]:
    """Layers as JSON data, without the Keras variable paths: an in-process model's include
    the model's name (``clf/hidden/kernel``), the same model loaded from a file's do not."""
    layers = report.to_dict()["layers"]
    for layer in layers:
        for w in layer["weights"].values():
            if w is not None:
                w.pop("path")
    return list(layers)


def test_batches_read_from_npy_reach_tensorflow_without_a_copy(
        tfk: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows read from a .npy or HDF5 file, and dtype conversions, are buffers of their own:
    TensorFlow takes them over (no copy) and the figures equal the in-memory run's exactly. The
    caller's arrays are always copied, and a buffer TensorFlow could not use as is (misaligned,
    read-only, strided) is copied rather than crashing the process."""
    tf, keras = tfk
    from gradinspect.engine import runners
    from gradinspect.io.data.rows import BUFFER_ALIGNMENT, H5Rows, NpyRows, aligned_empty

    model = classifier(keras, None)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "x64.npy", X.astype(np.float64))
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["x"] = X
    h5 = h5py.File(tmp_path / "rows.h5", "r")
    offset = np.load(tmp_path / "x.npy", mmap_mode="r").offset
    for rows in (NpyRows(tmp_path / "x.npy", X.shape, X.dtype, offset), H5Rows(h5["x"])):
        for start, stop in ((0, 12), (1, 6), (5, 12), (11, 12), (4, 4)):
            part = rows[start:stop]
            assert part.size == 0 or part.ctypes.data % BUFFER_ALIGNMENT == 0
            np.testing.assert_array_equal(part, X[start:stop])
    h5.close()
    short = tmp_path / "short.npy"
    short.write_bytes((tmp_path / "x.npy").read_bytes()[:-8])  # cut after the header check
    rows = NpyRows(short, X.shape, X.dtype, offset)
    np.testing.assert_array_equal(rows[0:11], X[:11])
    with pytest.raises(DataError, match="shorter than its header"):
        rows[10:12]

    seen: list[bool] = []
    real = runners.batch_tensor

    def spy(tf_: Any, array: Any, fresh: bool = False) -> Any:
        seen.append(fresh)
        return real(tf_, array, fresh)

    monkeypatch.setattr(runners, "batch_tensor", spy)
    opts = gradinspect.InspectOptions(batch_size=5)
    in_memory = gradinspect.inspect(model, X, batch_size=5)
    assert seen == [False, False, False]
    model.save(tmp_path / "m.keras")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = X.astype(">f4")  # big-endian: converted, so a buffer of its own either way
        f["y"] = X
    for name in ("x.npy", "x64.npy", "x.h5:/x", "x.h5:/y"):
        seen.clear()
        report = gradinspect.inspect_files(tmp_path / "m.keras", f"{tmp_path}/{name}", opts)
        assert seen == [True, True, True]
        assert _without_paths(report) == _without_paths(in_memory)
    seen.clear()
    gradinspect.inspect(model, X.astype(np.float64), batch_size=5)
    assert seen == [True, True, True]  # converted to float32: a buffer of its own
    seen.clear()
    mapped = np.lib.format.open_memmap(tmp_path / "mapped.npy", mode="w+", dtype=np.float32,
                                       shape=X.shape)
    mapped[...] = X
    gradinspect.inspect(model, mapped, batch_size=5)  # a view of the caller's memory map
    assert seen == [False, False, False]

    def aliased(array: np.ndarray, fresh: bool) -> bool:
        tensor = real(tf, array, fresh)
        before = float(tf.reduce_sum(tensor))
        array.reshape(-1)[0] += 1.0
        return float(tf.reduce_sum(tensor)) != before

    def buffer() -> np.ndarray:
        out = aligned_empty((4, 3), np.dtype(np.float32))
        out[...] = 1.0
        return out

    assert aliased(buffer(), fresh=True)
    assert not aliased(buffer(), fresh=False)
    misaligned = aligned_empty((53,), np.dtype(np.uint8))[4:52].view(np.float32).reshape(4, 3)
    misaligned[...] = 1.0
    assert not aliased(misaligned, fresh=True)
    read_only = buffer()
    read_only.flags.writeable = False
    assert float(tf.reduce_sum(real(tf, read_only, True))) == 12.0
    assert float(tf.reduce_sum(real(tf, buffer()[:, ::2], True))) == 8.0


def test_samples_limits_the_rows(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = classifier(keras, None)
    head = gradinspect.inspect(model, X[:5])
    limited = gradinspect.inspect(model, X, samples=5)
    assert limited.data.samples == 5
    assert limited.to_dict()["layers"] == head.to_dict()["layers"]


def test_training_mode_is_seeded_and_stated(tfk: Any) -> None:
    _, keras = tfk
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, name="a"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2, name="b")])
    a = gradinspect.inspect(model, X, training=True, seed=3)
    b = gradinspect.inspect(model, X, training=True, seed=3)
    c = gradinspect.inspect(model, X, training=True, seed=4)
    inference = gradinspect.inspect(model, X)
    assert a.training is True
    assert inference.training is False
    assert a.to_json() == b.to_json()
    assert a["a"].grads.kernel.norm != c["a"].grads.kernel.norm
    assert a["a"].grads.kernel.norm != inference["a"].grads.kernel.norm


def test_cli_with_labels_and_errors(tfk: Any, tmp_path: Path) -> None:
    _, keras = tfk
    model = classifier(keras)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", RNG.integers(0, 3, 12))
    np.save(tmp_path / "bad_y.npy", np.full(12, 7))
    base = [str(tmp_path / "m.keras"), str(tmp_path / "x.npy")]
    ok = runner.invoke(cli.app, [*base, "--labels", str(tmp_path / "y.npy"), "--loss",
                                 "sparse_categorical_crossentropy", "--json"])
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["loss"]["name"] == "sparse_categorical_crossentropy"
    assert doc["loss"]["labels"].endswith("y.npy")
    bad = runner.invoke(cli.app, [*base, "-y", str(tmp_path / "bad_y.npy"), "--loss",
                                  "sparse_categorical_crossentropy"])
    assert bad.exit_code == ExitStatus.DATA_ERROR
    assert "sample 0 has class id 7" in bad.stderr
    unknown = runner.invoke(cli.app, [*base, "--loss", "frobenius"])
    assert unknown.exit_code == ExitStatus.USAGE
    assert "unknown loss" in unknown.stderr
    no_compiled = runner.invoke(cli.app, [*base, "--loss", "compiled"])
    assert no_compiled.exit_code == ExitStatus.USAGE
    missing = runner.invoke(cli.app, [*base, "--loss", "mse"])
    assert missing.exit_code == ExitStatus.DATA_ERROR
    assert "--labels" in missing.stderr


def test_progress_bar_goes_to_a_terminal_stderr_only(tfk: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    _, keras = tfk
    classifier(keras, None).save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.tile(X, (20, 1)))
    args = [str(tmp_path / "m.keras"), str(tmp_path / "x.npy"), "--batch-size", "16", "--json"]
    terminal = io.StringIO()
    monkeypatch.setattr(cli_terminal, "stderr",
                        Console(file=terminal, force_terminal=True, width=80))
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0
    json.loads(result.stdout)  # stdout is the report only
    assert "samples" in terminal.getvalue()  # the bar was drawn on the (terminal) stderr
    piped = io.StringIO()
    monkeypatch.setattr(cli_terminal, "stderr", Console(file=piped, force_terminal=False))
    assert runner.invoke(cli.app, args).exit_code == 0
    assert piped.getvalue() == ""


# ---------------------------------------------------------------- as Keras' compiled loss


def _compiled_tape(tf: Any, path: Path, x: np.ndarray, y: np.ndarray
                   ) -> tuple[float, dict[str, np.ndarray]]:
    """Keras' own compiled data loss (masks, reductions, custom Loss objects) and its
    gradients, by variable path, on the saved model as Keras loads it."""
    from gradinspect._tf import tf_modules

    model = tf_modules()[1].saving.load_model(path)
    with tf.GradientTape() as tape:
        loss = model._compile_loss(tf.constant(y), model(tf.constant(x), training=False))
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), {v.path: np.asarray(tf.convert_to_tensor(g)) for v, g in
                         zip(model.trainable_variables, grads, strict=True)}


def _assert_like_keras(report: Any, value: float, grads: dict[str, np.ndarray]) -> None:
    assert report.loss.value == pytest.approx(value, rel=1e-5)
    got = {w.path: entry.grads.variables[name] for entry in report.layers
           for name, w in entry.weights.variables.items() if w is not None}
    assert set(got) == set(grads)
    for path, want in grads.items():
        stats = got[path]
        assert stats is not None
        assert stats.norm == pytest.approx(float(np.linalg.norm(want)), rel=1e-4, abs=1e-9), path


def _masked_tagger(keras: Any) -> Any:
    keras.utils.set_random_seed(21)
    tokens = keras.Input((7,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(30, 8, mask_zero=True, name="emb")(tokens)
    h = keras.layers.LSTM(6, return_sequences=True, name="lstm")(h)
    out = keras.layers.Dense(5, activation="softmax", name="tags")(h)
    return keras.Model(tokens, out)


def test_a_masked_output_is_averaged_over_its_unmasked_entries_as_keras_does(
        tfk: Any, tmp_path: Path) -> None:
    """``Embedding(mask_zero=True)`` masks the padding of every sequence: Keras' compiled
    loss gives padded steps weight 0 and averages over the rest; so must the inspected loss
    (without the mask it is another loss, and gradients up to 2x off on a decoder)."""
    tf, keras = tfk
    model = _masked_tagger(keras)
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(3)
    x = rng.integers(1, 30, (6, 7)).astype("int32")
    for row, pad in enumerate([0, 2, 3, 5, 1, 4]):
        x[row, 7 - pad:] = 0
    y = rng.integers(0, 5, (6, 7))
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    value, grads = _compiled_tape(tf, tmp_path / "m.keras", x, y)
    plain = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x)))
    assert abs(float(plain) - value) > 1e-4  # the same loss without the mask: far from it
    np.savez(tmp_path / "d.npz", tokens=x, y=y)
    _assert_like_keras(gradinspect.inspect_files(tmp_path / "m.keras", tmp_path / "d.npz"),
                       value, grads)


CUSTOM_LOSS = '''
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tagging")
class PaddedTagLoss(keras.losses.Loss):
    """keras.io's NER loss: sparse crossentropy over the non-padding tags, reduced by itself."""

    def __init__(self, pad=0, name="padded_tag_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad = pad

    def call(self, y_true, y_pred):
        each = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        mask = ops.cast(ops.not_equal(y_true, self.pad), each.dtype)
        return ops.sum(each * mask) / ops.sum(mask)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}
'''


def test_a_custom_loss_takes_sparse_sequence_labels_and_its_stored_config(
        tfk: Any, tmp_path: Path) -> None:
    """A custom compiled ``Loss`` subclass: its labels are not shape-checked (Keras checks
    none), it is built from its stored config (``pad=4``, not the default), and its own
    batch reduction is the batch's loss."""
    tf, keras = tfk
    (tmp_path / "tagging.py").write_text(CUSTOM_LOSS)
    spec = importlib.util.spec_from_file_location("tagging", tmp_path / "tagging.py")
    assert spec is not None
    assert spec.loader is not None
    tagging = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tagging)
    keras.utils.set_random_seed(22)
    model = keras.Sequential([keras.Input((7,), dtype="int32"),
                              keras.layers.Embedding(30, 8, name="emb"),
                              keras.layers.Dense(5, activation="softmax", name="tags")])
    model.compile("adam", tagging.PaddedTagLoss(pad=4))
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 30, (6, 7)).astype("int32"), rng.integers(0, 5, (6, 7))
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    value, grads = _compiled_tape(tf, tmp_path / "m.keras", x, y)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    report = gradinspect.inspect_files(
        tmp_path / "m.keras", tmp_path / "d.npz",
        load=gradinspect.LoadOptions(custom_objects=(str(tmp_path / "tagging.py"),)))
    assert report.loss.name == "padded_tag_loss"
    assert any("custom loss" in note for note in report.data.notes)
    _assert_like_keras(report, value, grads)


def test_regularisation_penalties_are_named_beside_the_data_loss_not_differentiated(
        tfk: Any, tmp_path: Path) -> None:
    """Keras trains on the data loss plus ``model.losses``: the report gives their value
    (``loss.penalties``) and differentiates the data loss only."""
    tf, keras = tfk
    keras.utils.set_random_seed(23)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(6, activation="tanh", name="hidden",
                           kernel_regularizer=keras.regularizers.L2(0.05),
                           activity_regularizer=keras.regularizers.L1(0.01)),
        keras.layers.Dense(3, activation="softmax", name="out")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    y = RNG.integers(0, 3, 12)
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    value, grads = _compiled_tape(tf, tmp_path / "m.keras", X, y)
    model(X, training=False)
    penalties = sum(float(p) for p in model.losses)
    w = np.asarray(model.get_layer("hidden").kernel)
    hidden = np.tanh(X @ w + np.asarray(model.get_layer("hidden").bias))
    by_hand = 0.05 * float(np.sum(w ** 2)) + 0.01 * float(np.abs(hidden).sum()) / len(X)
    assert penalties == pytest.approx(by_hand, rel=1e-5)
    np.savez(tmp_path / "d.npz", x=X, y=y)
    for batch in (None, 5):  # averaged over uneven batches: the activity term is a mean
        report = gradinspect.inspect_files(
            tmp_path / "m.keras", tmp_path / "d.npz",
            options=gradinspect.InspectOptions(batch_size=batch))
        assert report.loss.penalties == pytest.approx(penalties, rel=1e-5)
        _assert_like_keras(report, value, grads)
    result = runner.invoke(cli.app, [str(tmp_path / "m.keras"), str(tmp_path / "d.npz")])
    assert "model.losses (penalties, not inspected)" in " ".join(result.stdout.split())
