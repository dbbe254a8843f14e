"""Custom layers of the model zoo, and the few block functions the three families share.

Everything here uses keras.ops and keras.layers only (never tf.*), so the builders run on the
TensorFlow, JAX and PyTorch backends. Every layer implements ``get_config`` and is registered under
the ``chest_tf`` package, so a model saves as ``.keras`` and reloads with ``safe_mode=True``.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

# keras.applications' value: ImageNet BatchNorm statistics transfer unchanged with it.
BN_EPSILON = 1.001e-5
# Moving-average momentum 0.9 (PyTorch's 0.1): the inference statistics catch up within tens of
# steps, not hundreds, so short CPU runs and early epochs validate on settled statistics.
BN_MOMENTUM = 0.9

# Below this many pixels on the short side the MedMNIST stem (3x3 stride 1, no max-pool) is used:
# the ImageNet stem's 4x downsampling would leave a 28 px image with a 7x7 map before stage 2.
SMALL_STEM_BELOW = 64
STEMS = ("small", "imagenet")
MIN_SIZE_FOR_STEM = {"small": 8, "imagenet": 32}

_serializable = keras.saving.register_keras_serializable


def _register(table: dict, backend: str, kernel) -> None:
    """Put ``kernel`` in ``table`` under ``backend``, or remove the backend's entry (None)."""
    if kernel is None:
        table.pop(backend, None)
    else:
        table[backend] = kernel


# backend name -> fn(layer, inputs) -> outputs: a fused training-mode BatchNorm kernel that a
# backend-specific entry point (chest_tf.fused_batchnorm for TensorFlow) plugs in; see BatchNorm.
_FUSED_BATCHNORM_TRAINING = {}


def register_fused_batchnorm(backend: str, kernel) -> None:
    """Use ``kernel(layer, inputs)`` for BatchNorm in training mode on ``backend`` (None removes)."""
    _register(_FUSED_BATCHNORM_TRAINING, backend, kernel)


# backend name -> fn(layer, inputs, kernel) -> outputs, or None to decline: a convolution kernel for
# the shapes where the backend's own is slow (chest_tf.training.small_map_conv for TensorFlow on a
# CPU plugs one in); see Conv2D.
_CONV_KERNELS = {}


def register_conv_kernel(backend: str, kernel) -> None:
    """Offer ``kernel(layer, inputs, kernel_weights)`` to every chest_tf Conv2D on ``backend``
    (None removes). The kernel returns None for the shapes it does not handle."""
    _register(_CONV_KERNELS, backend, kernel)


# backend name -> fn(layer, query, key, value, training) -> outputs, or None to decline: a
# self-attention core (chest_tf.training.attention_core for TensorFlow on a CPU); see SelfAttention.
_ATTENTION_KERNELS = {}


def register_attention_kernel(backend: str, kernel) -> None:
    """Offer ``kernel(layer, query, key, value, training)`` to every chest_tf SelfAttention on
    ``backend`` for its unmasked attention without scores (None removes). The kernel returns
    None for what it does not handle."""
    _register(_ATTENTION_KERNELS, backend, kernel)


# backend name -> fn(inputs, gamma, beta, epsilon) -> outputs, or None to decline: LayerNorm over
# the last axis (chest_tf.training.xla_elementwise for TensorFlow on a CPU); see LayerNormalization.
_LAYER_NORM_KERNELS = {}
# backend name -> fn(inputs) -> outputs, or None to decline: exact GELU; see GELU.
_GELU_KERNELS = {}


def register_layer_norm_kernel(backend: str, kernel) -> None:
    """Offer ``kernel(inputs, gamma, beta, epsilon)`` to every chest_tf LayerNormalization with
    centre and scale over the last axis on ``backend`` (None removes)."""
    _register(_LAYER_NORM_KERNELS, backend, kernel)


def register_gelu_kernel(backend: str, kernel) -> None:
    """Offer ``kernel(inputs)`` to every chest_tf GELU on ``backend`` (None removes)."""
    _register(_GELU_KERNELS, backend, kernel)


def registered_kernels(backend: str) -> list[str]:
    """Names of the kernels registered for ``backend`` (what the layers may run instead of Keras')."""
    plugged = (_FUSED_BATCHNORM_TRAINING.get(backend), _CONV_KERNELS.get(backend), _ATTENTION_KERNELS.get(backend),
               _LAYER_NORM_KERNELS.get(backend), _GELU_KERNELS.get(backend))
    return [kernel.__name__ for kernel in plugged if kernel is not None]


