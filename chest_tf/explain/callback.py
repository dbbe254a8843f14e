"""``ExplanationPanel``: a Keras callback that writes heatmap overlays of fixed validation images
to TensorBoard during training (``chest_tf.training`` adds it when ``explain_every`` is set)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chest_tf.explain.methods import Explainer
from chest_tf.explain.render import blend_overlay, resize_heatmap


class ExplanationPanel(keras.callbacks.Callback):
    """Keras callback: after every ``every`` epochs, overlays for a fixed set of (validation)
    images go to TensorBoard as one image grid, ``explanations/<method>`` under ``log_dir``.

        panel = ExplanationPanel(classifier, val_images[:8], run_dir / "tensorboard" / "validation",
                                 targets=[...], label_names=info.labels)
        fit_model.fit(..., callbacks=[..., panel])

    ``classifier`` is the model whose weights are being trained (training fits the classifier
    wrapped with augmentation, so the callback's own ``self.model`` is not necessarily it).
    ``images``: float32 (N, H, W, C) in [-1, 1]; ``targets``: output index per image (default:
    each image's most probable output at that epoch).
    """

    def __init__(self, classifier, images, log_dir, *, targets=None, method: str | None = None,
                 every: int = 1, label_names: Sequence[str] | None = None, scale: int | None = None):
        super().__init__()
        self.classifier, self.images = classifier, np.asarray(images, np.float32)
        self.log_dir, self.targets, self.method_name = Path(log_dir), targets, method
        self.every, self.label_names = max(1, int(every)), label_names
        self.scale = scale or max(1, 112 // self.images.shape[1])
        self._explainer = None
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return

        if self._explainer is None:
            self._explainer = Explainer(self.classifier, self.method_name)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        grid = self.render()
        with self._writer.as_default():
            tf.summary.image(f"explanations/{self._explainer.method}", grid[None], step=epoch)
            tf.summary.text(f"explanations/{self._explainer.method}_targets", self.caption(), step=epoch)
        self._writer.flush()

    def render(self) -> np.ndarray:
        """The (rows*H*s, cols*W*s, 3) float grid in [0, 1] written at each logged epoch: the
        images (top row) and the overlays (bottom row)."""
        explainer = self._explainer or Explainer(self.classifier, self.method_name)
        self._explainer = explainer
        targets = self.targets
        if targets is None:
            targets = np.argmax(explainer.logits(self.images), axis=-1)
        self._last_targets = np.asarray(targets)
        maps = explainer.heatmaps(self.images, targets)
        uint8 = np.clip(np.rint((self.images + 1.0) * 127.5), 0, 255).astype(np.uint8)
        s = self.scale
        tiles_top, tiles_bottom = [], []
        for image, heat in zip(uint8, maps):
            big = np.kron(image, np.ones((s, s, 1), np.uint8))
            heat_big = resize_heatmap(heat, big.shape[0], big.shape[1])
            tiles_bottom.append(blend_overlay(big, heat_big))
            tiles_top.append(blend_overlay(big, np.zeros_like(heat_big)))
        return np.concatenate([np.concatenate(tiles_top, axis=1), np.concatenate(tiles_bottom, axis=1)], axis=0)

    def caption(self) -> str:
        """Which output each column explains (markdown, for TensorBoard's text tab)."""
        names = self.label_names
        targets = getattr(self, "_last_targets", [])
        cells = [str(names[int(t)]) if names is not None else f"output {int(t)}" for t in targets]
        return "columns, left to right: " + ", ".join(cells)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
