"""Where a classifier looks: Grad-CAM / Grad-CAM++ for the CNNs, attention rollout for the ViTs.

    from chest_tf.explain import api as explain
    maps = explain.Explainer(model).heatmaps(images, targets=2)    # (B, H, W) in [0, 1]
    result = explain.pointing_game(model, images, labels, boxes)    # on the phantom set's boxes

- ``methods``: the heatmaps (``Explainer``, ``explain``, ``gradcam``, ``attention_rollout``,
  ``gradient_rollout``; ``METHODS``): the finding's logit explained by Grad-CAM(++) on a CNN's
  last convolutional stage, or (gradient-weighted) attention rollout through a ViT's blocks,
  upsampled to the input and min-max normalised per image.
- ``checks``: do they point at the findings and depend on the weights? ``pointing_game`` on the
  phantom set's finding boxes (beside random, location-prior and resolution baselines) and
  ``sanity_check`` (Adebayo et al. 2018: correlation with weight-randomised copies).
- ``render``: overlays and contact sheets; ``files``: explaining image files into overlay PNGs
  and ``explanations.json`` (``explain_files``); ``callback``: ``ExplanationPanel``, overlays of
  fixed validation images in TensorBoard during training.

``api`` gathers the public names. The command is ``python -m chest_tf.explain``
(``chest_tf.cli.explain``). This file imports nothing, so that the command can quiet TensorFlow
before Keras loads it (runpy imports a package before its ``__main__``).
"""