@_serializable(package="chest_tf")
class GELU(layers.Layer):
    """Exact GELU, x * Phi(x) (``keras.activations.gelu`` with approximate=False). In training
    steps the kernel registered for the backend (``register_gelu_kernel``) runs it, unless it
    declines with None; inference always runs Keras' op, so predictions do not depend on which
    kernels a process has installed."""

    def call(self, inputs, training=None):
        plugged = _GELU_KERNELS.get(keras.backend.backend()) if training else None
        output = plugged(inputs) if plugged is not None else None
        return ops.gelu(inputs, approximate=False) if output is None else output

    def compute_output_shape(self, input_shape):
        return input_shape


@_serializable(package="chest_tf")
class LayerNormalization(layers.LayerNormalization):
    """keras.layers.LayerNormalization (same weights, arguments and outputs). In training steps,
    when it normalises over the last axis with centre and scale, the kernel registered for the
    backend (``register_layer_norm_kernel``) runs it unless it declines; otherwise, and always at
    inference (predictions independent of the installed kernels), Keras' own."""

    def call(self, inputs, training=None):
        plugged = _LAYER_NORM_KERNELS.get(keras.backend.backend()) if training else None
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        if (plugged is not None and self.center and self.scale and not self.rms_scaling and len(axes) == 1
                and axes[0] % len(inputs.shape) == len(inputs.shape) - 1):
            output = plugged(inputs, self.gamma, self.beta, self.epsilon)
            if output is not None:
                return ops.cast(output, self.compute_dtype)
        return super().call(inputs)


