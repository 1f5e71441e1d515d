"""The pass on tf.distribute: MirroredStrategy over 2 and 3 logical CPUs and
MultiWorkerMirroredStrategy over two worker processes on localhost give the single-device
report, figure for figure (within float32 summation order), finding for finding."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradinspect
from gradinspect.distribute import DistributeOptions, check_options, share, tf_config_role
from gradinspect.errors import ExitStatus, UsageError
from gradinspect.io.data.rows import NpyRows
from gradinspect.pipeline import iter_batches

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(17)

REL = 2e-5
"""Relative tolerance between a distributed and a single-device figure: both sum float32
values in a different order (per replica, then the replicas in float64); measured worst
case on these models ~3e-6."""
ABS = 1e-6
"""Absolute floor for figures that are zero on one device and a rounding residue on
several (the gradient of a constant)."""

MEASURED_ERRORS = {"verify", "gradcheck"}
"""Keys that measure float32 rounding error itself: their values differ by construction
(checked separately to pass on both)."""


def _compare(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            if key in MEASURED_ERRORS or (key == "execution" and where == ""):
                continue
            _compare(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=REL, abs=ABS, nan_ok=True), where
    else:
        assert a == b, where


def _findings(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    found = list(report["warnings"]) + [f for layer in report["layers"]
                                        for f in layer["warnings"]]
    return [(f["code"], f["severity"], f["layer"], f["root"], f["caused_by"]) for f in found]


def assert_same_report(single: dict[str, Any], distributed: dict[str, Any]) -> None:
    _compare(single, distributed)
    assert _findings(single) == _findings(distributed)
    for report in (single, distributed):
        for layer in report["layers"]:
            if layer.get("verify"):
                assert layer["verify"]["worst_rel_error"] < 1e-4, layer["path"]


def cnn(keras: Any, batchnorm: bool = True) -> tuple[Any, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    if batchnorm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Dense(6, activation="tanh", name="hidden")(h)
    out = keras.layers.Dense(4, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="cnn")
    model.compile(loss="sparse_categorical_crossentropy")
    x = RNG.standard_normal((21, 8, 8, 3)).astype(np.float32)
    return model, x, RNG.integers(0, 4, 21)


def sequence(keras: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(5)
    inp = keras.Input((7,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(20, 8, name="embed")(inp)
    h = keras.layers.LSTM(6, return_sequences=True, name="lstm")(h)
    h = keras.layers.MultiHeadAttention(2, 4, name="attention")(h, h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="seq")
    model.compile(loss="sparse_categorical_crossentropy")
    return model, RNG.integers(0, 20, (21, 7)).astype(np.int32), RNG.integers(0, 3, 21)


BUILDERS = {"cnn": cnn, "sequence": sequence}


_STRATEGIES: dict[int, Any] = {}


def mirrored(tf: Any, replicas: int) -> Any:
    """One MirroredStrategy per replica count for the whole run. Each gets collective keys of
    its own (as TensorFlow's own tests do): two strategies over different device sets would
    otherwise share group key 1, which aborts every later collective of the process."""
    if replicas not in _STRATEGIES:
        from tensorflow.python.distribute import mirrored_strategy

        mirrored_strategy.MirroredStrategy._collective_key_base += 100000
        _STRATEGIES[replicas] = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(replicas)])
    return _STRATEGIES[replicas]


def twin_under(strategy: Any, keras: Any, build: Any, model: Any) -> Any:
    """The same model (names, weights) with its variables made under ``strategy``."""
    with strategy.scope():
        other, _, _ = build(keras)
    other.set_weights(model.get_weights())
    return other


@pytest.mark.parametrize(("arch", "replicas"), [("cnn", 2), ("cnn", 3), ("sequence", 3)])
def test_mirrored_matches_one_device(tfk: Any, arch: str, replicas: int) -> None:
    tf, keras = tfk
    model, x, y = BUILDERS[arch](keras)
    strategy = mirrored(tf, replicas)
    other = twin_under(strategy, keras, BUILDERS[arch], model)
    # 21 rows in batches of 10: the last batch (1 row) leaves every replica but one empty
    options: dict[str, Any] = {"batch_size": 10, "per_sample": True, "verify": True,
                               "gradcheck": 2 if arch == "cnn" else 0}
    single = gradinspect.inspect(model, x, y, **options).to_dict()
    report = gradinspect.inspect(other, x, y, strategy=strategy, **options)
    # --gradcheck runs on one device, on the mirrored variables too
    assert all(layer.gradcheck is not None and layer.gradcheck.ok for layer in report.layers
               ) == (arch == "cnn")
    assert any(layer.per_sample is not None for layer in report.layers
               if layer.kind == "einsum_dense") == (arch == "sequence")
    assert report.execution.strategy == "mirrored"
    assert report.execution.replicas == replicas
    assert len(report.execution.devices) == replicas
    assert_same_report(single, report.to_dict())
    assert single["execution"] == {"strategy": "none", "replicas": 1, "workers": 1,
                                   "worker": 0, "devices": [], "notes": []}


def test_mirrored_counts_nan_and_keeps_values_in_row_order(tfk: Any) -> None:
    tf, keras = tfk
    model, x, y = cnn(keras)
    x = x.copy()
    x[4, 1, 2, 0] = np.nan  # the NaN path counts on every replica and merges the counts
    strategy = mirrored(tf, 2)
    other = twin_under(strategy, keras, cnn, model)
    single = gradinspect.inspect(model, x, y, batch_size=8, values=True)
    report = gradinspect.inspect(other, x, y, batch_size=8, values=True, strategy=strategy)
    assert_same_report(single.to_dict(), report.to_dict())
    assert any(f.code == "nonfinite_input" for f in report.findings())
    a, b = single["hidden"].values, report["hidden"].values
    assert a is not None
    assert b is not None
    assert a.input is not None
    assert b.input is not None
    np.testing.assert_allclose(b.input, a.input, rtol=REL, atol=ABS)


def test_training_mode_says_what_differs(tfk: Any) -> None:
    tf, keras = tfk
    model, x, y = cnn(keras)
    strategy = mirrored(tf, 2)
    other = twin_under(strategy, keras, cnn, model)
    report = gradinspect.inspect(other, x, y, training=True, strategy=strategy)
    notes = " ".join(report.execution.notes)
    assert "BatchNormalization in training mode (bn)" in notes
    assert "each replica's share of the batch with that share's statistics" in notes
    assert "ran on tf.distribute mirrored: 2 replicas (CPU:0, CPU:1)" in str(report)


def test_callback_records_a_fit_under_the_strategy(tfk: Any, tmp_path: Path) -> None:
    tf, keras = tfk
    strategy = mirrored(tf, 2)
    with strategy.scope():
        model, x, y = cnn(keras, batchnorm=False)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    log = tmp_path / "grads.jsonl"
    callback = gradinspect.GradInspectCallback(x, y, every_n_batches=2, path=log,
                                               stream=io.StringIO())
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]  # 3 batches an epoch
    assert {r["report"]["execution"]["strategy"] for r in records} == {"mirrored"}
    # the weights after the fit, inspected on one device, give the same figures as a
    # record made under the strategy now
    last = callback.record().to_dict()
    plain, _, _ = cnn(keras, batchnorm=False)
    plain.set_weights(model.get_weights())
    assert_same_report(gradinspect.inspect(plain, x, y).to_dict(), last)


def test_says_when_replicas_hold_different_moving_statistics(tfk: Any) -> None:
    """Keras 3 updates a BatchNormalization's moving statistics on each replica from its own
    batches when it fits under MirroredStrategy: the replicas' copies drift apart, and each
    replica's pass uses its own. The report says so instead of differing silently."""
    tf, keras = tfk
    strategy = mirrored(tf, 2)
    with strategy.scope():
        model, x, y = cnn(keras)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    copies = [c.numpy() for c in model.get_layer("bn").moving_mean.value.values]
    worst = float(np.max(np.abs(copies[1] - copies[0])))
    report = gradinspect.inspect(model, x, y, strategy=strategy)
    notes = " ".join(report.execution.notes)
    if worst == 0:  # a Keras that keeps them in sync: nothing to say
        assert "differ between the replicas" not in notes
    else:
        assert "non-trainable variable(s) differ between the replicas' copies" in notes
        assert f"bn/moving_mean (max |difference| {worst:.3g})" in notes


def test_refuses_a_strategy_it_does_not_run_on(tfk: Any) -> None:
    tf, keras = tfk
    model, x, y = cnn(keras)
    with pytest.raises(UsageError, match="OneDeviceStrategy is not supported"):
        gradinspect.inspect(model, x, y, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    # TensorFlow's default strategy (model.distribute_strategy outside any scope) is one device
    report = gradinspect.inspect(model, x, y, strategy=tf.distribute.get_strategy())
    assert report.execution.strategy == "none"


def test_each_worker_reads_only_its_share_of_every_batch(tmp_path: Path) -> None:
    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    np.save(tmp_path / "x.npy", x)
    reads: list[tuple[int, int]] = []

    class Spy(NpyRows):
        def __getitem__(self, index: slice) -> np.ndarray:
            reads.append((index.start, index.stop))
            return super().__getitem__(index)

    rows = NpyRows(tmp_path / "x.npy", x.shape, x.dtype, 128)
    spy = Spy(rows.path, rows.full_shape, rows.dtype, rows.offset)
    seen: list[np.ndarray] = []
    for worker in range(3):
        reads.clear()
        batches = list(iter_batches([spy], 10, worker, 3))
        # batches of 10, 10 and 3 rows; of each, this worker's contiguous third
        expected = [share(start, stop, worker, 3) for start, stop in [(0, 10), (10, 20),
                                                                       (20, 23)]]
        assert reads == expected
        assert [(first, total) for first, total, _ in batches] == [
            (lo, stop - start) for (lo, _), (start, stop) in zip(
                expected, [(0, 10), (10, 20), (20, 23)], strict=True)]
        seen += [part for _, _, (part,) in batches]
    assert np.array_equal(np.concatenate(sorted(seen, key=lambda p: p[0, 0] if len(p) else 0)
                                         ), x)
    assert share(20, 23, 0, 2) == (20, 21)
    assert share(20, 23, 1, 2) == (21, 23)
    assert share(20, 21, 0, 2) == (20, 20)  # a replica or worker may get no row


def test_tf_config_is_checked_before_tensorflow_reads_it() -> None:
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    role = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                  "index": 1}})}
    assert tf_config_role(role) == (1, 2)
    chief = {"TF_CONFIG": json.dumps({"cluster": {"chief": ["h:1"], **cluster},
                                      "task": {"type": "worker", "index": 0}})}
    assert tf_config_role(chief) == (1, 3)
    for bad in ["", "{", json.dumps({"cluster": cluster}),
                json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}),
                json.dumps({"cluster": {**cluster, "ps": ["h:3"]},
                            "task": {"type": "worker", "index": 0}})]:
        with pytest.raises(UsageError):
            tf_config_role({"TF_CONFIG": bad})
    with pytest.raises(UsageError, match="--replicas is for --distribute mirrored"):
        check_options(DistributeOptions("none", replicas=2))
    with pytest.raises(UsageError, match="needs the TF_CONFIG"):
        check_options(DistributeOptions("multiworker"))


