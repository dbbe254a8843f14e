"""Analytic FLOP counts from layer shapes (backend-agnostic; no profiler)."""
from __future__ import annotations

import keras
from keras import layers


def estimate_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass for ONE image, counted analytically from
    layer shapes: 2 x multiply-adds of Conv2D, Dense and attention (Q/K/V/output projections and
    the two score matmuls, queries x keys). BatchNorm, activations, pooling and additions are not
    counted (well under 1% for these architectures). Backend-agnostic (no profiler)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.MultiHeadAttention):
            # Called as (query, value[, key]); queries may be fewer than keys (a ViT's last block
            # queries with its class token only).
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            heads, q_len, k_len = layer.num_heads, inputs[0].shape[1], inputs[-1].shape[1]
            q_kernel = layer.query_dense.kernel.shape  # (in, heads, key_dim)
            k_kernel = layer.key_dense.kernel.shape
            v_kernel = layer.value_dense.kernel.shape
            o_kernel = layer.output_dense.kernel.shape  # (heads, value_dim, out)
            macs = (q_len * _prod(q_kernel) + k_len * _prod(k_kernel) + k_len * _prod(v_kernel)
                    + q_len * _prod(o_kernel)
                    + heads * q_len * k_len * (q_kernel[-1] + v_kernel[-1]))
        elif isinstance(layer, layers.Conv2D):
            out = layer.output.shape  # (B, h, w, filters)
            macs = out[1] * out[2] * _prod(layer.kernel.shape)
        elif isinstance(layer, layers.Dense):
            positions = _prod(layer.output.shape[1:-1])
            macs = positions * _prod(layer.kernel.shape)
        else:
            continue
        total += 2 * macs
    return int(total)


def _prod(shape) -> int:
    result = 1
    for d in shape:
        result *= int(d)
    return result
