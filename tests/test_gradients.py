"""Every gradient gradinspect reports, checked against computations that do not use its hooks:
a plain tf.GradientTape on an unhooked twin, the closed-form Dense formulas in float64 numpy,
and (for plain chains) a layer-by-layer tape. Random architectures via hypothesis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from archs import (
    ACTIVATIONS,
    DERIVATIVES,
    Arch,
    archs,
    build,
    chain_input_grads,
    data_for,
    plain_tape_grads,
    twin,
)
from hypothesis import given
from hypothesis import strategies as st

import gradinspect
from gradinspect.engine.runners import Probe
from gradinspect.engine.seeding import seeded
from gradinspect.engine.walk import find_dense_layers
from gradinspect.losses import get_loss


def _close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-5 * scale, err_msg=what)


def _capture(model: Any, inputs: list[np.ndarray], loss: str) -> tuple[list[Any], Any, Any]:
    """Sites, the step's capture, and the device-side (dL/dW, dL/db) per site."""
    sites = find_dense_layers(model)
    scale = 1.0 if loss == "sum" else 1.0 / inputs[0].shape[0]
    with Probe(model, sites, get_loss(loss), full=True) as probe:
        cap = probe.step(inputs, None, scale)
        sums = probe.gradient_sums()
    return sites, cap, sums


def _kernel_bias(sums: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """A Dense site's gradient sums as (dL/dW, dL/db or None): its variables are kernel[, bias]."""
    return sums[0], (sums[1] if len(sums) > 1 else None)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])


@given(arch=archs(), loss=st.sampled_from(["sum", "mean"]))
def test_gradients_match_plain_tape_and_closed_form(tfk: Any, arch: Arch, loss: str) -> None:
    tf, keras = tfk
    model = build(keras, arch)
    inputs = data_for(arch)
    if loss == "mean":
        # tf.reduce_mean over every output entry = per-sample mean / N with one output
        pass
    reference = plain_tape_grads(tf, twin(keras, arch, model), inputs, loss)
    sites, cap, sums = _capture(model, inputs, loss)
    assert {s.name for s in sites} >= {f"d{i}" for i in range(len(arch.widths))}

    for site, layer, site_sums in zip(sites, cap.layers, sums, strict=True):
        kernel_grad, bias_grad = _kernel_bias(site_sums)
        assert [v.name for v in site.variables] == ["kernel", "bias"][:len(site_sums)]
        name = site.path
        kernel = np.asarray(layer.kernel, dtype=np.float64)
        # 1. against the plain tape on the twin
        _close(kernel_grad, reference[site.layer.kernel.path], f"{name} dL/dW vs tape")
        if site.use_bias:
            _close(bias_grad, reference[site.layer.bias.path], f"{name} dL/db vs tape")
        # 2. against the closed form, from the captured x, z and g
        expected_calls = 2 if arch.shared is not None and name.endswith(f"d{arch.shared}") else 1
        assert len(layer.calls) == expected_calls
        dw = np.zeros_like(kernel)
        db = np.zeros(kernel.shape[1])
        for summary in layer.calls:
            call = summary.full
            assert call is not None
            x = _flat(call.x)
            z_expected = x @ kernel + (layer.bias if site.use_bias else 0.0)
            assert call.z is not None
            _close(_flat(call.z), z_expected, f"{name} z = xW + b")
            act = ACTIVATIONS.get(site.activation, ACTIVATIONS["linear"])
            _close(_flat(call.out), act(z_expected), f"{name} out = act(z)")
            deriv = DERIVATIVES.get(site.activation, DERIVATIVES["linear"])(_flat(call.z))
            delta = _flat(call.g_out) * deriv
            _close(_flat(call.g_z), delta, f"{name} delta = g * act'(z)")
            _close(_flat(call.g_x), delta @ kernel.T, f"{name} dL/dx = delta W^T")
            dw += x.T @ delta
            db += delta.sum(axis=0)
        _close(kernel_grad, dw, f"{name} dL/dW = x^T delta (all calls)")
        if site.use_bias:
            _close(bias_grad, db, f"{name} dL/db = sum delta")

    # 3. for plain chains, the input gradients by a layer-by-layer tape
    if arch.is_chain:
        expected = chain_input_grads(tf, twin(keras, arch, model), inputs, loss)
        for site, layer, want in zip(sites, cap.layers, expected, strict=True):
            full = layer.calls[0].full
            assert full is not None
            _close(full.g_x, want, f"{site.path} dL/dinput vs layer-by-layer tape")
            # and the device-side summary of the same tensor
            count, sumsq, _, max_abs, nan, inf = layer.calls[0].input_grad
            assert count == want.size
            assert np.sqrt(sumsq) == pytest.approx(np.linalg.norm(want.astype(np.float64)),
                                                   rel=1e-4, abs=1e-6)
            assert max_abs == pytest.approx(np.abs(want).max(), rel=1e-4, abs=1e-6)
            assert nan == inf == 0


