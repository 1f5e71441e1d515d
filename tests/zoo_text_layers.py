"""Custom layers of the keras.io text, timeseries and structured-data examples of the zoo.

A user keeps these in a file passed to ``gradinspect --custom-objects FILE``: every class is
registered (package ``zoo_text``) with a complete ``get_config``, so
``keras.saving.load_model(path, safe_mode=True)`` rebuilds the saved models once this file is
imported. The layers are written as their keras.io examples write them (``keras.ops`` where the
example used ``tf``), plus the ``**kwargs``/``get_config`` that saving needs.
"""

from __future__ import annotations

import keras
from keras import layers, ops

PACKAGE = "zoo_text"


def causal_attention_mask(batch_size, n_dest, n_src, dtype):
    """Mask the upper half of the dot-product matrix in self attention (miniature GPT)."""
    i = ops.arange(n_dest)[:, None]
    j = ops.arange(n_src)
    m = i >= j - n_src + n_dest
    mask = ops.cast(m, dtype)
    mask = ops.reshape(mask, [1, n_dest, n_src])
    # the example tiles by ops.concatenate([ops.expand_dims(batch_size, -1), [1, 1]]): Keras
    # 3.15's ops.tile iterates over a tensor of repeats, which fails on a symbolic one
    mult = [batch_size, 1, 1]
    return ops.tile(mask, mult)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenAndPositionEmbedding(layers.Layer):
    """keras.io: Text classification with Transformer (also miniature GPT and NER)."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen = maxlen
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions

    def get_config(self):
        config = super().get_config()
        config.update({"maxlen": self.maxlen, "vocab_size": self.vocab_size,
                       "embed_dim": self.embed_dim})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerBlock(layers.Layer):
    """keras.io: Text classification with Transformer (also Named Entity Recognition)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.rate = rate
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs, training=False):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output, training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                       "ff_dim": self.ff_dim, "rate": self.rate})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CausalTransformerBlock(layers.Layer):
    """keras.io: Text generation with a miniature GPT (its causal ``TransformerBlock``)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.rate = rate
        self.att = layers.MultiHeadAttention(num_heads, embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        input_shape = ops.shape(inputs)
        batch_size = input_shape[0]
        seq_len = input_shape[1]
        causal_mask = causal_attention_mask(batch_size, seq_len, seq_len, "bool")
        attention_output = self.att(inputs, inputs, attention_mask=causal_mask)
        attention_output = self.dropout1(attention_output)
        out1 = self.layernorm1(inputs + attention_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                       "ff_dim": self.ff_dim, "rate": self.rate})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerEncoder(layers.Layer):
    """keras.io: English-to-Spanish translation with a sequence-to-sequence Transformer."""

    def __init__(self, embed_dim, dense_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.dense_dim = dense_dim
        self.num_heads = num_heads
        self.attention = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.dense_proj = keras.Sequential(
            [layers.Dense(dense_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm_1 = layers.LayerNormalization()
        self.layernorm_2 = layers.LayerNormalization()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        padding_mask = None
        if mask is not None:
            padding_mask = ops.cast(mask[:, None, :], dtype="int32")
        attention_output = self.attention(
            query=inputs, value=inputs, key=inputs, attention_mask=padding_mask
        )
        proj_input = self.layernorm_1(inputs + attention_output)
        proj_output = self.dense_proj(proj_input)
        return self.layernorm_2(proj_input + proj_output)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim, "dense_dim": self.dense_dim,
                       "num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionalEmbedding(layers.Layer):
    """keras.io: English-to-Spanish translation with a sequence-to-sequence Transformer."""

    def __init__(self, sequence_length, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_embeddings = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.position_embeddings = layers.Embedding(
            input_dim=sequence_length, output_dim=embed_dim
        )
        self.sequence_length = sequence_length
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim

    def call(self, inputs):
        length = ops.shape(inputs)[-1]
        positions = ops.arange(0, length, 1)
        embedded_tokens = self.token_embeddings(inputs)
        embedded_positions = self.position_embeddings(positions)
        return embedded_tokens + embedded_positions

    def compute_mask(self, inputs, mask=None):
        return ops.not_equal(inputs, 0)

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length,
                       "vocab_size": self.vocab_size, "embed_dim": self.embed_dim})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerDecoder(layers.Layer):
    """keras.io: English-to-Spanish translation with a sequence-to-sequence Transformer."""

    def __init__(self, embed_dim, latent_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.latent_dim = latent_dim
        self.num_heads = num_heads
        self.attention_1 = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.attention_2 = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.dense_proj = keras.Sequential(
            [layers.Dense(latent_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm_1 = layers.LayerNormalization()
        self.layernorm_2 = layers.LayerNormalization()
        self.layernorm_3 = layers.LayerNormalization()
        self.supports_masking = True

    def call(self, inputs, encoder_outputs, mask=None):
        causal_mask = self.get_causal_attention_mask(inputs)
        if mask is not None:
            padding_mask = ops.cast(mask[:, None, :], dtype="int32")
            padding_mask = ops.minimum(padding_mask, causal_mask)
        else:
            padding_mask = None
        attention_output_1 = self.attention_1(
            query=inputs, value=inputs, key=inputs, attention_mask=causal_mask
        )
        out_1 = self.layernorm_1(inputs + attention_output_1)
        attention_output_2 = self.attention_2(
            query=out_1, value=encoder_outputs, key=encoder_outputs,
            attention_mask=padding_mask,
        )
        out_2 = self.layernorm_2(out_1 + attention_output_2)
        proj_output = self.dense_proj(out_2)
        return self.layernorm_3(out_2 + proj_output)

    def get_causal_attention_mask(self, inputs):
        input_shape = ops.shape(inputs)
        batch_size, sequence_length = input_shape[0], input_shape[1]
        i = ops.arange(sequence_length)[:, None]
        j = ops.arange(sequence_length)
        mask = ops.cast(i >= j, dtype="int32")
        mask = ops.reshape(mask, (1, input_shape[1], input_shape[1]))
        mult = [batch_size, 1, 1]  # as in causal_attention_mask (Keras 3.15 ops.tile)
        return ops.tile(mask, mult)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim, "latent_dim": self.latent_dim,
                       "num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedLinearUnit(layers.Layer):
    """keras.io: Classification with Gated Residual and Variable Selection Networks."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.linear = layers.Dense(units)
        self.sigmoid = layers.Dense(units, activation="sigmoid")

    def call(self, inputs):
        return self.linear(inputs) * self.sigmoid(inputs)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedResidualNetwork(layers.Layer):
    """keras.io: Classification with Gated Residual and Variable Selection Networks."""

    def __init__(self, units, dropout_rate, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dropout_rate = dropout_rate
        self.elu_dense = layers.Dense(units, activation="elu")
        self.linear_dense = layers.Dense(units)
        self.dropout = layers.Dropout(dropout_rate)
        self.gated_linear_unit = GatedLinearUnit(units)
        self.layer_norm = layers.LayerNormalization()
        self.project = layers.Dense(units)

    def call(self, inputs):
        x = self.elu_dense(inputs)
        x = self.linear_dense(x)
        x = self.dropout(x)
        if inputs.shape[-1] != self.units:
            inputs = self.project(inputs)
        x = inputs + self.gated_linear_unit(x)
        return self.layer_norm(x)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "dropout_rate": self.dropout_rate})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class VariableSelection(layers.Layer):
    """keras.io: Classification with Gated Residual and Variable Selection Networks."""

    def __init__(self, num_features, units, dropout_rate, **kwargs):
        super().__init__(**kwargs)
        self.num_features = num_features
        self.units = units
        self.dropout_rate = dropout_rate
        self.grns = []
        # Create a GRN for each feature independently
        for _ in range(num_features):
            grn = GatedResidualNetwork(units, dropout_rate)
            self.grns.append(grn)
        # Create a GRN for the concatenation of all the features
        self.grn_concat = GatedResidualNetwork(units, dropout_rate)
        self.softmax = layers.Dense(units=num_features, activation="softmax")

    def call(self, inputs):
        v = ops.concatenate(inputs, axis=-1)  # the example: layers.concatenate(inputs)
        v = self.grn_concat(v)
        v = ops.expand_dims(self.softmax(v), axis=-1)
        x = []
        for idx, input in enumerate(inputs):
            x.append(self.grns[idx](input))
        x = ops.stack(x, axis=1)
        return ops.squeeze(ops.matmul(ops.transpose(v, axes=[0, 2, 1]), x), axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({"num_features": self.num_features, "units": self.units,
                       "dropout_rate": self.dropout_rate})
        return config


class GraphInfo:
    """keras.io: Traffic forecasting using graph neural networks and LSTM (not a layer)."""

    def __init__(self, edges, num_nodes):
        self.edges = edges
        self.num_nodes = num_nodes


def _graph_info(graph_info):
    if isinstance(graph_info, dict):
        return GraphInfo(edges=tuple(graph_info["edges"]), num_nodes=graph_info["num_nodes"])
    return graph_info


def _graph_config(graph_info):
    return {"edges": [list(map(int, e)) for e in graph_info.edges],
            "num_nodes": int(graph_info.num_nodes)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GraphConv(layers.Layer):
    """keras.io: Traffic forecasting using graph neural networks and LSTM."""

    def __init__(self, in_feat, out_feat, graph_info, aggregation_type="mean",
                 combination_type="concat", activation=None, **kwargs):
        super().__init__(**kwargs)
        self.in_feat = in_feat
        self.out_feat = out_feat
        self.graph_info = _graph_info(graph_info)
        self.aggregation_type = aggregation_type
        self.combination_type = combination_type
        self.activation_name = activation
        self.weight = self.add_weight(
            initializer=keras.initializers.GlorotUniform(),
            shape=(in_feat, out_feat),
            dtype="float32",
            trainable=True,
            name="weight",
        )
        self.activation = layers.Activation(activation)

    def aggregate(self, neighbour_representations):
        # tf.math.unsorted_segment_{sum,mean,max} in the example
        segment_ids = ops.convert_to_tensor(self.graph_info.edges[0], dtype="int32")
        num = self.graph_info.num_nodes
        if self.aggregation_type == "sum":
            return ops.segment_sum(neighbour_representations, segment_ids, num_segments=num)
        if self.aggregation_type == "mean":
            total = ops.segment_sum(neighbour_representations, segment_ids, num_segments=num)
            ones = ops.ones_like(segment_ids, dtype=neighbour_representations.dtype)
            count = ops.segment_sum(ones, segment_ids, num_segments=num)
            count = ops.reshape(ops.maximum(count, 1.0), (num,) + (1,) * (total.ndim - 1))
            return total / count
        if self.aggregation_type == "max":
            return ops.segment_max(neighbour_representations, segment_ids, num_segments=num)
        raise ValueError(f"Invalid aggregation type: {self.aggregation_type}")

    def compute_nodes_representation(self, features):
        return ops.matmul(features, self.weight)

    def compute_aggregated_messages(self, features):
        neighbour_representations = ops.take(
            features, ops.convert_to_tensor(self.graph_info.edges[1], dtype="int32"), axis=0
        )
        aggregated_messages = self.aggregate(neighbour_representations)
        return ops.matmul(aggregated_messages, self.weight)

    def update(self, nodes_representation, aggregated_messages):
        if self.combination_type == "concat":
            h = ops.concatenate([nodes_representation, aggregated_messages], axis=-1)
        elif self.combination_type == "add":
            h = nodes_representation + aggregated_messages
        else:
            raise ValueError(f"Invalid combination type: {self.combination_type}.")
        return self.activation(h)

    def call(self, features):
        nodes_representation = self.compute_nodes_representation(features)
        aggregated_messages = self.compute_aggregated_messages(features)
        return self.update(nodes_representation, aggregated_messages)

    def get_config(self):
        config = super().get_config()
        config.update({"in_feat": self.in_feat, "out_feat": self.out_feat,
                       "graph_info": _graph_config(self.graph_info),
                       "aggregation_type": self.aggregation_type,
                       "combination_type": self.combination_type,
                       "activation": self.activation_name})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LSTMGC(layers.Layer):
    """keras.io: Traffic forecasting using graph neural networks and LSTM."""

    def __init__(self, in_feat, out_feat, lstm_units, input_seq_len, output_seq_len,
                 graph_info, graph_conv_params=None, **kwargs):
        super().__init__(**kwargs)
        if graph_conv_params is None:
            graph_conv_params = {"aggregation_type": "mean", "combination_type": "concat",
                                 "activation": None}
        self.in_feat = in_feat
        self.out_feat = out_feat
        self.lstm_units = lstm_units
        self.graph_info = _graph_info(graph_info)
        self.graph_conv_params = dict(graph_conv_params)
        self.graph_conv = GraphConv(in_feat, out_feat, self.graph_info, **graph_conv_params)
        self.lstm = layers.LSTM(lstm_units, activation="relu")
        self.dense = layers.Dense(output_seq_len)
        self.input_seq_len, self.output_seq_len = input_seq_len, output_seq_len

    def call(self, inputs):
        # convert shape to  (num_nodes, batch_size, input_seq_len, in_feat)
        inputs = ops.transpose(inputs, [2, 0, 1, 3])
        gcn_out = self.graph_conv(inputs)  # (num_nodes, batch_size, input_seq_len, out_feat)
        shape = ops.shape(gcn_out)
        num_nodes, batch_size, input_seq_len, out_feat = (shape[0], shape[1], shape[2],
                                                          shape[3])
        # LSTM takes only 3D tensors as input
        gcn_out = ops.reshape(gcn_out, (batch_size * num_nodes, input_seq_len, out_feat))
        lstm_out = self.lstm(gcn_out)  # (batch_size * num_nodes, lstm_units)
        dense_output = self.dense(lstm_out)  # (batch_size * num_nodes, output_seq_len)
        output = ops.reshape(dense_output, (num_nodes, batch_size, self.output_seq_len))
        return ops.transpose(output, [1, 2, 0])  # (batch_size, output_seq_len, num_nodes)

    def get_config(self):
        config = super().get_config()
        config.update({"in_feat": self.in_feat, "out_feat": self.out_feat,
                       "lstm_units": self.lstm_units, "input_seq_len": self.input_seq_len,
                       "output_seq_len": self.output_seq_len,
                       "graph_info": _graph_config(self.graph_info),
                       "graph_conv_params": self.graph_conv_params})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CustomNonPaddingTokenLoss(keras.losses.Loss):
    """keras.io: Named Entity Recognition using Transformers (its loss over non-pad tokens)."""

    def __init__(self, name="custom_ner_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=False, reduction=None)
        loss = loss_fn(y_true, y_pred)
        mask = ops.cast((y_true > 0), dtype="float32")
        loss = loss * mask
        return ops.sum(loss) / ops.sum(mask)

    def get_config(self):
        return super().get_config()


def create_feedforward_network(ff_dim, embed_dim, name=None):
    """keras.io: Text classification with Switch Transformer (one expert)."""
    return keras.Sequential(
        [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)], name=name
    )


def load_balanced_loss(router_probs, expert_mask):
    """keras.io: Text classification with Switch Transformer (the router's auxiliary loss)."""
    # router_probs [tokens_per_batch, num_experts] is the probability assigned for
    # each expert per token. expert_mask [tokens_per_batch, num_experts] contains
    # the expert with the highest router probability in one-hot format.
    num_experts = ops.shape(expert_mask)[-1]
    # Get the fraction of tokens routed to each expert.
    # density is a vector of length num experts that sums to 1.
    density = ops.mean(expert_mask, axis=0)
    # Get fraction of probability mass assigned to each expert from the router
    # across all tokens. density_proxy is a vector of length num experts that sums to 1.
    density_proxy = ops.mean(router_probs, axis=0)
    # Want both vectors to have uniform allocation (1/num experts) across all
    # num_expert elements. The two vectors will be pushed towards uniform allocation
    # when the dot product is minimized.
    return ops.mean(density_proxy * density) * ops.cast((num_experts**2), "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Router(layers.Layer):
    """keras.io: Text classification with Switch Transformer."""

    def __init__(self, num_experts, expert_capacity, **kwargs):
        self.num_experts = num_experts
        self.route = layers.Dense(units=num_experts)
        self.expert_capacity = expert_capacity
        super().__init__(**kwargs)

    def call(self, inputs, training=False):
        # inputs shape: [tokens_per_batch, embed_dim]
        # router_logits shape: [tokens_per_batch, num_experts]
        router_logits = self.route(inputs)
        if training:
            # Add noise for exploration across experts.
            router_logits += keras.random.uniform(
                shape=router_logits.shape, minval=0.9, maxval=1.1
            )
        # Probabilities for each token of what expert it should be sent to.
        router_probs = keras.activations.softmax(router_logits, axis=-1)
        # Get the top-1 expert for each token. expert_gate is the top-1 probability
        # from the router for each token. expert_index is what expert each token
        # is going to be routed to.
        expert_gate, expert_index = ops.top_k(router_probs, k=1)
        # expert_mask shape: [tokens_per_batch, num_experts]
        expert_mask = ops.one_hot(expert_index, self.num_experts)
        # Compute load balancing loss.
        aux_loss = load_balanced_loss(router_probs, expert_mask)
        self.add_loss(aux_loss)
        # Experts have a fixed capacity, ensure we do not exceed it. Construct
        # the batch indices, to each expert, with position in expert
        # make sure that not more that expert capacity examples can be routed to
        # each expert.
        position_in_expert = ops.cast(
            ops.cumsum(expert_mask, axis=0) * expert_mask, "int32"
        )
        # Keep only tokens that fit within expert capacity.
        expert_mask *= ops.cast(
            ops.less(ops.cast(position_in_expert, "int32"), self.expert_capacity),
            "float32",
        )
        expert_mask_flat = ops.sum(expert_mask, axis=-1)
        # Mask out the experts that have overflowed the expert capacity.
        expert_gate *= expert_mask_flat
        # Combine expert outputs and scaling with router probability.
        # combine_tensor shape: [tokens_per_batch, num_experts, expert_capacity]
        combined_tensor = ops.expand_dims(
            expert_gate
            * expert_mask_flat
            * ops.squeeze(ops.one_hot(expert_index, self.num_experts), 1),
            -1,
        ) * ops.squeeze(ops.one_hot(position_in_expert, self.expert_capacity), 1)
        # Create binary dispatch_tensor [tokens_per_batch, num_experts, expert_capacity]
        # that is 1 if the token gets routed to the corresponding expert.
        dispatch_tensor = ops.cast(combined_tensor, "float32")
        return dispatch_tensor, combined_tensor

    def get_config(self):
        config = super().get_config()
        config.update({"num_experts": self.num_experts,
                       "expert_capacity": self.expert_capacity})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Switch(layers.Layer):
    """keras.io: Text classification with Switch Transformer."""

    def __init__(self, num_experts, embed_dim, ff_dim, num_tokens_per_batch,
                 capacity_factor=1, **kwargs):
        self.num_experts = num_experts
        self.embed_dim = embed_dim
        self.ff_dim = ff_dim
        self.num_tokens_per_batch = num_tokens_per_batch
        self.capacity_factor = capacity_factor
        self.experts = [
            create_feedforward_network(ff_dim, embed_dim) for _ in range(num_experts)
        ]
        self.expert_capacity = num_tokens_per_batch // self.num_experts
        self.router = Router(self.num_experts, self.expert_capacity)
        super().__init__(**kwargs)

    def call(self, inputs):
        batch_size = ops.shape(inputs)[0]
        num_tokens_per_example = ops.shape(inputs)[1]
        # inputs shape: [num_tokens_per_batch, embed_dim]
        inputs = ops.reshape(inputs, [self.num_tokens_per_batch, self.embed_dim])
        # dispatch_tensor shape: [expert_capacity, num_experts, tokens_per_batch]
        # combine_tensor shape: [tokens_per_batch, num_experts, expert_capacity]
        dispatch_tensor, combine_tensor = self.router(inputs)
        # expert_inputs shape: [num_experts, expert_capacity, embed_dim]
        expert_inputs = ops.einsum("ab,acd->cdb", inputs, dispatch_tensor)
        expert_inputs = ops.reshape(
            expert_inputs, [self.num_experts, self.expert_capacity, self.embed_dim]
        )
        # Dispatch to experts
        expert_input_list = ops.unstack(expert_inputs, axis=0)
        expert_output_list = [
            self.experts[idx](expert_input)
            for idx, expert_input in enumerate(expert_input_list)
        ]
        # expert_outputs shape: [expert_capacity, num_experts, embed_dim]
        expert_outputs = ops.stack(expert_output_list, axis=1)
        # expert_outputs_combined shape: [tokens_per_batch, embed_dim]
        expert_outputs_combined = ops.einsum(
            "abc,xba->xc", expert_outputs, combine_tensor
        )
        # output shape: [batch_size, num_tokens_per_example, embed_dim]
        return ops.reshape(
            expert_outputs_combined,
            [batch_size, num_tokens_per_example, self.embed_dim],
        )

    def get_config(self):
        config = super().get_config()
        config.update({"num_experts": self.num_experts, "embed_dim": self.embed_dim,
                       "ff_dim": self.ff_dim, "num_tokens_per_batch": self.num_tokens_per_batch,
                       "capacity_factor": self.capacity_factor})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwitchTransformerBlock(layers.Layer):
    """keras.io: Text classification with Switch Transformer (its ``TransformerBlock``)."""

    def __init__(self, embed_dim, num_heads, ffn, dropout_rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout_rate = dropout_rate
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        # The ffn can be either a standard feedforward network or a switch
        # layer with a Mixture of Experts.
        if isinstance(ffn, dict):
            ffn = keras.saving.deserialize_keras_object(ffn)
        self.ffn = ffn
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(dropout_rate)
        self.dropout2 = layers.Dropout(dropout_rate)

    def call(self, inputs, training=False):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output, training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                       "ffn": keras.saving.serialize_keras_object(self.ffn),
                       "dropout_rate": self.dropout_rate})
        return config
