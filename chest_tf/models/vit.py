"""Vision Transformers (tiny / small / base) with the small-data options of Lee et al. 2021.

Layout (names in brackets):
  images -> patch embedding [patch_embed_conv + patch_embed_tokens; or with spt=True:
  spt_shift, spt_patches, spt_norm, spt_projection] -> class token [class_token] (pool="cls")
  -> position embedding [pos_embed] -> dropout [embed_dropout]
  -> depth x pre-norm encoder block [encoder_block{i}_*] -> LayerNorm [encoder_norm]
  (pool="cls": the last block computes the class token's output only
  [encoder_block{depth}_query_token, _class_token]; see build_vit's ``full_last_block``)
  -> class token [cls_pool] or mean of tokens [avg_pool] -> Dense [predictions] (float32 logits).

Attention is fused: every block's attention layer ``encoder_block{i}_attn`` is called without
``return_attention_scores``, so Keras computes it with ``keras.ops.dot_product_attention`` (the
backend's fused kernel: cuDNN flash attention on JAX GPUs) and no (B, heads, T, T) probabilities
are kept for training or serving. Explain asks for them: ``vit_with_attention(model)`` re-traces
the same layers (shared weights) with ``return_attention_scores=True`` (the unfused path), so
rollout and its gradients work on a trained model and on a reloaded .keras file alike. Models
saved before the attention was fused (their graph asks for the scores) load and explain as before.

Parameter count at 224 px, 3 channels, 1000 classes, patch 16, class token: ViT-B/16 86,567,656
(the reference implementation's count).
"""

from __future__ import annotations

import logging

import keras
from keras import layers

from chest_tf.models.layers import (
    GELU,
    ClassToken,
    DropPath,
    LayerNormalization,
    LocalitySelfAttention,
    PatchSplit,
    PositionEmbedding,
    SelectToken,
    SelfAttention,
    ShiftedImages,
    apply_logits,
    check_input_shape,
    check_positive_int,
    check_rate,
)

log = logging.getLogger(__name__)

VIT_SIZES = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},
    "small": {"dim": 384, "depth": 12, "heads": 6},
    "base": {"dim": 768, "depth": 12, "heads": 12},
}
MLP_RATIO = 4
LN_EPSILON = 1e-6
POOLS = ("cls", "gap")
ATTENTION_LAYER = "encoder_block{}_attn"


def default_patch_size(input_shape) -> int:
    """4 px patches up to 32 px images (7x7 tokens at 28 px), 8 up to 64, 16 above (the ViT-B/16
    setting: 8x8 tokens at 128 px, 14x14 at 224 px)."""
    side = min(input_shape[0], input_shape[1])
    if side <= 32:
        return 4
    if side <= 64:
        return 8
    return 16


