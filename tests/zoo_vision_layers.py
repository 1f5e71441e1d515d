"""Custom layers of the keras.io vision examples, written as the examples write them (keras.ops
only), kept in one file the way a user passes it to ``gradinspect --custom-objects FILE``.

Every class is registered under the ``zoo_vision`` package and has a complete ``get_config``, so
``keras.saving.load_model(path, safe_mode=True)`` rebuilds a saved model once this file is
imported.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

register = keras.saving.register_keras_serializable(package="zoo_vision")


@register
class Patches(layers.Layer):
    """keras.io: Image classification with Vision Transformer (also the modern MLP models)."""

    def __init__(self, patch_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, images: Any) -> Any:
        input_shape = ops.shape(images)
        batch_size = input_shape[0]
        height = input_shape[1]
        width = input_shape[2]
        channels = input_shape[3]
        num_patches_h = height // self.patch_size
        num_patches_w = width // self.patch_size
        patches = ops.image.extract_patches(images, size=self.patch_size)
        return ops.reshape(
            patches,
            (batch_size, num_patches_h * num_patches_w,
             self.patch_size * self.patch_size * channels),
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


@register
class PatchEncoder(layers.Layer):
    """keras.io: Image classification with Vision Transformer."""

    def __init__(self, num_patches: int, projection_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.projection_dim = projection_dim
        self.projection = layers.Dense(units=projection_dim)
        self.position_embedding = layers.Embedding(input_dim=num_patches,
                                                   output_dim=projection_dim)

    def call(self, patch: Any) -> Any:
        positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
        projected_patches = self.projection(patch)
        return projected_patches + self.position_embedding(positions)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_patches": self.num_patches, "projection_dim": self.projection_dim})
        return config


@register
class CCTTokenizer(layers.Layer):
    """keras.io: Compact Convolutional Transformers."""

    def __init__(self, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 pooling_kernel_size: int = 3, pooling_stride: int = 2,
                 num_conv_layers: int = 2, num_output_channels: Any = (64, 128),
                 positional_emb: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.pooling_kernel_size = pooling_kernel_size
        self.pooling_stride = pooling_stride
        self.num_conv_layers = num_conv_layers
        self.num_output_channels = list(num_output_channels)
        self.positional_emb = positional_emb
        # The tokenizer: mini-network of convolutions, each followed by padding and pooling.
        self.conv_model = keras.Sequential()
        for i in range(num_conv_layers):
            self.conv_model.add(layers.Conv2D(
                self.num_output_channels[i], kernel_size, stride, padding="valid",
                use_bias=False, activation="relu", kernel_initializer="he_normal"))
            self.conv_model.add(layers.ZeroPadding2D(padding))
            self.conv_model.add(layers.MaxPooling2D(pooling_kernel_size, pooling_stride,
                                                    "same"))

    def call(self, images: Any) -> Any:
        outputs = self.conv_model(images)
        # After passing the images through the mini-network the spatial dimensions are
        # flattened to form sequences.
        return ops.reshape(
            outputs,
            (-1, ops.shape(outputs)[1] * ops.shape(outputs)[2], ops.shape(outputs)[-1]),
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
            "pooling_kernel_size": self.pooling_kernel_size,
            "pooling_stride": self.pooling_stride, "num_conv_layers": self.num_conv_layers,
            "num_output_channels": self.num_output_channels,
            "positional_emb": self.positional_emb,
        })
        return config


@register
class PositionEmbedding(layers.Layer):
    """keras.io: Compact Convolutional Transformers (also the modern MLP models' FNet)."""

    def __init__(self, sequence_length: int, initializer: Any = "glorot_uniform",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sequence_length is None:
            raise ValueError("`sequence_length` must be an Integer, received `None`.")
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        })
        return config

    def build(self, input_shape: Any) -> None:
        feature_size = input_shape[-1]
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=[self.sequence_length, feature_size],
            initializer=self.initializer,
            trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs: Any, start_index: int = 0) -> Any:
        shape = ops.shape(inputs)
        feature_length = shape[-1]
        sequence_length = shape[-2]
        # trim to match the length of the input sequence, which might be less than the
        # sequence_length of the layer.
        position_embeddings = ops.convert_to_tensor(self.position_embeddings)
        position_embeddings = ops.slice(position_embeddings, (start_index, 0),
                                        (sequence_length, feature_length))
        return ops.broadcast_to(position_embeddings, shape)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