@given(arch=archs())
def test_report_figures_equal_reference_arrays(tfk: Any, arch: Arch) -> None:
    tf, keras = tfk
    model = build(keras, arch)
    inputs = data_for(arch)
    reference = plain_tape_grads(tf, twin(keras, arch, model), inputs)
    report = gradinspect.inspect(model, inputs)
    for site in find_dense_layers(model):
        row = report[site.path]
        ref = reference[site.layer.kernel.path].astype(np.float64)
        assert row.grads.kernel.norm == pytest.approx(np.linalg.norm(ref), rel=1e-4, abs=1e-6)
        assert row.grads.kernel.max_abs == pytest.approx(np.abs(ref).max(), rel=1e-4, abs=1e-6)
        assert row.grads.kernel.mean_abs == pytest.approx(np.abs(ref).mean(), rel=1e-4,
                                                          abs=1e-6)
        assert row.grads.kernel.shape == tuple(site.layer.kernel.shape)
        assert row.weights.kernel.norm == pytest.approx(
            np.linalg.norm(site.layer.kernel.numpy().astype(np.float64)), rel=1e-6)
        if site.use_bias:
            refb = reference[site.layer.bias.path].astype(np.float64)
            assert row.grads.bias is not None
            assert row.grads.bias.norm == pytest.approx(np.linalg.norm(refb), rel=1e-4, abs=1e-6)
        else:
            assert row.grads.bias is None
            assert row.weights.bias is None
        assert row.grads.input.shape[0] == arch.batch
        assert row.grads.input.nan == row.grads.input.inf == 0


@given(arch=archs(), loss=st.sampled_from(["sum", "mean"]))
def test_hooks_do_not_change_outputs_or_loss(tfk: Any, arch: Arch, loss: str) -> None:
    tf, keras = tfk
    model = build(keras, arch)
    inputs = data_for(arch)
    x = [tf.constant(a) for a in inputs]
    before = np.asarray(model(x if len(x) > 1 else x[0]))
    expected = float(before.sum()) if loss == "sum" else float(before.astype(np.float64).mean())
    sites, cap, _ = _capture(model, inputs, loss)
    assert cap.loss == pytest.approx(expected, rel=1e-5, abs=1e-5)
    after = np.asarray(model(x if len(x) > 1 else x[0]))
    np.testing.assert_array_equal(before, after)
    for site in sites:
        assert "call" not in vars(site.layer), "hook left behind"
        assert site.layer.activation.__name__ != "capture"


def test_hooks_removed_when_the_pass_fails(tfk: Any) -> None:
    _tf, keras = tfk
    arch = Arch((3,), None, (4, 2), ("tanh", "relu"), (True, True), None, None, 2, 1)
    model = build(keras, arch)
    sites = find_dense_layers(model)
    activations = [s.layer.activation for s in sites]

    class Broken:
        name = "broken"
        reduction = "sum"

        def terms(self, tf: Any, outputs: list[Any], labels: Any) -> Any:
            raise ValueError("planted failure in the loss")

    with pytest.raises(gradinspect.errors.ProbeError, match="planted failure"), \
            Probe(model, sites, Broken()) as probe:
        probe.step(data_for(arch), None, 1.0)
    for site, act in zip(sites, activations, strict=True):
        assert "call" not in vars(site.layer)
        assert site.layer.activation is act


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_batched_pass_equals_single_pass(tfk: Any, batch_size: int, loss: str) -> None:
    _tf, keras = tfk
    arch = Arch((4,), None, (5, 3), ("sigmoid", "relu"), (True, False), None, None, 7, 3)
    model = build(keras, arch)
    inputs = data_for(arch)
    whole = gradinspect.inspect(model, inputs, loss=loss)
    batched = gradinspect.inspect(model, inputs, loss=loss, batch_size=batch_size)
    assert batched.loss.value == pytest.approx(whole.loss.value, rel=1e-5)
    for a, b in zip(whole.layers, batched.layers, strict=True):
        for ga, gb in ((a.grads.kernel, b.grads.kernel), (a.grads.input, b.grads.input)):
            assert gb.norm == pytest.approx(ga.norm, rel=1e-5)
            assert gb.max_abs == pytest.approx(ga.max_abs, rel=1e-5)
            assert gb.shape == ga.shape
        # counts are exact; the derivative gain is a ratio of float32 sums added per batch
        if a.activity is None or b.activity is None:
            assert b.activity == a.activity
        else:
            assert replace(b.activity, derivative_gain=None) == replace(
                a.activity, derivative_gain=None)
            if a.activity.derivative_gain is not None:
                assert b.activity.derivative_gain == pytest.approx(
                    a.activity.derivative_gain, rel=1e-5)