def apply_patch_embedding(x, dim: int, patch_size: int, spt: bool):
    """Images -> (B, N, dim) patch tokens.

    Plain: Conv2D with kernel = stride = patch size (a linear map of each flattened patch).
    ``spt``: shifted patch tokenization -- image plus four diagonal half-patch shifts, cut into
    patches, LayerNorm over each flattened patch, then a linear projection.
    """
    if spt:
        x = ShiftedImages(max(1, patch_size // 2), name="spt_shift")(x)
        x = PatchSplit(patch_size, name="spt_patches")(x)
        x = LayerNormalization(epsilon=LN_EPSILON, name="spt_norm")(x)
        return layers.Dense(dim, name="spt_projection")(x)
    x = layers.Conv2D(dim, patch_size, strides=patch_size, name="patch_embed_conv")(x)
    return layers.Reshape((x.shape[1] * x.shape[2], dim), name="patch_embed_tokens")(x)


def apply_mlp(x, hidden_dim: int, dropout: float, name: str):
    """Dense(hidden, GELU) -> dropout -> Dense(back to width) -> dropout."""
    dim = x.shape[-1]
    x = layers.Dense(hidden_dim, name=f"{name}_dense1")(x)
    x = GELU(name=f"{name}_gelu")(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout1")(x)
    x = layers.Dense(dim, name=f"{name}_dense2")(x)
    return layers.Dropout(dropout, name=f"{name}_dropout2")(x)


def apply_encoder_block(x, heads: int, mlp_dim: int, dropout: float, attention_dropout: float,
                        drop_path: float, lsa: bool, name: str, class_token_only: bool = False):
    """Pre-norm transformer block: x + DropPath(MHA(LN(x))), then x + DropPath(MLP(LN(x))).

    The attention layer ``{name}_attn`` is called without its scores (the fused path); explain
    re-traces it with them (``vit_with_attention``). ``class_token_only``: only the class token
    (index 0) queries, and only its row goes on through the residual and MLP -> (B, 1, C); every
    token is still a key and value. The same function of the same weights for that row.
    """
    dim = x.shape[-1]
    attention_cls = LocalitySelfAttention if lsa else SelfAttention
    y = LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_ln1")(x)
    query = y
    if class_token_only:
        query = SelectToken(0, keepdims=True, name=f"{name}_query_token")(y)
        x = SelectToken(0, keepdims=True, name=f"{name}_class_token")(x)
    y = attention_cls(num_heads=heads, key_dim=dim // heads, dropout=attention_dropout, name=f"{name}_attn")(query, y)
    y = layers.Dropout(dropout, name=f"{name}_attn_dropout")(y)
    y = DropPath(drop_path, name=f"{name}_drop_path1")(y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_ln2")(x)
    y = apply_mlp(y, mlp_dim, dropout, name=f"{name}_mlp")
    y = DropPath(drop_path, name=f"{name}_drop_path2")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


def build_vit(
    input_shape=(28, 28, 1),
    num_classes: int = 14,
    *,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    mlp_dim: int | None = None,
    patch_size: int | None = None,
    pool: str = "cls",
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    drop_path_rate: float = 0.0,
    head_dropout: float = 0.0,
    spt: bool = False,
    lsa: bool = False,
    full_last_block: bool = False,
    name: str = "vit",
) -> keras.Model:
    """Build a ViT returning logits of shape (B, num_classes).

    Args:
        input_shape: (H, W, C) of float32 images in [-1, 1]; H and W multiples of patch_size.
        dim, depth, heads: width, number of blocks, attention heads (dim % heads == 0).
        mlp_dim: hidden width of each MLP (default 4 * dim).
        patch_size: default from the input size (see ``default_patch_size``).
        pool: "cls" (class token) or "gap" (mean of the patch tokens, no class token).
        dropout: after the embeddings, attention output and MLP layers.
        attention_dropout: on the attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 (first block) to this (last).
        head_dropout: before the final Dense.
        spt: shifted patch tokenization; lsa: locality self-attention (Lee et al. 2021).
        full_last_block: with pool="cls", the head reads only the class token, so by default the
            last block computes only that token's output (its attention query, residual and MLP;
            all tokens remain keys and values): the same logits and gradients for 7-8% fewer
            FLOPs (ViT-Tiny and ViT-Small at 28 and 64 px). True computes every token's output
            there too (for features of the patch tokens after the last block). Ignored with
            pool="gap".
    """
    input_shape = check_input_shape(input_shape)
    check_positive_int(num_classes, "num_classes")
    for value, what in ((dim, "dim"), (depth, "depth"), (heads, "heads")):
        check_positive_int(value, what)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    mlp_dim = check_positive_int(mlp_dim if mlp_dim is not None else MLP_RATIO * dim, "mlp_dim")
    patch_size = check_positive_int(
        patch_size if patch_size is not None else default_patch_size(input_shape), "patch_size"
    )
    height, width, _ = input_shape
    if height < patch_size or width < patch_size or height % patch_size or width % patch_size:
        raise ValueError(
            f"input {height}x{width} does not split into {patch_size}x{patch_size} patches: "
            f"height and width must be multiples of patch_size (pass patch_size=... to change it)"
        )
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    dropout = check_rate(dropout, "dropout")
    attention_dropout = check_rate(attention_dropout, "attention_dropout")
    drop_path_rate = check_rate(drop_path_rate, "drop_path_rate")
    head_dropout = check_rate(head_dropout, "head_dropout")
    num_tokens = (height // patch_size) * (width // patch_size) + (pool == "cls")
    log.info(
        "building %s: input_shape=%s num_classes=%d dim=%d depth=%d heads=%d mlp_dim=%d "
        "patch_size=%d tokens=%d pool=%s dropout=%s attention_dropout=%s drop_path_rate=%s "
        "head_dropout=%s spt=%s lsa=%s full_last_block=%s",
        name, input_shape, num_classes, dim, depth, heads, mlp_dim, patch_size, num_tokens, pool,
        dropout, attention_dropout, drop_path_rate, head_dropout, spt, lsa, full_last_block,
    )

    inputs = keras.Input(shape=input_shape, name="images")
    x = apply_patch_embedding(inputs, dim, patch_size, bool(spt))
    if pool == "cls":
        x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="pos_embed")(x)
    x = layers.Dropout(dropout, name="embed_dropout")(x)
    for i in range(1, depth + 1):
        rate = drop_path_rate * (i - 1) / max(depth - 1, 1)
        class_token_only = i == depth and pool == "cls" and not full_last_block
        x = apply_encoder_block(
            x, heads, mlp_dim, dropout, attention_dropout, rate, bool(lsa), f"encoder_block{i}",
            class_token_only,
        )
    x = LayerNormalization(epsilon=LN_EPSILON, name="encoder_norm")(x)
    if pool == "cls":
        x = SelectToken(0, name="cls_pool", dtype="float32")(x)
    else:
        x = layers.GlobalAveragePooling1D(name="avg_pool", dtype="float32")(x)
    logits = apply_logits(x, num_classes, head_dropout)
    return keras.Model(inputs, logits, name=name)


def vit_attention_layer_names(model: keras.Model) -> list[str]:
    """Names of the attention layers of a ViT built here, in block order."""
    names = []
    while True:
        name = ATTENTION_LAYER.format(len(names) + 1)
        try:
            model.get_layer(name)
        except ValueError:
            break
        names.append(name)
    if not names:
        raise ValueError(f"model {model.name!r} has no layer {ATTENTION_LAYER.format(1)!r}: not a ViT from chest_tf")
    return names


class AttentionWithScores(layers.Layer):
    """Explain's view of a fused self-attention layer: calls it with ``return_attention_scores=True``
    and shares its weights. A wrapper rather than a second call of the same layer, because a Keras
    functional graph takes a layer's number of outputs from its first call. Never saved."""

    def __init__(self, attention: layers.MultiHeadAttention, **kwargs):
        super().__init__(name=f"{attention.name}_with_scores", dtype=attention.dtype_policy, **kwargs)
        self.attention = attention

    def call(self, query, value, **kwargs):
        return self.attention(query, value, return_attention_scores=True, **kwargs)


def vit_with_attention(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers and weights that maps images to
    ``[scores_block1, ..., scores_blockN, logits]``: each scores tensor (B, heads, T, T) with rows
    summing to 1 (T includes the class token at index 0 when pool="cls"; a last block that
    queries with the class token only gives (B, heads, 1, T), its row), and the logits computed
    through those scores, so gradients with respect to them are defined (gradient-weighted
    rollout). The attention layers are re-called with ``return_attention_scores=True``, the
    unfused path; ``model`` itself keeps its fused graph."""
    names = set(vit_attention_layer_names(model))
    scores = []

    def call_keeping_scores(layer, *args, **kwargs):
        if layer.name not in names:
            return layer(*args, **kwargs)
        if kwargs.get("return_attention_scores"):  # a model saved before the attention was fused
            outputs = layer(*args, **kwargs)
            scores.append(outputs[1])
            return outputs
        output, probabilities = AttentionWithScores(layer)(*args, **kwargs)
        scores.append(probabilities)
        return output

    traced = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call_keeping_scores)
    return keras.Model(traced.input, [*scores, traced.outputs[0]], name=f"{model.name}_with_attention")


def vit_attention_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s weights that maps images to a list with one attention-score
    tensor per block, each (B, heads, T, T) with rows summing to 1 (T includes the class token
    at index 0 when pool="cls"; the last block's may be its class-token row, (B, heads, 1, T)).
    Input for attention rollout."""
    traced = vit_with_attention(model)
    return keras.Model(traced.input, traced.outputs[:-1], name=f"{model.name}_attention")
