"""Analytic FLOP counts from layer shapes (backend-agnostic; no profiler)."""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers


@dataclass(frozen=True)
class MatrixProduct:
    """One matrix product of a forward pass for ONE image: ``count`` independent
    (rows x inner) @ (inner x cols) products (``count`` = heads for attention's score and value
    products, 1 otherwise)."""

    layer: str
    role: str
    rows: int
    inner: int
    cols: int
    count: int = 1

    @property
    def macs(self) -> int:
        return self.count * self.rows * self.inner * self.cols


def matrix_products(model: keras.Model) -> list[MatrixProduct]:
    """The forward pass's matrix products per image: every Dense (rows = positions) and every
    attention layer's Q/K/V/output projections and its two per-head products (queries x keys;
    queries may be fewer than keys: a ViT's last block queries with its class token only).
    Convolutions are not listed."""
    products = []
    for layer in model.layers:
        if isinstance(layer, layers.MultiHeadAttention):
            # Called as (query, value[, key]).
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            heads, q_len, k_len = layer.num_heads, inputs[0].shape[1], inputs[-1].shape[1]
            q_kernel = layer.query_dense.kernel.shape  # (in, heads, key_dim)
            k_kernel = layer.key_dense.kernel.shape
            v_kernel = layer.value_dense.kernel.shape
            o_kernel = layer.output_dense.kernel.shape  # (heads, value_dim, out)
            key_dim, value_dim = int(q_kernel[-1]), int(v_kernel[-1])
            products += [
                MatrixProduct(layer.name, "query", q_len, int(q_kernel[0]), _prod(q_kernel[1:])),
                MatrixProduct(layer.name, "key", k_len, int(k_kernel[0]), _prod(k_kernel[1:])),
                MatrixProduct(layer.name, "value", k_len, int(v_kernel[0]), _prod(v_kernel[1:])),
                MatrixProduct(layer.name, "scores", q_len, key_dim, k_len, heads),
                MatrixProduct(layer.name, "weighted values", q_len, k_len, value_dim, heads),
                MatrixProduct(layer.name, "output", q_len, _prod(o_kernel[:2]), int(o_kernel[-1])),
            ]
        elif isinstance(layer, layers.Dense):
            products.append(MatrixProduct(layer.name, "dense", _prod(layer.output.shape[1:-1]),
                                          int(layer.kernel.shape[0]), int(layer.kernel.shape[1])))
    return products


def estimate_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass for ONE image, counted analytically from
    layer shapes: 2 x multiply-adds of Conv2D and of ``matrix_products`` (Dense and attention).
    BatchNorm, activations, pooling and additions are not counted (well under 1% for these
    architectures). Backend-agnostic (no profiler)."""
    conv_macs = sum(_prod(layer.output.shape[1:3]) * _prod(layer.kernel.shape)  # (B, h, w, filters)
                    for layer in model.layers if isinstance(layer, layers.Conv2D))
    return int(2 * (conv_macs + sum(product.macs for product in matrix_products(model))))


def _prod(shape) -> int:
    result = 1
    for d in shape:
        result *= int(d)
    return result