@register
class SequencePooling(layers.Layer):
    """keras.io: Compact Convolutional Transformers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attention = layers.Dense(1)

    def call(self, x: Any) -> Any:
        attention_weights = ops.softmax(self.attention(x), axis=1)
        attention_weights = ops.transpose(attention_weights, axes=(0, 2, 1))
        weighted_representation = ops.matmul(attention_weights, x)
        return ops.squeeze(weighted_representation, -2)


@register
class StochasticDepth(layers.Layer):
    """keras.io: Compact Convolutional Transformers."""

    def __init__(self, drop_prop: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drop_prob = float(drop_prop)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x: Any, training: Any = None) -> Any:
        if training:
            keep_prob = 1 - self.drop_prob
            shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            random_tensor = keep_prob + keras.random.uniform(shape, 0, 1,
                                                             seed=self.seed_generator)
            random_tensor = ops.floor(random_tensor)
            return (x / keep_prob) * random_tensor
        return x

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"drop_prop": self.drop_prob})
        return config


def window_partition(x: Any, window_size: int) -> Any:
    """keras.io Swin Transformers: (B, H, W, C) -> (B * windows, ws, ws, C)."""
    _, height, width, channels = x.shape
    patch_num_y = height // window_size
    patch_num_x = width // window_size
    x = ops.reshape(x, (-1, patch_num_y, window_size, patch_num_x, window_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, window_size, window_size, channels))


def window_reverse(windows: Any, window_size: int, height: int, width: int,
                   channels: int) -> Any:
    """keras.io Swin Transformers: the inverse of ``window_partition``."""
    patch_num_y = height // window_size
    patch_num_x = width // window_size
    x = ops.reshape(windows,
                    (-1, patch_num_y, patch_num_x, window_size, window_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height, width, channels))


@register
class WindowAttention(layers.Layer):
    """keras.io: Image classification with Swin Transformers."""

    def __init__(self, dim: int, window_size: Any, num_heads: int, qkv_bias: bool = True,
                 dropout_rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.dropout_rate = dropout_rate
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = layers.Dense(dim * 3, use_bias=qkv_bias)
        self.dropout = layers.Dropout(dropout_rate)
        self.proj = layers.Dense(dim)

        num_window_elements = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = self.add_weight(
            shape=(num_window_elements, self.num_heads),
            initializer=keras.initializers.Zeros(),
            trainable=True,
        )
        coords_h = np.arange(self.window_size[0])
        coords_w = np.arange(self.window_size[1])
        coords_matrix = np.meshgrid(coords_h, coords_w, indexing="ij")
        coords = np.stack(coords_matrix)
        coords_flatten = coords.reshape(2, -1)
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
        relative_coords = relative_coords.transpose([1, 2, 0])
        relative_coords[:, :, 0] += self.window_size[0] - 1
        relative_coords[:, :, 1] += self.window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
        relative_position_index = relative_coords.sum(-1)

        self.relative_position_index = keras.Variable(
            initializer=relative_position_index,
            shape=relative_position_index.shape,
            dtype="int",
            trainable=False,
        )

    def call(self, x: Any, mask: Any = None) -> Any:
        _, size, channels = x.shape
        head_dim = channels // self.num_heads
        x_qkv = self.qkv(x)
        x_qkv = ops.reshape(x_qkv, (-1, size, 3, self.num_heads, head_dim))
        x_qkv = ops.transpose(x_qkv, (2, 0, 3, 1, 4))
        q, k, v = x_qkv[0], x_qkv[1], x_qkv[2]
        q = q * self.scale
        k = ops.transpose(k, (0, 1, 3, 2))
        attn = q @ k

        num_window_elements = self.window_size[0] * self.window_size[1]
        relative_position_index_flat = ops.reshape(self.relative_position_index, (-1,))
        relative_position_bias = ops.take(self.relative_position_bias_table,
                                          relative_position_index_flat, axis=0)
        relative_position_bias = ops.reshape(
            relative_position_bias, (num_window_elements, num_window_elements, -1))
        relative_position_bias = ops.transpose(relative_position_bias, (2, 0, 1))
        attn = attn + ops.expand_dims(relative_position_bias, axis=0)

        if mask is not None:
            n_windows = mask.shape[0]
            mask_float = ops.cast(ops.expand_dims(ops.expand_dims(mask, axis=1), axis=0),
                                  "float32")
            attn = ops.reshape(attn, (-1, n_windows, self.num_heads, size, size)) + mask_float
            attn = ops.reshape(attn, (-1, self.num_heads, size, size))
            attn = keras.activations.softmax(attn, axis=-1)
        else:
            attn = keras.activations.softmax(attn, axis=-1)
        attn = self.dropout(attn)

        x_qkv = attn @ v
        x_qkv = ops.transpose(x_qkv, (0, 2, 1, 3))
        x_qkv = ops.reshape(x_qkv, (-1, size, channels))
        x_qkv = self.proj(x_qkv)
        return self.dropout(x_qkv)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "dim": self.dim, "window_size": list(self.window_size),
            "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
            "dropout_rate": self.dropout_rate,
        })
        return config


@register
class SwinTransformer(layers.Layer):
    """keras.io: Image classification with Swin Transformers."""

    def __init__(self, dim: int, num_patch: Any, num_heads: int, window_size: int = 7,
                 shift_size: int = 0, num_mlp: int = 1024, qkv_bias: bool = True,
                 dropout_rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim  # number of input dimensions
        self.num_patch = tuple(num_patch)  # number of embedded patches
        self.num_heads = num_heads  # number of attention heads
        self.window_size = window_size  # size of window
        self.shift_size = shift_size  # size of window shift
        self.num_mlp = num_mlp  # number of MLP nodes
        self.qkv_bias = qkv_bias
        self.dropout_rate = dropout_rate

        self.norm1 = layers.LayerNormalization(epsilon=1e-5)
        self.attn = WindowAttention(
            dim,
            window_size=(self.window_size, self.window_size),
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            dropout_rate=dropout_rate,
        )
        self.drop_path = layers.Dropout(dropout_rate)
        self.norm2 = layers.LayerNormalization(epsilon=1e-5)

        self.mlp = keras.Sequential([
            layers.Dense(num_mlp),
            layers.Activation(keras.activations.gelu),
            layers.Dropout(dropout_rate),
            layers.Dense(dim),
            layers.Dropout(dropout_rate),
        ])

        if min(self.num_patch) < self.window_size:
            self.shift_size = 0
            self.window_size = min(self.num_patch)

    def build(self, input_shape: Any) -> None:
        if self.shift_size == 0:
            self.attn_mask = None
        else:
            height, width = self.num_patch
            h_slices = (
                slice(0, -self.window_size),
                slice(-self.window_size, -self.shift_size),
                slice(-self.shift_size, None),
            )
            w_slices = (
                slice(0, -self.window_size),
                slice(-self.window_size, -self.shift_size),
                slice(-self.shift_size, None),
            )
            mask_array = np.zeros((1, height, width, 1))
            count = 0
            for h in h_slices:
                for w in w_slices:
                    mask_array[:, h, w, :] = count
                    count += 1
            mask_tensor = ops.convert_to_tensor(mask_array)

            # mask array to windows
            mask_windows = window_partition(mask_tensor, self.window_size)
            mask_windows = ops.reshape(mask_windows, [-1, self.window_size * self.window_size])
            attn_mask = ops.expand_dims(mask_windows, axis=1) - ops.expand_dims(mask_windows,
                                                                                axis=2)
            attn_mask = ops.where(attn_mask != 0, -100.0, attn_mask)
            attn_mask = ops.where(attn_mask == 0, 0.0, attn_mask)
            self.attn_mask = keras.Variable(
                initializer=attn_mask,
                shape=attn_mask.shape,
                dtype=attn_mask.dtype,
                trainable=False,
            )

    def call(self, x: Any, training: Any = False) -> Any:
        height, width = self.num_patch
        _, _num_patches_before, channels = x.shape
        x_skip = x
        x = self.norm1(x)
        x = ops.reshape(x, (-1, height, width, channels))
        if self.shift_size > 0:
            shifted_x = ops.roll(x, shift=[-self.shift_size, -self.shift_size], axis=[1, 2])
        else:
            shifted_x = x

        x_windows = window_partition(shifted_x, self.window_size)
        x_windows = ops.reshape(x_windows, (-1, self.window_size * self.window_size, channels))
        attn_windows = self.attn(x_windows, mask=self.attn_mask)

        attn_windows = ops.reshape(attn_windows,
                                   (-1, self.window_size, self.window_size, channels))
        shifted_x = window_reverse(attn_windows, self.window_size, height, width, channels)
        if self.shift_size > 0:
            x = ops.roll(shifted_x, shift=[self.shift_size, self.shift_size], axis=[1, 2])
        else:
            x = shifted_x

        x = ops.reshape(x, (-1, height * width, channels))
        x = self.drop_path(x, training=training)
        x = x_skip + x
        x_skip = x
        x = self.norm2(x)
        x = self.mlp(x)
        x = self.drop_path(x)
        return x_skip + x

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "dim": self.dim, "num_patch": list(self.num_patch), "num_heads": self.num_heads,
            "window_size": self.window_size, "shift_size": self.shift_size,
            "num_mlp": self.num_mlp, "qkv_bias": self.qkv_bias,
            "dropout_rate": self.dropout_rate,
        })
        return config


@register
class PatchExtract(layers.Layer):
    """keras.io: Image classification with Swin Transformers."""

    def __init__(self, patch_size: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = tuple(patch_size)
        self.patch_size_x = self.patch_size[0]
        self.patch_size_y = self.patch_size[1]

    def call(self, images: Any) -> Any:
        batch_size = ops.shape(images)[0]
        patches = ops.image.extract_patches(
            images,
            size=(self.patch_size_x, self.patch_size_y),
            strides=(self.patch_size_x, self.patch_size_y),
            dilation_rate=1,
            padding="valid",
        )
        patch_dim = patches.shape[-1]
        patch_num = patches.shape[1]
        return ops.reshape(patches, (batch_size, patch_num * patch_num, patch_dim))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"patch_size": list(self.patch_size)})
        return config


@register
class PatchEmbedding(layers.Layer):
    """keras.io: Image classification with Swin Transformers."""

    def __init__(self, num_patch: int, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_patch = num_patch
        self.embed_dim = embed_dim
        self.proj = layers.Dense(embed_dim)
        self.pos_embed = layers.Embedding(input_dim=num_patch, output_dim=embed_dim)

    def call(self, patch: Any) -> Any:
        pos = ops.arange(start=0, stop=self.num_patch)
        return self.proj(patch) + self.pos_embed(pos)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_patch": self.num_patch, "embed_dim": self.embed_dim})
        return config


@register
class PatchMerging(layers.Layer):
    """keras.io: Image classification with Swin Transformers."""

    def __init__(self, num_patch: Any, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_patch = tuple(num_patch)
        self.embed_dim = embed_dim
        self.linear_trans = layers.Dense(2 * embed_dim, use_bias=False)

    def call(self, x: Any) -> Any:
        height, width = self.num_patch
        _, _, channels = x.shape
        x = ops.reshape(x, (-1, height, width, channels))
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = ops.concatenate((x0, x1, x2, x3), axis=-1)
        x = ops.reshape(x, (-1, (height // 2) * (width // 2), 4 * channels))
        return self.linear_trans(x)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_patch": list(self.num_patch), "embed_dim": self.embed_dim})
        return config


@register
class MLPMixerLayer(layers.Layer):
    """keras.io: Image classification with modern MLP models (MLP-Mixer)."""

    def __init__(self, num_patches: int, hidden_units: int, dropout_rate: float,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.hidden_units = hidden_units
        self.dropout_rate = dropout_rate
        self.mlp1 = keras.Sequential([
            layers.Dense(units=num_patches, activation="gelu"),
            layers.Dense(units=num_patches),
            layers.Dropout(rate=dropout_rate),
        ])
        self.mlp2 = keras.Sequential([
            layers.Dense(units=num_patches, activation="gelu"),
            layers.Dense(units=hidden_units),
            layers.Dropout(rate=dropout_rate),
        ])
        self.normalize = layers.LayerNormalization(epsilon=1e-6)

    def build(self, input_shape: Any) -> None:
        return super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        # Apply layer normalization.
        x = self.normalize(inputs)
        # Transpose inputs from [num_batches, num_patches, hidden_units] to
        # [num_batches, hidden_units, num_patches].
        x_channels = ops.transpose(x, axes=(0, 2, 1))
        # Apply mlp1 on each channel independently.
        mlp1_outputs = self.mlp1(x_channels)
        mlp1_outputs = ops.transpose(mlp1_outputs, axes=(0, 2, 1))
        # Add skip connection.
        x = mlp1_outputs + inputs
        # Apply layer normalization (the same layer, as the example does).
        x_patches = self.normalize(x)
        # Apply mlp2 on each patch independtenly.
        mlp2_outputs = self.mlp2(x_patches)
        # Add skip connection.
        return x + mlp2_outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_patches": self.num_patches, "hidden_units": self.hidden_units,
                       "dropout_rate": self.dropout_rate})
        return config


@register
class FNetLayer(layers.Layer):
    """keras.io: Image classification with modern MLP models (FNet)."""

    def __init__(self, embedding_dim: int, dropout_rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dim = embedding_dim
        self.dropout_rate = dropout_rate
        self.ffn = keras.Sequential([
            layers.Dense(units=embedding_dim, activation="gelu"),
            layers.Dropout(rate=dropout_rate),
            layers.Dense(units=embedding_dim),
        ])
        self.normalize1 = layers.LayerNormalization(epsilon=1e-6)
        self.normalize2 = layers.LayerNormalization(epsilon=1e-6)

    def call(self, inputs: Any) -> Any:
        # Apply fourier transformations.
        real_part = inputs
        im_part = ops.zeros_like(inputs)
        x = ops.fft2((real_part, im_part))[0]
        # Add skip connection.
        x = x + inputs
        # Apply layer normalization.
        x = self.normalize1(x)
        # Apply Feedfowrad network.
        x_ffn = self.ffn(x)
        # Add skip connection.
        x = x + x_ffn
        # Apply layer normalization.
        return self.normalize2(x)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"embedding_dim": self.embedding_dim, "dropout_rate": self.dropout_rate})
        return config


@register
class GMLPLayer(layers.Layer):
    """keras.io: Image classification with modern MLP models (gMLP)."""

    def __init__(self, num_patches: int, embedding_dim: int, dropout_rate: float,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.embedding_dim = embedding_dim
        self.dropout_rate = dropout_rate
        self.channel_projection1 = keras.Sequential([
            layers.Dense(units=embedding_dim * 2, activation="gelu"),
            layers.Dropout(rate=dropout_rate),
        ])
        self.channel_projection2 = layers.Dense(units=embedding_dim)
        self.spatial_projection = layers.Dense(units=num_patches, bias_initializer="Ones")
        self.normalize1 = layers.LayerNormalization(epsilon=1e-6)
        self.normalize2 = layers.LayerNormalization(epsilon=1e-6)

    def spatial_gating_unit(self, x: Any) -> Any:
        # Split x along the channel dimensions.
        # Tensors u and v will in the shape of [batch_size, num_patchs, embedding_dim].
        u, v = ops.split(x, indices_or_sections=2, axis=2)
        # Apply layer normalization.
        v = self.normalize2(v)
        # Apply spatial projection.
        v_channels = ops.transpose(v, axes=(0, 2, 1))
        v_projected = self.spatial_projection(v_channels)
        v_projected = ops.transpose(v_projected, axes=(0, 2, 1))
        # Apply element-wise multiplication.
        return u * v_projected

    def call(self, inputs: Any) -> Any:
        # Apply layer normalization.
        x = self.normalize1(inputs)
        # Apply the first channel projection. x_projected shape: [batch_size, num_patches,
        # embedding_dim * 2].
        x_projected = self.channel_projection1(x)
        # Apply the spatial gating unit. x_spatial shape: [batch_size, num_patches,
        # embedding_dim].
        x_spatial = self.spatial_gating_unit(x_projected)
        # Apply the second channel projection.
        x_projected = self.channel_projection2(x_spatial)
        # Add skip connection.
        return x + x_projected

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_patches": self.num_patches, "embedding_dim": self.embedding_dim,
                       "dropout_rate": self.dropout_rate})
        return config


@register
class DepthToSpace(layers.Layer):
    """keras.io: Image Super-Resolution using an Efficient Sub-Pixel CNN."""

    def __init__(self, block_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_size = block_size

    def call(self, input: Any) -> Any:
        batch, height, width, depth = ops.shape(input)
        depth = depth // (self.block_size**2)

        x = ops.reshape(input, [batch, height, width, self.block_size, self.block_size, depth])
        x = ops.transpose(x, [0, 1, 3, 2, 4, 5])
        return ops.reshape(x, [batch, height * self.block_size, width * self.block_size,
                               depth])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"block_size": self.block_size})
        return config


@register
class OrthogonalRegularizer(keras.regularizers.Regularizer):
    """keras.io: Point cloud classification with PointNet."""

    def __init__(self, num_features: int, l2reg: float = 0.001) -> None:
        self.num_features = num_features
        self.l2reg = l2reg
        self.eye = ops.eye(num_features)

    def __call__(self, x: Any) -> Any:
        x = ops.reshape(x, (-1, self.num_features, self.num_features))
        xxt = ops.tensordot(x, x, axes=(2, 2))
        xxt = ops.reshape(xxt, (-1, self.num_features, self.num_features))
        return ops.sum(self.l2reg * ops.square(xxt - self.eye))

    def get_config(self) -> dict[str, Any]:
        # The example writes the key as "l2reg_strength", which its __init__ does not take.
        return {"num_features": self.num_features, "l2reg": self.l2reg}


@register
class TubeletEmbedding(layers.Layer):
    """keras.io: Video Vision Transformer."""

    def __init__(self, embed_dim: int, patch_size: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.projection = layers.Conv3D(
            filters=embed_dim,
            kernel_size=patch_size,
            strides=patch_size,
            padding="VALID",
        )
        self.flatten = layers.Reshape(target_shape=(-1, embed_dim))

    def call(self, videos: Any) -> Any:
        projected_patches = self.projection(videos)
        return self.flatten(projected_patches)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        patch = self.patch_size
        config.update({"embed_dim": self.embed_dim,
                       "patch_size": list(patch) if isinstance(patch, tuple | list) else patch})
        return config


@register
class PositionalEncoder(layers.Layer):
    """keras.io: Video Vision Transformer."""

    def __init__(self, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_dim = embed_dim

    def build(self, input_shape: Any) -> None:
        _, num_tokens, _ = input_shape
        self.position_embedding = layers.Embedding(input_dim=num_tokens,
                                                   output_dim=self.embed_dim)
        self.positions = ops.arange(0, num_tokens, 1)

    def call(self, encoded_tokens: Any) -> Any:
        # Encode the positions and add it to the encoded tokens
        encoded_positions = self.position_embedding(self.positions)
        return encoded_tokens + encoded_positions

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim})
        return config
