"""gradinspect benchmarks: ratios against hand-written baselines measured in the same run.

    python benchmarks/run.py            # full suite (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick    # smaller sizes, fewer repetitions (under 2 minutes)
    python benchmarks/run.py --only startup,per_sample

Every figure is a median over repetitions; every target is a ratio against a baseline timed on
the same machine in the same run (the machine is shared and noisy), except where the target is
an absolute bound from an issue (peak RSS of the 1M-sample stream). Wall time and peak RSS of
whole commands are measured in child processes (peak RSS via getrusage of a wrapper's only
child); steady-state throughput is measured in-process after a warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(ROOT))

WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "wall = time.perf_counter() - t\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
    "print(wall, rss, p.returncode)\n"
    "sys.stderr.write(p.stderr.decode(errors='replace'))\n"
)


@dataclass
class Row:
    figure: str
    ours: float
    base: float
    unit: str
    target: str
    ok: bool

    @property
    def ratio(self) -> float:
        return self.ours / self.base if self.base else float("nan")


def measure_command(cmd: list[str], reps: int) -> tuple[float, float]:
    """Median wall seconds and median peak RSS bytes of a command, each run in a fresh child."""
    (medians,) = measure_commands([cmd], reps)
    return medians


def measure_commands(cmds: list[list[str]], reps: int) -> list[tuple[float, float]]:
    """``measure_command`` for several commands, their runs interleaved (a, b, a, b ...) so
    that drift on a shared machine hits them alike."""
    walls: list[list[float]] = [[] for _ in cmds]
    rsss: list[list[float]] = [[] for _ in cmds]
    for _ in range(reps):
        for k, cmd in enumerate(cmds):
            out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True,
                                 text=True, check=False)
            wall, rss, code = out.stdout.split()
            if int(code) != 0:
                raise RuntimeError(f"{cmd} failed ({code}): {out.stderr[-2000:]}")
            walls[k].append(float(wall))
            rsss[k].append(float(rss))
    return [(statistics.median(w), statistics.median(r)) for w, r in zip(walls, rsss,
                                                                        strict=True)]


def median_time(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gradinspect_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradinspect", *args]


# ------------------------------------------------------------------ hand-written baselines

BASELINE_SCRIPT = '''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
x = tf.constant(np.load(sys.argv[2]))
with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(model(x))
variables = model.trainable_variables
grads = tape.gradient(loss, variables)
for v, g in zip(variables, grads):
    print(v.path, g.shape, float(tf.norm(g)))
'''


def write_baseline(tmp: Path) -> Path:
    path = tmp / "baseline_tape.py"
    path.write_text(BASELINE_SCRIPT)
    return path


def make_big_npy(path: Path, rows: int, cols: int = 784, chunk: int = 50_000) -> None:
    """A large float32 .npy written in chunks (never all in memory)."""
    import numpy as np

    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        mm[start:stop] = rng.uniform(0, 1, (stop - start, cols)).astype(np.float32)
    mm.flush()
    del mm


# ------------------------------------------------------------------ sections


def bench_startup(args: argparse.Namespace, tmp: Path) -> list[Row]:
    reps = 3 if args.quick else 7
    rows = []
    import_tf, _ = measure_command([sys.executable, "-c", "import tensorflow"], reps)
    for flag in ("--help", "--version"):
        wall, _ = measure_command(gradinspect_cmd(flag), reps)
        rows.append(Row(f"start-up: gradinspect {flag} (vs import tensorflow)", wall, import_tf,
                        "s", "<= 0.3 s", wall <= 0.3))
    return rows


def bench_small_e2e(args: argparse.Namespace, tmp: Path) -> list[Row]:
    reps = 3 if args.quick else 5
    baseline = write_baseline(tmp)
    names = ["seed_a", "mnist_mlp"] if args.quick else ["seed_a", "seed_b", "seed_c",
                                                         "mnist_mlp"]
    rows = []
    for name in names:
        model = str(SAMPLES / f"{name}.keras")
        data = str(SAMPLES / f"{name}_x.npy")
        (ours_t, ours_m), (base_t, base_m) = measure_commands(
            [gradinspect_cmd(model, data), [sys.executable, str(baseline), model, data]], reps)
        rows.append(Row(f"end to end {name}: wall", ours_t, base_t, "s", "<= 1.10x",
                        ours_t / base_t <= 1.10))
        rows.append(Row(f"end to end {name}: peak RSS", ours_m / 2**20, base_m / 2**20, "MiB",
                        "<= 1.10x", ours_m / base_m <= 1.10))
    return rows


def _mlp(keras: Any, widths: tuple[int, ...]) -> Any:
    keras.utils.set_random_seed(0)
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(w, activation="relu") for w in widths[:-1]]
    layers.append(keras.layers.Dense(widths[-1]))
    return keras.Sequential(layers)


def _bare_step(tf: Any, model: Any, inputs_too: bool = True) -> Any:
    """A compiled forward/backward pass with no figures, as a person writes it: dL/dW, dL/db
    and (``inputs_too``) dL/dinput of every Dense layer — the gradients gradinspect reports,
    the input gradients reduced to sums of squares (they cannot be summed over batches)."""
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def bare(x: Any) -> Any:
        with tf.GradientTape() as tape:
            h, seen = x, []
            for layer in model.layers:  # the benchmark's models are plain Dense stacks
                if inputs_too:
                    tape.watch(h)
                    seen.append(h)
                h = layer(h)
            loss = tf.reduce_sum(h)
        grads, input_grads = tape.gradient(loss, [variables, seen])
        return grads, [tf.reduce_sum(tf.square(g)) for g in input_grads]

    return bare


def _hand_loop(tf: Any, keras: Any, model_path: Path, path: Path, batch: int,
               inputs_too: bool = True) -> list[float]:
    """What a person writes for many samples: load the model, then the bare step over mmap
    batches, summing the gradients on the device."""
    import numpy as np

    model = keras.models.load_model(model_path, compile=False)
    data = np.load(path, mmap_mode="r")
    step = _bare_step(tf, model, inputs_too)
    total: list[Any] | None = None
    squares: list[Any] | None = None
    for start in range(0, data.shape[0], batch):
        grads, sq = step(np.ascontiguousarray(data[start:start + batch]))
        total = list(grads) if total is None else [a + g for a, g in zip(total, grads,
                                                                         strict=True)]
        squares = list(sq) if squares is None else [a + q for a, q in zip(squares, sq,
                                                                          strict=True)]
    assert total is not None
    assert squares is not None
    return [float(tf.norm(g)) for g in total] + [float(q) for q in squares]


def bench_streaming(args: argparse.Namespace, tmp: Path) -> list[Row]:
    import gradinspect
    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    n = 20_000 if args.quick else 100_000
    reps = 3 if args.quick else 5
    path = tmp / f"stream_{n}.npy"
    make_big_npy(path, n)
    rows = []
    widths_list = [(256, 128, 10)] if args.quick else [(256, 128, 10), (2048, 2048, 10)]
    for widths in widths_list:
        model_path = tmp / f"mlp_{'_'.join(map(str, widths))}.keras"
        _mlp(keras, widths).save(model_path)
        options = gradinspect.InspectOptions(batch_size=1024)
        runs: dict[str, Callable[[], Any]] = {
            "ours": lambda m=model_path, o=options: gradinspect.inspect_files(m, path, o),
            "same": lambda m=model_path: _hand_loop(tf, keras, m, path, 1024),
            "wb": lambda m=model_path: _hand_loop(tf, keras, m, path, 1024, inputs_too=False),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():  # warm-up: file cache, TensorFlow's first-use costs
            fn()
        for _ in range(reps):  # interleaved, so drift hits all alike
            for key, fn in runs.items():
                times[key].append(median_time(fn, 1))
        ours, same, wb = (statistics.median(times[k]) for k in ("ours", "same", "wb"))
        label = "784-" + "-".join(map(str, widths))
        rows.append(Row(f"throughput {label}, {n} samples, batch 1024 (samples/s)", n / ours,
                        n / same, "1/s", ">= 0.9x", same / ours >= 0.9))
        rows.append(Row("  same, vs a loop computing dL/dW and dL/db only (samples/s)",
                        n / ours, n / wb, "1/s", "report", True))
    return rows


def bench_diagnostics(args: argparse.Namespace, tmp: Path) -> list[Row]:
    import numpy as np

    import gradinspect
    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    model = _mlp(keras, (256, 128, 10))
    batch = 2048 if args.quick else 8192
    x = np.random.default_rng(1).uniform(0, 1, (batch, 784)).astype(np.float32)
    same, wb = _bare_step(tf, model), _bare_step(tf, model, inputs_too=False)
    runs: dict[str, Callable[[], Any]] = {
        "all": lambda: gradinspect.inspect(model, x, per_sample=True, verify=True),
        "figures": lambda: gradinspect.inspect(model, x, per_sample=True),
        "default": lambda: gradinspect.inspect(model, x),
        "same": lambda: [g.numpy() for g in tf.nest.flatten(same(x))],
        "wb": lambda: [g.numpy() for g in tf.nest.flatten(wb(x))],
    }
    for fn in runs.values():  # warm-up: traces
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(5 if args.quick else 11):  # interleaved, so drift hits all alike
        for key, fn in runs.items():
            # --verify's float64 products run in OpenBLAS, whose threads keep spinning for up
            # to ~0.1 s afterwards and would slow whichever run came next on 2 cores
            time.sleep(0.25)
            times[key].append(median_time(fn, 1))
    t = {k: statistics.median(v) for k, v in times.items()}
    return [
        Row(f"all diagnostics (findings, --per-sample, --verify) vs bare pass, batch {batch}",
            t["all"], t["same"], "s", "<= 1.15x", t["all"] / t["same"] <= 1.15),
        Row(f"findings + --per-sample (no --verify) vs bare pass, batch {batch}",
            t["figures"], t["same"], "s", "report", True),
        Row(f"default figures (findings) vs bare pass, batch {batch}", t["default"],
            t["same"], "s", "report", True),
        Row(f"  bare pass vs one computing dL/dW and dL/db only, batch {batch}", t["same"],
            t["wb"], "s", "report", True),
    ]


def bench_per_sample(args: argparse.Namespace, tmp: Path) -> list[Row]:
    import numpy as np

    import gradinspect
    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    model = keras.models.load_model(SAMPLES / "mnist_mlp.keras", compile=False)
    x = np.random.default_rng(2).uniform(0, 1, (256, 784)).astype(np.float32)
    reps = 5 if args.quick else 11
    variables = model.trainable_variables

    def plain() -> None:
        gradinspect.inspect(model, x)

    def per_sample() -> None:
        gradinspect.inspect(model, x, per_sample=True)

    @tf.function
    def jacobian_norms(xx: Any) -> Any:
        def one(row: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(row[None, :]))
            grads = tape.gradient(loss, variables)
            return tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads]))
        return tf.vectorized_map(one, xx)

    def vmap_baseline() -> None:
        jacobian_norms(x).numpy()

    for fn in (plain, per_sample, vmap_baseline):
        fn()
    # interleaved, many repetitions: each call is a few milliseconds on a noisy machine
    plains, samples, vmaps = [], [], []
    for _ in range(reps * 5):
        plains.append(median_time(plain, 1))
        samples.append(median_time(per_sample, 1))
        vmaps.append(median_time(vmap_baseline, 1))
    t_plain, t_ps, t_vmap = (statistics.median(v) for v in (plains, samples, vmaps))
    # memory: each in a fresh child process, peak RSS
    script = tmp / "ps_mem.py"
    script.write_text(
        "import sys, numpy as np, gradinspect\n"
        "x = np.random.default_rng(2).uniform(0, 1, (256, 784)).astype(np.float32)\n"
        "np.save(sys.argv[2], x)\n"
        "gradinspect.inspect_files(sys.argv[1], sys.argv[2], gradinspect.InspectOptions("
        "per_sample=sys.argv[3] == '1'))\n"
    )
    mem_reps = 2 if args.quick else 3
    model_path = str(SAMPLES / "mnist_mlp.keras")
    _, m_plain = measure_command([sys.executable, str(script), model_path,
                                  str(tmp / "ps.npy"), "0"], mem_reps)
    _, m_ps = measure_command([sys.executable, str(script), model_path,
                               str(tmp / "ps.npy"), "1"], mem_reps)
    return [
        Row("--per-sample vs plain inspect, batch 256: time", t_ps, t_plain, "s", "<= 1.2x",
            t_ps / t_plain <= 1.2),
        Row("--per-sample vs plain inspect, batch 256: peak RSS", m_ps / 2**20, m_plain / 2**20,
            "MiB", "<= 1.3x", m_ps / m_plain <= 1.3),
        Row("--per-sample (whole inspect) vs vectorized_map per-sample norms: time", t_ps,
            t_vmap, "s", "report", True),
    ]


def bench_memory(args: argparse.Namespace, tmp: Path) -> list[Row]:
    small_n = 10_000
    big_n = 200_000 if args.quick else 1_000_000
    model = str(SAMPLES / "mnist_mlp.keras")
    small = tmp / "mem_small.npy"
    big = tmp / "mem_big.npy"
    make_big_npy(small, small_n)
    make_big_npy(big, big_n)
    _, m_small = measure_command(gradinspect_cmd(model, str(small), "--batch-size", "1024",
                                                 "--json"), 1)
    wall, m_big = measure_command(gradinspect_cmd(model, str(big), "--batch-size", "1024",
                                                  "--json"), 1)
    size_gb = big.stat().st_size / 1e9
    big.unlink()
    return [
        Row(f"peak RSS streaming {big_n} x 784 ({size_gb:.2f} GB .npy) vs {small_n} samples",
            m_big / 2**20, m_small / 2**20, "MiB", "<= 1.10x", m_big / m_small <= 1.10),
        Row(f"peak RSS streaming {big_n} x 784, batch 1024 (absolute, {wall:.0f} s wall)",
            m_big / 2**20, 1536.0, "MiB", "< 1536 MiB", m_big / 2**20 < 1536),
    ]


def bench_callback(args: argparse.Namespace, tmp: Path) -> list[Row]:
    import numpy as np

    import gradinspect
    from gradinspect._tf import tf_modules
    from gradinspect.errors import UsageError

    _, keras = tf_modules()
    model = _mlp(keras, (256, 128, 10))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(3)
    batches = 300 if args.quick else 1000
    x = rng.uniform(0, 1, (64 * batches, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64 * batches)
    callback = gradinspect.GradInspectCallback(x[:64], y[:64], every_n_batches=100,
                                               path=tmp / "grads.jsonl", stream=io.StringIO())
    tensorboard = None
    with contextlib.suppress(UsageError):  # the tensorboard extra is not installed: no row
        tensorboard = gradinspect.GradInspectCallback(
            x[:64], y[:64], every_n_batches=100, path=tmp / "grads_tb.jsonl",
            log_dir=tmp / "tb", stream=io.StringIO())

    def plain() -> None:
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)

    def with_callback() -> None:
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[callback])

    def with_tensorboard() -> None:
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[tensorboard])

    plain()
    with_callback()  # warm-up: traces both
    if tensorboard is not None:
        with_tensorboard()
    reps = 3 if args.quick else 9
    base, ours, tb = [], [], []
    for _ in range(reps):  # interleaved, so drift hits both alike
        base.append(median_time(plain, 1))
        ours.append(median_time(with_callback, 1))
        if tensorboard is not None:
            tb.append(median_time(with_tensorboard, 1))
    b, o = statistics.median(base), statistics.median(ours)
    rows = [Row(f"fit, {batches} batches of 64, callback every 100 batches vs none", o, b, "s",
                "<= 1.10x", o / b <= 1.10)]
    if tb:
        t = statistics.median(tb)
        rows.append(Row(f"fit, {batches} batches of 64, callback + TensorBoard every 100 "
                        "batches vs none", t, b, "s", "<= 1.15x", t / b <= 1.15))
    return rows


def _real_models(tmp: Path, quick: bool = False) -> dict[str, tuple[Path, Path]]:
    """MobileNetV2 (weights=None, 96x96, 10 classes), ResNet50 (weights=None, 64x64), a
    Transformer encoder block (Embedding 5000x128, 4-head attention, feed-forward 512,
    LayerNormalization) and a BiLSTM classifier (Embedding 5000x64, Bidirectional LSTM 64),
    each with a batch of 32, saved as .keras files and .npy samples (``quick``: MobileNetV2
    and the Transformer block only)."""
    import numpy as np

    from gradinspect._tf import tf_modules

    _, keras = tf_modules()
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3),
                                               classes=10)
    L = keras.layers
    tokens = keras.Input((64,), dtype="int32", name="tokens")
    h = L.Embedding(5000, 128)(tokens)
    h = L.LayerNormalization()(L.Add()([h, L.MultiHeadAttention(4, 32)(h, h)]))
    ff = L.Dense(128)(L.Dense(512, activation="gelu")(h))
    h = L.LayerNormalization()(L.Add()([h, ff]))
    transformer = keras.Model(tokens, L.Dense(10)(L.GlobalAveragePooling1D()(h)))
    models = [("MobileNetV2 96x96", mobilenet,
               rng.standard_normal((32, 96, 96, 3)).astype(np.float32)),
              ("Transformer block", transformer,
               rng.integers(0, 5000, (32, 64)).astype(np.int32))]
    if not quick:
        resnet = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
        words = keras.Input((64,), dtype="int32", name="words")
        h = L.Bidirectional(L.LSTM(64))(L.Embedding(5000, 64)(words))
        bilstm = keras.Model(words, L.Dense(2)(h))
        models[1:1] = [("ResNet50 64x64", resnet,
                        rng.standard_normal((32, 64, 64, 3)).astype(np.float32))]
        models.append(("BiLSTM classifier", bilstm,
                       rng.integers(0, 5000, (32, 64)).astype(np.int32)))
    out = {}
    for name, model, x in models:
        stem = name.split()[0].lower()
        model.save(tmp / f"{stem}.keras")
        np.save(tmp / f"{stem}_x.npy", x)
        out[name] = (tmp / f"{stem}.keras", tmp / f"{stem}_x.npy")
    return out


NOTES: list[str] = []
"""Lines printed after the table (the per-sample method chosen per layer)."""

CNNS = ("MobileNetV2", "ResNet50")


def _methods(model: str, data: str) -> str:
    """The per-sample method of each entry, counted, from one ``--per-sample --json`` run."""
    out = subprocess.run(gradinspect_cmd(model, data, "--per-sample", "--json"),
                         capture_output=True, text=True, check=False)
    report = json.loads(out.stdout)
    counts: dict[str, int] = {}
    for layer in report["layers"]:
        p = layer["per_sample"]
        method = p["method"] if p else "not available"
        counts[method] = counts.get(method, 0) + 1
    return ", ".join(f"{m} {n}" for m, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _python_gc(model: str, data: str) -> list[str]:
    """The command with the garbage collector left as Python sets it (``_tf.cli_process``
    made a no-op): what the command line's collection handling saves."""
    return [sys.executable, "-c", "import contextlib, runpy, sys; import gradinspect._tf as t; "
            "t.cli_process = contextlib.nullcontext; sys.argv = sys.argv[1:]; "
            "runpy.run_module('gradinspect', run_name='__main__')", "gradinspect", model, data]