# ---------------------------------------------------------------- multi-worker, on localhost


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gradinspect", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _workers(args_per_worker: list[list[str]]) -> list[tuple[int, str, str, float]]:
    """Run one CLI process per worker with TF_CONFIG on free localhost ports; (exit code,
    stdout, stderr, seconds) of each."""
    ports = _free_ports(len(args_per_worker))
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    start = time.monotonic()
    procs = [_cli(args, {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {
        "type": "worker", "index": i}})}) for i, args in enumerate(args_per_worker)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        results.append((proc.returncode, out, err, time.monotonic() - start))
    return results


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import h5py

    folder = tmp_path_factory.mktemp("shards")
    x = np.load(ROOT / "samples" / "cnn_small_x.npy")
    with h5py.File(folder / "x.h5", "w") as f:
        f.create_dataset("image", data=x)
    return {"npy": ROOT / "samples" / "cnn_small_x.npy", "hdf5": folder / "x.h5"}


MODEL = str(ROOT / "samples" / "cnn_small.keras")


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_two_workers_give_the_single_process_report(data_files: dict[str, Path],
                                                    fmt: str, tmp_path: Path) -> None:
    data = str(data_files[fmt])
    common = ["--batch-size", "10", "--per-sample", "--worker-timeout", "120"]
    single = _cli([MODEL, data, *common, "-o", str(tmp_path / "single.json"), "--json"])
    assert single.communicate(timeout=240)[0]
    assert single.returncode == 0
    chief, other = _workers([
        [MODEL, data, *common, "--distribute", "multiworker", "-o", str(tmp_path / "w.json")],
        [MODEL, data, *common, "--distribute", "multiworker", "-o", str(tmp_path / "w1.json")],
    ])
    assert chief[0] == 0, chief[2]
    assert other[0] == 0, other[2]
    assert "ran on tf.distribute multiworker: 2 replicas on 2 workers" in chief[1]
    assert other[1] == ("gradinspect: worker 1 of 2 done (32 samples in 2 replicas); "
                        "worker 0 writes the report\n")
    assert not (tmp_path / "w1.json").exists()  # only the chief writes
    report = json.loads((tmp_path / "w.json").read_text())
    assert report["execution"]["strategy"] == "multiworker"
    assert (report["execution"]["workers"], report["execution"]["worker"]) == (2, 0)
    assert_same_report(json.loads((tmp_path / "single.json").read_text()), report)


