"""The layers of ablation's own: speed layers for the training path (the saved model
never contains them), and the two layers the token ops make (`ops.position_embedding`,
`ops.class_token`), which no Keras layer does. Those two are registered with Keras
(package "ablation"), so a saved model holding them loads once `ablation.layers` is
imported (`ablation.load_model` does it).

`FusedBatchNormalization` computes exactly what `keras.layers.BatchNormalization`
computes, but on the TensorFlow backend it runs TensorFlow's fused kernel
(FusedBatchNormV3, one op forward and one backward) instead of Keras 3's unfused
moments-plus-elementwise graph, which is where Keras 3 loses to Keras 2 on CPU
(docs/performance.md). Two details keep it identical:

* the fused kernel returns the Bessel-corrected batch variance; Keras updates its
  moving variance with the biased one, so the update rescales by (n - 1) / n;
* the normalisation itself uses the biased variance in both.

On other backends, or with masks, it is plain `BatchNormalization`.

`BiasAddConv2D` is `keras.layers.Conv2D` whose bias goes through `tf.nn.bias_add`
(one BiasAdd op and a fused BiasAddGrad) instead of Keras 3's reshape + broadcasting
add, whose gradient is a generic reduction.
"""

from __future__ import annotations

import keras


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization on TensorFlow's fused kernel (NHWC, axis -1)."""

    def call(self, inputs, training=None, mask=None):
        if (keras.backend.backend() != "tensorflow" or mask is not None or self.renorm
                or self.synchronized or len(inputs.shape) != 4 or self.axis not in (-1, 3)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(
            inputs, tf.float32)
        channels = inputs.shape[-1]  # no scale, no offset: the kernel's 1 and 0
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            y, mean, var_unbiased = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            shape = tf.shape(x)
            n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance = var_unbiased * tf.maximum(n - 1.0, 0.0) / n
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        return tf.cast(y, self.compute_dtype)


class BiasAddConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D with TensorFlow's BiasAdd (NHWC, no activation). A dilated
    conv stays Keras' (`tf.nn.convolution`, which dilates by space-to-batch): TensorFlow
    2.21's CPU kernel for a dilated Conv2D's filter gradient refuses dilation above 1."""

    def call(self, inputs):
        if (keras.backend.backend() != "tensorflow" or self.data_format != "channels_last"
                or not self.use_bias or self.activation is not keras.activations.linear
                or self.groups != 1 or max(self.dilation_rate) > 1):
            return super().call(inputs)
        import tensorflow as tf

        kernel = tf.cast(self.kernel, self.compute_dtype)
        y = tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper(),
                         dilations=self.dilation_rate, data_format="NHWC")
        return tf.nn.bias_add(y, tf.cast(self.bias, self.compute_dtype), data_format="NHWC")



@keras.saving.register_keras_serializable(package="ablation")
class PositionEmbedding(keras.layers.Layer):
    """x + a learned embedding of x's shape without the batch (ViT's position
    embedding), initialised N(0, 0.02²) as ViT's; its weight is never weight-decayed
    (`position_embedding`: ablation.recipe.optimizer.NOT_DECAYED)."""

    def build(self, input_shape):
        self.position_embedding = self.add_weight(
            shape=tuple(input_shape[1:]), name="position_embedding",
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x):
        return x + keras.ops.cast(self.position_embedding, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="ablation")
class ClassToken(keras.layers.Layer):
    """A learned token put before the tokens: (N, L, C) -> (N, L + 1, C), initialised at
    0 as ViT's; never weight-decayed (`class_token`)."""

    def build(self, input_shape):
        self.class_token = self.add_weight(shape=(1, 1, input_shape[-1]), name="class_token",
                                           initializer="zeros")

    def call(self, x):
        token = keras.ops.cast(self.class_token, x.dtype)
        token = keras.ops.broadcast_to(token, (keras.ops.shape(x)[0], 1, x.shape[-1]))
        return keras.ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])