def _in_process(name: str, model_path: Path, data_path: Path, reps: int) -> list[Row]:
    """The engine alone: ``gradinspect.inspect`` (walk, hooks, the pass, the report) and
    ``--per-sample`` on a model already loaded, against one plain tape over
    ``model.trainable_variables`` on the same model, interleaved, after a warm-up each
    (no import, load, rendering or process start and exit). A live model's step is compiled
    (``tf.function``) and kept for the next call, so the plain tape is compiled too."""
    import numpy as np

    import gradinspect
    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    model = keras.models.load_model(model_path, compile=False)
    x = np.load(data_path)

    @tf.function
    def tape_norms(xx: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(xx))
        return [tf.norm(g) for g in tape.gradient(loss, model.trainable_variables)]

    def plain() -> None:
        for n in tape_norms(tf.constant(x)):
            float(n)

    fns = [lambda: gradinspect.inspect(model, x),
           lambda: gradinspect.inspect(model, x, per_sample=True), plain]
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(max(reps, 5)):
        for k, fn in enumerate(fns):
            times[k].append(median_time(fn, 1))
    ours, per, base = (statistics.median(t) for t in times)
    return [Row(f"{name}, in process, compiled: inspect vs a plain tape", ours, base, "s",
                "(report)", True),
            Row(f"{name}, in process, compiled: --per-sample vs a plain tape", per, base, "s",
                "(report)", True)]


