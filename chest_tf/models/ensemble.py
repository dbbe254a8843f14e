"""Deep ensembles (Lakshminarayanan et al., NeurIPS 2017) as one Keras model.

``build_ensemble(members, activation)`` averages the members' probabilities and returns the mean
as logits (``log p - log(1 - p)`` for sigmoid outputs, ``log p`` for softmax), so an ensemble is a
logits model like any other: evaluate, calibration and export treat it as one model. The
members stay inside as named sub-models (``member0``, ``member1``, ...), so the serving
computation can also report their spread.
"""
from __future__ import annotations

import keras
from keras import ops

MEAN_LAYER = "ensemble_mean"
_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="chest_tf")
class ProbabilityAverage(keras.layers.Layer):
    """Members' logits (a list of (B, K)) -> the logits of their mean probability (B, K)."""

    def __init__(self, activation: str = "sigmoid", **kwargs):
        super().__init__(**kwargs)
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be sigmoid or softmax, got {activation!r}")
        self.activation = activation

    def member_probabilities(self, member_logits):
        # flatten: a reloaded model may hand the list over nested one level deeper
        stacked = ops.stack([ops.cast(z, "float32") for z in keras.tree.flatten(member_logits)], axis=0)
        return ops.sigmoid(stacked) if self.activation == "sigmoid" else ops.softmax(stacked, axis=-1)

    def call(self, member_logits):
        mean = ops.clip(ops.mean(self.member_probabilities(member_logits), axis=0), _EPSILON, 1.0 - _EPSILON)
        if self.activation == "sigmoid":
            return ops.log(mean) - ops.log1p(-mean)
        return ops.log(mean)

    def compute_output_shape(self, input_shape):
        while isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


def build_ensemble(members: list[keras.Model], activation: str, name: str = "ensemble") -> keras.Model:
    """One model averaging ``members`` (same input and output shapes) at the probability level."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    shapes = {(tuple(m.input_shape[1:]), tuple(m.output_shape[1:])) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on input/output shapes: {sorted(shapes)}")
    inputs = keras.Input(shape=members[0].input_shape[1:], name="images")
    # Each member under a name of its own (its layers are shared, not copied).
    renamed = [keras.Model(m.inputs, m.outputs, name=f"member{i}") for i, m in enumerate(members)]
    outputs = ProbabilityAverage(activation, name=MEAN_LAYER, dtype="float32")([m(inputs) for m in renamed])
    return keras.Model(inputs, outputs, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The members of an ensemble built here, in order; ``[model]`` for any other model."""
    layer_names = [layer.name for layer in model.layers]
    if MEAN_LAYER not in layer_names:
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member")]


def mean_layer(model: keras.Model) -> ProbabilityAverage | None:
    try:
        return model.get_layer(MEAN_LAYER)
    except ValueError:
        return None