@keras.saving.register_keras_serializable(package="ablation")
class LayerScale(keras.layers.Layer):
    """x times a learned per-channel scale started at `init` (Touvron et al. 2021, CaiT;
    ConvNeXt's 1e-6 on each residual branch): a deep net's blocks begin near the
    identity. Its weight is `gamma`, so it is not weight-decayed unless `bias_decay`
    (as normalisation scales are not)."""

    def __init__(self, init: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init = float(init)

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma",
                                     initializer=keras.initializers.Constant(self.init))

    def call(self, x):
        return x * keras.ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init": self.init}


@keras.saving.register_keras_serializable(package="ablation")
class ScaledBias(keras.layers.Layer):
    """x + scale · b, a learned per-channel offset stored divided by `scale`: with SGD its
    gradient steps are scale² times larger in the offset's own units, while an L2 on the
    stored value decays the offset as much per step as any other weight's. The batch
    norm op's offset under the recipe's `bn_bias_lr` (scale = sqrt of it: airbench's
    64x learning rate for BatchNorm biases, but not for their weight decay)."""

    def __init__(self, scale: float = 1.0, regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.regularizer = keras.regularizers.get(regularizer)

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), name="bias",
                                    initializer="zeros", regularizer=self.regularizer)

    def call(self, x):
        return x + keras.ops.cast(self.bias * self.scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale,
                "regularizer": keras.regularizers.serialize(self.regularizer)}


@keras.saving.register_keras_serializable(package="ablation")
class Whitening(keras.layers.Layer):
    """A `valid` k x k convolution whose 2·C·k² filters whiten the image's k x k patches
    (airbench's first layer): the eigenvectors of the patches' covariance scaled by
    1 / sqrt(eigenvalue + eps), and their negatives. The filters are a non-trainable
    weight, set from training images before the first step (`set_from`); the bias is
    trained."""

    def __init__(self, kernel_size: int = 2, eps: float = 5e-4, bias_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.eps = int(kernel_size), float(eps)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        k, c = self.kernel_size, input_shape[-1]
        self.filters = 2 * c * k * k
        self.kernel = self.add_weight(shape=(k, k, c, self.filters), name="kernel",
                                      initializer="zeros", trainable=False)
        self.bias = self.add_weight(shape=(self.filters,), name="bias", initializer="zeros",
                                    regularizer=self.bias_regularizer)

    def call(self, x):
        y = keras.ops.conv(x, keras.ops.cast(self.kernel, x.dtype), padding="valid")
        return y + keras.ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        k = self.kernel_size
        return (input_shape[0], input_shape[1] - k + 1, input_shape[2] - k + 1,
                2 * input_shape[-1] * k * k)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "eps": self.eps,
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer)}

    def set_from(self, images) -> None:
        """Set the filters from normalised images (N, H, W, C): every k x k patch, its
        covariance (float64), eigenvectors / sqrt(eigenvalues + eps), largest first."""
        import numpy as np

        k, c = self.kernel_size, images.shape[-1]
        cov, n = np.zeros((c * k * k, c * k * k)), 0
        for start in range(0, len(images), 500):  # a few hundred images' patches at a time
            x = np.asarray(images[start:start + 500], np.float64)
            # (N, H', W', C, k, k): each patch as PyTorch's unfold orders it, (C, kh, kw)
            flat = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
            flat = flat.reshape(-1, c * k * k)
            cov += flat.T @ flat
            n += len(flat)
        values, vectors = np.linalg.eigh(cov / n)
        order = np.argsort(values)[::-1]
        scaled = vectors[:, order].T / np.sqrt(values[order] + self.eps)[:, None]
        filters = scaled.reshape(-1, c, k, k)  # (C·k², C, k, k): PyTorch's (out, in, kh, kw)
        both = np.concatenate([filters, -filters])
        self.kernel.assign(both.transpose(2, 3, 1, 0).astype(np.float32))  # (kh, kw, in, out)

