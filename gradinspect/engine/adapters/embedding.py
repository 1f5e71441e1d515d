"""``embedding``: Embedding. Its input is integer ids, so there is no dL/dinput. Per sample,
its gradient is the sample's dL/doutput rows added into the rows of the ids it looked up (an
id repeated in a sample adds up before the norm is taken)."""

from __future__ import annotations

from typing import Any

from gradinspect.engine.adapters.base import Adapter, keras_own_call
from gradinspect.engine.views import DenseView, PerSampleCall, PerSampleForm


def embedding_per_sample(layer: Any, view: DenseView | None,
                         training: bool) -> PerSampleForm | None:
    """Rows for Keras' own Embedding (its one variable, the table); the fallback for a
    subclass with a call of its own (keras-hub's ReversibleEmbedding also projects back) or
    a LoRA/quantized table."""
    if (not keras_own_call(layer) or getattr(layer, "lora_enabled", False)
            or len(layer.trainable_weights) != 1):
        return None
    return ROWS


def rows_sq(tf: Any, call: PerSampleCall) -> tuple[Any, str]:
    """Per sample: its (sample, id) pairs made unique, dL/doutput rows summed per pair, the
    squared norms of those sums added per sample."""
    table = call.layer.embeddings
    vocabulary, width = int(table.shape[0]), int(table.shape[1])
    first = call.calls[0].call[1][0]
    batch = tf.shape(first)[0]
    ids, rows = [], []
    for c, gouts in zip(call.calls, call.gouts, strict=True):
        inputs = c.call[1][0]
        ids.append(tf.reshape(tf.cast(inputs, tf.int64), tf.stack([batch, -1])))
        rows.append(tf.reshape(tf.cast(gouts[0], tf.float64), tf.stack([batch, -1, width])))
    key = (tf.range(tf.cast(batch, tf.int64), dtype=tf.int64)[:, None] * vocabulary
           + tf.concat(ids, axis=1))
    unique, index = tf.unique(tf.reshape(key, [-1]))
    summed = tf.math.unsorted_segment_sum(tf.reshape(tf.concat(rows, axis=1), (-1, width)),
                                          index, tf.size(unique))
    sq = tf.reduce_sum(summed * summed, axis=1)
    return tf.math.unsorted_segment_sum(sq, unique // vocabulary, batch), "rows"


ROWS = PerSampleForm(method="rows", needs=frozenset({"gout", "call"}), compute=rows_sq)

ADAPTER = Adapter(kind="embedding", classes=("Embedding",), per_sample=embedding_per_sample,
                  note="Embedding (no dL/dinput: ids); per-sample by rows")