def test_a_worker_that_dies_ends_the_chief_with_an_error(data_files: dict[str, Path]) -> None:
    data = str(data_files["npy"])
    common = ["--batch-size", "10", "--distribute", "multiworker", "--worker-timeout", "30"]
    # worker 1 joins the cluster, then fails on its data file and exits: the chief is left
    # alone in the first merge
    chief, other = _workers([[MODEL, data, *common], [MODEL, "missing.npy", *common]])
    assert other[0] == ExitStatus.DATA_ERROR
    assert chief[0] == ExitStatus.RUN_ERROR
    assert chief[2].count("\n") == 1
    assert "a replica or worker is gone" in chief[2]
    assert chief[3] < 60


def test_a_worker_that_never_starts_ends_the_chief_after_the_timeout(
        data_files: dict[str, Path]) -> None:
    ports = _free_ports(2)
    tf_config = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                            "task": {"type": "worker", "index": 0}})
    start = time.monotonic()
    proc = _cli([MODEL, str(data_files["npy"]), "--distribute", "multiworker",
                 "--worker-timeout", "8"], {"TF_CONFIG": tf_config})
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == ExitStatus.RUN_ERROR
    assert err.count("\n") == 1
    assert "no answer from the other workers within 8 s while waiting for every worker" in err
    assert 8 <= took < 40