# ----------------------------------------------------------------------------------------------
# Argument checks shared by the builders
# ----------------------------------------------------------------------------------------------
def check_input_shape(input_shape) -> tuple[int, int, int]:
    """Return ``(H, W, C)`` as ints, or raise a ValueError saying what is wrong."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    return shape


def check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def check_rate(value, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a float in [0, 1), got {value!r}")
    return float(value)


def resolve_stem(stem: str | None, input_shape) -> str:
    """Pick the stem from the input size unless one is asked for; check the input is big enough."""
    height, width, _ = input_shape
    if stem is None:
        stem = "small" if min(height, width) < SMALL_STEM_BELOW else "imagenet"
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS} (or None to choose by input size), got {stem!r}")
    if min(height, width) < MIN_SIZE_FOR_STEM[stem]:
        raise ValueError(
            f"input {height}x{width} is too small for the {stem!r} stem "
            f"(needs at least {MIN_SIZE_FOR_STEM[stem]} px on each side)"
        )
    return stem


# ----------------------------------------------------------------------------------------------
# Block functions shared by ResNet and DenseNet
# ----------------------------------------------------------------------------------------------
def apply_stem(x, stem: str, filters: int = 64, pool_name: str = "pool1_pool"):
    """The network's first convolution, named ``conv1_*``.

    ``"imagenet"``: 7x7 stride-2 conv and 3x3 stride-2 max-pool, padded explicitly (as
    keras.applications does) so ImageNet weights give the same maps. ``"small"``: one 3x3
    stride-1 conv and no pooling, the MedMNIST recipe for 28 px images.
    """
    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = Conv2D(filters, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    else:
        x = Conv2D(filters, 3, padding="same", use_bias=False, name="conv1_conv")(x)
    x = BatchNorm(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    if stem == "imagenet":
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)  # after ReLU, so zeros never win the max
        x = layers.MaxPooling2D(3, strides=2, name=pool_name)(x)
    return x


def apply_classifier_head(x, num_classes: int, head_dropout: float = 0.0):
    """Global average pool, optional dropout, Dense -> logits; all float32 under mixed precision."""
    pool = layers.GlobalAveragePooling2D if len(x.shape) == 4 else layers.GlobalAveragePooling1D
    x = pool(name="avg_pool", dtype="float32")(x)
    return apply_logits(x, num_classes, head_dropout)


def apply_logits(x, num_classes: int, head_dropout: float = 0.0):
    """Optional dropout and the final Dense, named ``predictions``; float32, no activation."""
    if head_dropout > 0:
        x = layers.Dropout(head_dropout, name="head_dropout", dtype="float32")(x)
    return layers.Dense(num_classes, name="predictions", dtype="float32")(x)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
# What ImageNet checkpoints in keras.applications expect, per preprocessing mode.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MODES = ("caffe", "torch")


@_serializable(package="chest_tf")
class ImageNetInput(layers.Layer):
    """Turn our [-1, 1] images (1 or 3 channels, RGB) into what an ImageNet checkpoint was
    trained on: grayscale tiled to 3 channels, then

    - ``mode="caffe"`` (keras ResNet weights): RGB -> BGR, 0..255, minus the BGR mean;
    - ``mode="torch"`` (keras DenseNet weights): 0..1, minus the RGB mean, over the RGB std.

    Inside the model, so a saved model still takes the project's documented input range.
    """

    def __init__(self, mode: str = "torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in IMAGENET_MODES:
            raise ValueError(f"ImageNetInput mode must be one of {IMAGENET_MODES}, got {mode!r}")
        self.mode = mode
        # One affine map per output channel: y = x * scale + offset, x in [-1, 1].
        if mode == "caffe":
            self._scale = [127.5] * 3
            self._offset = [127.5 - m for m in CAFFE_MEAN_BGR]
        else:
            self._scale = [0.5 / s for s in IMAGENET_STD_RGB]
            self._offset = [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)]

    def build(self, input_shape):
        if input_shape[-1] not in (1, 3):
            raise ValueError(f"ImageNetInput takes 1 or 3 channels, got {input_shape[-1]}")

    def call(self, images):
        if images.shape[-1] == 1:
            images = ops.concatenate([images] * 3, axis=-1)
        elif self.mode == "caffe":
            images = ops.flip(images, axis=-1)
        scale = ops.convert_to_tensor(self._scale, dtype=images.dtype)
        offset = ops.convert_to_tensor(self._offset, dtype=images.dtype)
        return images * scale + offset

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@_serializable(package="chest_tf")
class BatchNorm(layers.BatchNormalization):
    """keras.layers.BatchNormalization with the zoo's epsilon and momentum, and one hook: in
    training, on a backend that registered a fused kernel (``register_fused_batchnorm``), the
    batch statistics, normalisation and moving-average update run as that one kernel.

    Why: Keras computes training-mode BatchNorm as separate moments, normalise and update ops,
    each a pass over the activation and each differentiated op by op. On a 2-core CPU that is a
    sixth of a ResNet-18 step; TensorFlow's FusedBatchNormV3 does it in one pass each way
    (pipelines/bench_train.py measures both). The layer itself stays keras.ops-only: without a
    registered kernel (JAX, PyTorch, or a plain import) it is exactly the Keras layer, and saved
    weights and inference are identical either way.
    """

    def __init__(self, epsilon: float = BN_EPSILON, momentum: float = BN_MOMENTUM, **kwargs):
        super().__init__(epsilon=epsilon, momentum=momentum, **kwargs)

    def _fused_kernel(self, inputs, training, mask):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return None
        if len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return None
        return _FUSED_BATCHNORM_TRAINING.get(keras.backend.backend())

    def call(self, inputs, training=None, mask=None):
        kernel = self._fused_kernel(inputs, training, mask)
        if kernel is None:
            return super().call(inputs, training=training, mask=mask)
        return kernel(self, inputs)


@_serializable(package="chest_tf")
class Conv2D(layers.Conv2D):
    """keras.layers.Conv2D with one hook: on a backend that registered a convolution kernel
    (``register_conv_kernel``), the kernel may compute the convolution instead, for the shapes it
    is faster on.

    Why: TensorFlow's oneDNN convolution is about 3x slower on 2x2 and 4x4 maps (the CNNs' last
    stages) than exact rewrites as matrix products (chest_tf.training.small_map_conv). The
    layer itself stays keras.ops-only: without a registered kernel it is exactly the Keras layer,
    and its weights and outputs are the same either way.
    """

    def convolution_op(self, inputs, kernel):
        plugged = _CONV_KERNELS.get(keras.backend.backend())
        outputs = None if plugged is None else plugged(self, inputs, kernel)
        return super().convolution_op(inputs, kernel) if outputs is None else outputs


@_serializable(package="chest_tf")
class DropPath(layers.Layer):
    """Stochastic depth: in training, drop the whole residual branch for a random subset of the
    batch (probability ``rate``) and rescale the rest by ``1 / (1 - rate)``; identity otherwise."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate(rate, "DropPath rate")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=x.dtype)
        mask = ops.floor(keep + noise)  # 1 with probability `keep`, else 0
        return x * mask / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@_serializable(package="chest_tf")
