"""The review app's library: what ``python -m chest_tf.app`` shows in the browser.

- ``session``: the page's logic without any web framework: a ``Reviewer`` over one model (the
  predictor, the Keras model for heatmaps, the metadata), reviewing uploaded files into results
  (probabilities, calls at the thresholds, input checks, OOD flag), overlays for a chosen finding
  and method, the findings table, CSV/JSON downloads and the model tab's contents.
- ``page``: the Gradio page over a ``Reviewer`` and the server around it (127.0.0.1 by default,
  upload and pixel limits, uploads in a temporary folder removed on exit). Gradio is the optional
  extra ``.[app]``, imported only when the page is built.
- ``demo``: the bundled demo model (a small ResNet-18 trained on the phantom set and exported on
  first use, cached under the data dir).

This file imports nothing, so that the command can quiet TensorFlow before Keras loads.
"""