def bench_real_models(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """Whole-model inspection (every trainable variable) and ``--per-sample`` against the
    hand-written script that runs one tape over ``model.trainable_variables`` and prints their
    norms, all interleaved; the per-sample method chosen per layer; the engine alone, in
    process on the loaded model (``_in_process``); the command with Python's collector as it
    is (``_python_gc``); for MobileNetV2, ``--kind dense`` (a head-only pass) and oneDNN's own
    kernels against the default."""
    reps = 3 if args.quick else 5
    baseline = write_baseline(tmp)
    rows = []
    for name, (model, data) in _real_models(tmp, args.quick).items():
        m, d = str(model), str(data)
        (ours_t, ours_m), (per_t, per_m), (base_t, base_m) = measure_commands(
            [gradinspect_cmd(m, d), gradinspect_cmd(m, d, "--per-sample"),
             [sys.executable, str(baseline), m, d]], reps)
        rows.append(Row(f"{name}, batch 32, every variable: wall", ours_t, base_t, "s",
                        "<= 1.10x", ours_t / base_t <= 1.10))
        rows.append(Row(f"{name}, batch 32, every variable: peak RSS", ours_m / 2**20,
                        base_m / 2**20, "MiB", "<= 1.15x", ours_m / base_m <= 1.15))
        cnn = name.startswith(CNNS)
        rows.append(Row(f"{name}, batch 32, --per-sample: wall", per_t, base_t, "s",
                        "<= 1.5x" if cnn else "(report)", per_t / base_t <= 1.5 or not cnn))
        rows.append(Row(f"{name}, batch 32, --per-sample: peak RSS", per_m / 2**20,
                        base_m / 2**20, "MiB", "(report)", True))
        NOTES.append(f"per-sample methods, {name}: {_methods(m, d)}")
        rows += _in_process(name, model, data, reps)
        if not args.quick:
            (gc_t, _), (full_t, _) = measure_commands([_python_gc(m, d), gradinspect_cmd(m, d)],
                                                      reps)
            rows.append(Row(f"{name}: with Python's collector as it is (no cli_process) vs "
                            "as the command line runs it: wall", gc_t, full_t, "s", "(report)",
                            True))
        if name.startswith("MobileNetV2") and not args.quick:
            onednn = [sys.executable, "-c", "import os, runpy, sys; "
                      "os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'; sys.argv = sys.argv[1:]; "
                      "runpy.run_module('gradinspect', run_name='__main__')",
                      "gradinspect", m, d]
            (head_t, _), (full_t, _), (dnn_t, _) = measure_commands(
                [gradinspect_cmd(m, d, "--kind", "dense"), gradinspect_cmd(m, d), onednn], reps)
            rows.append(Row(f"{name}: --kind dense (head only) vs every layer: wall", head_t,
                            full_t, "s", "(report)", True))
            rows.append(Row(f"{name}: oneDNN kernels on (TF_ENABLE_ONEDNN_OPTS=1) vs off: wall",
                            dnn_t, full_t, "s", "(report)", True))
    return rows


HUB_BASELINE_SCRIPT = '''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import keras
import keras_hub  # registers the classes the file names
model = keras.models.load_model(sys.argv[1], compile=False)
with np.load(sys.argv[2]) as data:
    x = {k: tf.constant(data[k]) for k in data.files if k != "y"}
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(x))
variables = model.trainable_variables
grads = tape.gradient(loss, variables)
for v, g in zip(variables, grads):
    print(v.path, g.shape, float(tf.norm(g)))
'''


def bench_hub(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """A GPT-2-shaped keras-hub causal LM (6 layers, width 384, 8,000 tokens: 13.8 M
    parameters; sequence 128, batch 4) inspected in full, against a plain tape over every
    trainable variable in a script that loads the same file (both with the sum of the logits
    as the loss)."""
    try:
        import keras_hub
    except ImportError:
        print("hub: keras-hub is not installed (pip install 'gradinspect[hub]'); skipped")
        return []
    import numpy as np

    from gradinspect._tf import tf_modules

    _, keras = tf_modules()
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=8000, num_layers=6, num_heads=6, hidden_dim=384,
        intermediate_dim=1536, max_sequence_length=128)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    params = model.count_params()
    model.save(tmp / "gpt2.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp / "gpt2_x.npz", token_ids=rng.integers(0, 8000, (4, 128)).astype(np.int32),
             padding_mask=np.ones((4, 128), np.int32))
    script = tmp / "hub_baseline.py"
    script.write_text(HUB_BASELINE_SCRIPT)
    m, d = str(tmp / "gpt2.keras"), str(tmp / "gpt2_x.npz")
    reps = 3 if args.quick else 5
    (ours_t, ours_m), (base_t, base_m) = measure_commands(
        [gradinspect_cmd(m, d, "--loss", "sum"), [sys.executable, str(script), m, d]], reps)
    name = f"keras-hub GPT-2 {params / 1e6:.1f} M params, seq 128, batch 4, every variable"
    return [Row(f"{name}: wall", ours_t, base_t, "s", "<= 1.15x", ours_t / base_t <= 1.15),
            Row(f"{name}: peak RSS", ours_m / 2**20, base_m / 2**20, "MiB", "<= 1.20x",
                ours_m / base_m <= 1.20)]


def bench_distribute(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """The pass under MirroredStrategy over 2 logical CPUs (``--distribute mirrored
    --replicas 2``) against the single-device pass, same batches, whole commands: what the
    distributed engine costs where it cannot gain (both replicas share this machine's 2
    cores); and two worker processes on localhost (``--distribute multiworker``) against one
    process, wall time until both workers are done."""
    import numpy as np

    reps = 3 if args.quick else 5
    rows_n = 4096 if args.quick else 16384
    rng = np.random.default_rng(0)
    cases = {
        "mnist_mlp (784-256-128-10)": (SAMPLES / "mnist_mlp.keras",
                                       rng.uniform(0, 1, (rows_n, 784)), 1024),
        "cnn_small (conv, depthwise, BN)": (SAMPLES / "cnn_small.keras",
                                            rng.uniform(0, 1, (rows_n // 4, 16, 16, 3)), 256),
    }
    rows = []
    for name, (model, x, batch) in cases.items():
        data = tmp / f"{model.stem}_big.npy"
        np.save(data, x.astype(np.float32))
        common = [str(model), str(data), "--batch-size", str(batch)]
        (single_t, single_m), (mirror_t, mirror_m) = measure_commands(
            [gradinspect_cmd(*common),
             gradinspect_cmd(*common, "--distribute", "mirrored", "--replicas", "2")], reps)
        rows.append(Row(f"{name}, {x.shape[0]:,} rows: mirrored (2 logical CPUs) vs one "
                        "device: wall", mirror_t, single_t, "s", "(report)", True))
        rows.append(Row(f"{name}: mirrored vs one device: peak RSS", mirror_m / 2**20,
                        single_m / 2**20, "MiB", "(report)", True))
        walls = []
        for _ in range(reps):
            walls.append(_two_workers(common))
        rows.append(Row(f"{name}: 2 workers on localhost vs one process: wall",
                        statistics.median(walls), single_t, "s", "(report)", True))
    return rows


def _two_workers(common: list[str]) -> float:
    """Wall seconds until both workers of a 2-worker localhost cluster are done."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    start = time.perf_counter()
    procs = [subprocess.Popen(
        gradinspect_cmd(*common, "--distribute", "multiworker"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env={**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}})}) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed ({proc.returncode}): {err[-2000:]!r}")
    return time.perf_counter() - start


def bench_calibration(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """The calibration corpus (tests/calibration): healthy models trained until they learn
    and models made sick the way runs get sick, each judged. Prints the per-group table
    (stderr) and returns two rows: healthy files with a warning (goal 0), sick files whose
    root is the planted cause (goal all). ``--quick``: two healthy specs per family and one
    sick spec per kind."""
    sys.path.insert(0, str(ROOT / "tests"))
    from calibration.evaluate import few, table
    from calibration.evaluate import run as calibrate
    from calibration.healthy import HEALTHY
    from calibration.sick import SICK

    healthy = few(HEALTHY, lambda s: s.family, 2) if args.quick else list(HEALTHY)
    sick = few(SICK, lambda s: s.kind, 1) if args.quick else list(SICK)
    out = tmp / "calibration"
    out.mkdir()
    rows, _, broken = calibrate(out, healthy, sick)
    print(table(rows), file=sys.stderr)
    if broken:
        raise RuntimeError(f"calibration corpus entries are not what they claim: {broken}")
    healthy_rows = [r for r in rows if r.side == "healthy"]
    sick_rows = [r for r in rows if r.side == "sick"]
    warned = sum(not r.ok for r in healthy_rows)
    named = sum(r.ok for r in sick_rows)
    return [Row("calibration: healthy files with a warning (of all healthy files)", warned,
                len(healthy_rows), "files", "0", warned == 0),
            Row("calibration: sick files whose root is the planted cause (of all)", named,
                len(sick_rows), "files", "all", named == len(sick_rows))]


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], list[Row]]] = {
    "startup": bench_startup,
    "small_e2e": bench_small_e2e,
    "streaming": bench_streaming,
    "diagnostics": bench_diagnostics,
    "memory": bench_memory,
    "per_sample": bench_per_sample,
    "callback": bench_callback,
    "real_models": bench_real_models,
    "hub": bench_hub,
    "distribute": bench_distribute,
    "calibration": bench_calibration,
}


def machine() -> str:
    import numpy as np

    from gradinspect._tf import tf_modules

    tf, keras = tf_modules()
    return (f"{platform.platform()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras "
            f"{keras.__version__}, numpy {np.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer reps")
    parser.add_argument("--only", default="", help="comma-separated sections: "
                        + ", ".join(SECTIONS))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {sorted(unknown)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gradinspect-bench-") as tmp:
        for name in chosen:
            t = time.perf_counter()
            section_rows = SECTIONS[name](args, Path(tmp))
            rows += section_rows
            print(f"[{name}: {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
    print(f"machine: {machine()}")
    print(f"mode: {'quick' if args.quick else 'full'}; medians of repetitions\n")
    header = f"{'figure':<78} {'gradinspect':>12} {'baseline':>12} {'ratio':>7} " \
             f"{'target':>10}  result"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.figure:<78} {r.ours:>12.4g} {r.base:>12.4g} {r.ratio:>7.3f} "
              f"{r.target:>10}  {'pass' if r.ok else 'FAIL'}  [{r.unit}]")
    for note in NOTES:
        print(note)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio} for r in rows],
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