class ClassToken(layers.Layer):
    """Prepend one learnable token to a (B, N, D) sequence -> (B, N + 1, D)."""

    def build(self, input_shape):
        self.token = self.add_weight(
            name="token", shape=(1, 1, input_shape[-1]), initializer=keras.initializers.Zeros()
        )

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        token = ops.broadcast_to(ops.cast(self.token, tokens.dtype), (batch, 1, tokens.shape[-1]))
        return ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])


@_serializable(package="chest_tf")
class PositionEmbedding(layers.Layer):
    """Add a learnable embedding per position to a (B, T, D) sequence (fixed T)."""

    def __init__(self, initializer_stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = initializer_stddev

    def build(self, input_shape):
        if input_shape[1] is None:
            raise ValueError("PositionEmbedding needs a fixed sequence length")
        self.embedding = self.add_weight(
            name="embedding",
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
        )

    def call(self, tokens):
        return tokens + ops.cast(self.embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "initializer_stddev": self.initializer_stddev}


@_serializable(package="chest_tf")
class ShiftedImages(layers.Layer):
    """The "S" of shifted patch tokenization (Lee et al. 2021): concatenate the image with four
    copies shifted by ``shift`` pixels diagonally (zero-filled, i.e. mid-grey in [-1, 1]), so
    each patch also sees its neighbours' pixels -> (B, H, W, 5C)."""

    DIRECTIONS = ((-1, -1), (-1, 1), (1, -1), (1, 1))

    def __init__(self, shift: int, **kwargs):
        super().__init__(**kwargs)
        self.shift = check_positive_int(shift, "ShiftedImages shift")

    def call(self, images):
        s = self.shift
        height, width = images.shape[1], images.shape[2]
        padded = ops.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
        # out[i, j] = image[i - dy*s, j - dx*s]  <=>  padded[i + s - dy*s, j + s - dx*s]
        shifted = [
            padded[:, s - dy * s : s - dy * s + height, s - dx * s : s - dx * s + width, :]
            for dy, dx in self.DIRECTIONS
        ]
        return ops.concatenate([images, *shifted], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 5 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}


@_serializable(package="chest_tf")
class PatchSplit(layers.Layer):
    """Cut (B, H, W, C) images into non-overlapping p x p patches, flattened row-major:
    -> (B, (H/p) * (W/p), p * p * C). H and W must be multiples of p."""

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = check_positive_int(patch_size, "patch_size")

    def build(self, input_shape):
        p = self.patch_size
        if input_shape[1] % p or input_shape[2] % p:
            raise ValueError(f"PatchSplit: {input_shape[1]}x{input_shape[2]} is not a multiple of {p}")

    def call(self, images):
        p = self.patch_size
        _, height, width, channels = images.shape
        grid = ops.reshape(images, (-1, height // p, p, width // p, p, channels))
        grid = ops.transpose(grid, (0, 1, 3, 2, 4, 5))
        return ops.reshape(grid, (-1, (height // p) * (width // p), p * p * channels))

    def compute_output_shape(self, input_shape):
        _, height, width, channels = input_shape
        p = self.patch_size
        return (input_shape[0], (height // p) * (width // p), p * p * channels)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@_serializable(package="chest_tf")
class SelectToken(layers.Layer):
    """Take one token of a (B, T, D) sequence -> (B, D), or (B, 1, D) with ``keepdims=True``; the
    class-token pooling of ViT, and the class token's row into its last block."""

    def __init__(self, index: int = 0, keepdims: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.index = index
        self.keepdims = bool(keepdims)

    def call(self, tokens):
        token = tokens[:, self.index, :]
        return ops.expand_dims(token, 1) if self.keepdims else token

    def compute_output_shape(self, input_shape):
        if self.keepdims:
            return (input_shape[0], 1, input_shape[2])
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "index": self.index, "keepdims": self.keepdims}


@_serializable(package="chest_tf")
class SelfAttention(layers.MultiHeadAttention):
    """keras.layers.MultiHeadAttention (same weights, arguments, outputs and
    ``return_attention_scores``) whose Q/K/V and output projections multiply 2-D rows.

    Why: Keras' projections are ``EinsumDense`` ("abc,cde->abde"); on TensorFlow that becomes a
    3-D by 2-D matmul whose kernel gradient is one small product per image plus a sum over the
    batch (128 (192 x 50) x (50 x 192) products in a ViT-Tiny step at 28 px, 15% of its
    matrix-product time). Reshaped to (batch * tokens, width) rows, each projection and its
    gradients are single matrix products. Masks, the gated variant and inputs other than
    (batch, tokens, width) take Keras' own path.
    """

    def call(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None,
             attention_mask=None, return_attention_scores=False, training=None, use_causal_mask=False):
        masked = any(m is not None for m in (query_mask, value_mask, key_mask, attention_mask)) or use_causal_mask
        masked = masked or any(getattr(t, "_keras_mask", None) is not None for t in (query, value, key))
        # 2-D rows need (B, T, C) inputs and (C, heads, head_dim) / (heads, head_dim, C) kernels.
        plain = len(query.shape) == 3 and all(len(d.kernel.shape) == 3 for d in (
            self._query_dense, self._key_dense, self._value_dense, self._output_dense))
        if masked or self._use_gate or not plain:
            return super().call(query, value, key, query_mask, value_mask, key_mask, attention_mask,
                                return_attention_scores, training, use_causal_mask)
        key = value if key is None else key
        query, key, value = (_project_rows(dense, x, 1) for dense, x in
                             ((self._query_dense, query), (self._key_dense, key), (self._value_dense, value)))
        output, scores = self._compute_attention(query, key, value, None, training, return_attention_scores)
        output = _project_rows(self._output_dense, output, 2)
        return (output, scores) if return_attention_scores else output

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, **kwargs):
        # A registered kernel may compute the unmasked core without scores (the training path);
        # explain's scores, masks (LocalitySelfAttention) and whatever it declines run Keras'.
        plugged = _ATTENTION_KERNELS.get(keras.backend.backend())
        if plugged is not None and attention_mask is None and not return_attention_scores and not kwargs:
            output = plugged(self, query, key, value, training)
            if output is not None:
                return output, None
        return super()._compute_attention(query, key, value, attention_mask, training, return_attention_scores,
                                          **kwargs)


def _project_rows(dense, x, input_axes: int):
    """``dense`` (an EinsumDense over the last ``input_axes`` axes of ``x``) as one 2-D product:
    (B, T, C) -> (B, T, heads, head_dim) with input_axes=1, (B, T, heads, head_dim) -> (B, T, C)
    with input_axes=2."""
    inputs = math.prod(dense.kernel.shape[:input_axes])
    y = ops.matmul(ops.reshape(x, (-1, inputs)), ops.cast(ops.reshape(dense.kernel, (inputs, -1)), x.dtype))
    if dense.bias is not None:
        y = y + ops.cast(ops.reshape(dense.bias, (-1,)), x.dtype)
    return ops.reshape(y, (-1, x.shape[1], *dense.kernel.shape[input_axes:]))


@_serializable(package="chest_tf")
class LocalitySelfAttention(SelfAttention):
    """Multi-head self-attention with locality self-attention (Lee et al. 2021): a learnable
    softmax temperature (initialised at sqrt(key_dim), the usual fixed scale) and the diagonal
    of the score matrix masked out, so each token must attend to the others. Everything else,
    including ``return_attention_scores``, is SelfAttention (keras.layers.MultiHeadAttention)."""

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            initializer=keras.initializers.Constant(math.sqrt(float(self.key_dim))),
        )

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, **kwargs):
        # The parent multiplies the query by 1/sqrt(key_dim); pre-scaling by sqrt(key_dim)/T
        # makes the net scale 1/T with T learnable.
        rescale = ops.cast(math.sqrt(float(self.key_dim)), query.dtype) / ops.cast(self.temperature, query.dtype)
        query = query * rescale
        length_q, length_k = query.shape[1], key.shape[1]
        off_diagonal = ops.logical_not(ops.eye(length_q, length_k, dtype="bool"))
        if attention_mask is None:
            attention_mask = off_diagonal
        else:
            attention_mask = ops.logical_and(ops.cast(attention_mask, "bool"), off_diagonal)
        return super()._compute_attention(
            query, key, value, attention_mask, training, return_attention_scores, **kwargs
        )