@pytest.mark.parametrize("compiled", [True, False])
def test_gradient_sums_accumulate_in_float64_on_the_device(tfk: Any, compiled: bool) -> None:
    """dL/dW of Dense(linear) under the sum loss is the column sum of x: a batch of 1e8s then a
    batch of 1s must give 1e8 + 1, which float32 accumulation would round back to 1e8. The
    eager step (no variables) must sum the same way."""
    _tf, keras = tfk
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    sites = find_dense_layers(model)
    with Probe(model, sites, get_loss("sum"), compiled=compiled) as probe:
        for value in (1e8, 1.0, 1.0):
            probe.step([np.full((1, 2), value, np.float32)], None, 1.0)
        (site_sums,) = probe.gradient_sums()
        kernel_grad, bias_grad = _kernel_bias(site_sums)
        assert kernel_grad.dtype == np.float64
        assert kernel_grad.ravel().tolist() == [1e8 + 2, 1e8 + 2]
        assert bias_grad is None
        probe.reset()
        probe.step([np.full((3, 2), 1.0, np.float32)], None, 1.0)
        assert probe.gradient_sums()[0][0].ravel().tolist() == [3.0, 3.0]


def test_nan_counts_replay_the_same_dropout_mask(tfk: Any) -> None:
    """NaN/Inf are counted by a second, counting pass only when a figure is not finite; in
    training mode it must see the same Dropout mask as the first. With W[c, c] = inf,
    dL/dx[r, c] is NaN exactly where unit c was dropped in row r (0 * inf) and Inf where kept."""
    tf, keras = tfk
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2, name="b")])
    w, b = model.get_layer("a").get_weights()
    for c in range(4):
        w[c, c] = np.inf
    model.get_layer("a").set_weights([w, b])
    x = np.random.default_rng(2).uniform(0.5, 1.0, (256, 4)).astype(np.float32)
    with seeded(model, 7):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(model(xt, training=True))
        want = tape.gradient(loss, xt).numpy()
    sites = find_dense_layers(model)
    with seeded(model, 7), Probe(model, sites, get_loss("sum"), training=True) as probe:
        cap = probe.step([x], None, 1.0)
    _, _, _, max_abs, nan, inf = cap.layers[0].calls[0].input_grad
    assert 0 < nan < x.size
    assert (nan, inf) == (np.isnan(want).sum(), np.isinf(want).sum())
    assert max_abs == np.inf


def test_float16_gradients_are_widened_before_reducing(tfk: Any) -> None:
    """Under mixed_float16 dL/dinput is float16; its sum of squares (here 32 * 300^2 = 2.88e6)
    would overflow float16 (max 65504) if it were reduced in its own precision."""
    _tf, keras = tfk
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(1, dtype="mixed_float16", name="half")])
    model.get_layer("half").set_weights([np.full((4, 1), 300.0, np.float32), np.zeros(1)])
    report = gradinspect.inspect(model, np.ones((8, 4), np.float32))
    grads = report["half"].grads
    assert grads.input.norm == pytest.approx(np.sqrt(32 * 300.0**2), rel=1e-3)
    assert grads.input.max_abs == pytest.approx(300.0)
    assert grads.input.nan == grads.input.inf == 0
    # per-sample: ||x_i||^2 = 4 * 200^2 = 160000 overflows float16 unless widened too
    model.get_layer("half").set_weights([np.full((4, 1), 0.01, np.float32), np.zeros(1)])
    per = gradinspect.inspect(model, np.full((8, 4), 200.0, np.float32), per_sample=True)
    assert per["half"].per_sample is not None
    assert per["half"].per_sample.max == pytest.approx(np.sqrt(160000.0 + 1.0), rel=1e-3)


def test_float64_models_run_in_float64(tfk: Any) -> None:
    """A float64 model: the loss scale, thresholds and confidence follow the model's dtype."""
    tf, keras = tfk
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,), dtype="float64"),
                              keras.layers.Dense(3, activation="relu", dtype="float64", name="a"),
                              keras.layers.Dense(2, activation="softmax", dtype="float64")])
    x = np.random.default_rng(0).normal(size=(8, 4))
    report = gradinspect.inspect(model, x, loss="mean", batch_size=3, per_sample=True,
                                 verify=True)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(xt))
    want = tape.gradient(loss, model.get_layer("a").kernel).numpy()
    assert report["a"].grads.kernel.norm == pytest.approx(np.linalg.norm(want), rel=1e-12)
    assert report["a"].verify is not None
    assert report["a"].verify.ok
    assert report["a"].activity is not None


def test_dense_on_rank3_and_subclass_and_no_bias(tfk: Any) -> None:
    tf, keras = tfk

    class MyDense(keras.layers.Dense):
        pass

    keras.utils.set_random_seed(5)
    inp = keras.Input((4, 3))
    h = MyDense(2, activation="tanh", use_bias=False, name="mine")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(h))
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    report = gradinspect.inspect(model, x)
    mine = report["mine"]
    assert mine.class_name == "MyDense"
    assert mine.grads.bias is None
    assert mine.input_shape == (2, 4, 3)
    assert mine.grads.input.shape == (2, 4, 3)
    assert mine.output_shape == (2, 4, 2)
    ref = plain_tape_grads(tf, model, [x])
    assert mine.grads.kernel.norm == pytest.approx(
        np.linalg.norm(ref[model.get_layer("mine").kernel.path]), rel=1e-5)
