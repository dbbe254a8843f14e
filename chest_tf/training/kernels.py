"""The TensorFlow kernels chest_tf plugs into its keras.ops-only models for training, in one call:
TF's fused BatchNorm (fused_batchnorm.py) and, on a CPU, tiny-map convolutions as one matrix
product (small_map_conv.py), self-attention's core with its backward products in the forms
XLA:CPU runs fast (attention_core.py), and LayerNorm and GELU as XLA-compiled kernels inside a
graph that runs without XLA (xla_elementwise.py). Each decides for itself whether it applies
(backend, device)."""

from chest_tf.training import attention_core, fused_batchnorm, small_map_conv, xla_elementwise


def install() -> None:
    fused_batchnorm.install()
    small_map_conv.install()
    attention_core.install()
    xla_elementwise.install()


def uninstall() -> None:
    fused_batchnorm.uninstall()
    small_map_conv.uninstall()
    attention_core.uninstall()
    xla_elementwise.uninstall()
