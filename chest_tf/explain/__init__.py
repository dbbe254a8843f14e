"""Where a classifier looks, and whether that can be trusted.

    from chest_tf.explain import api as explain
    maps = explain.explain(model, images, 2, "layercam")           # (B, H, W) in [0, 1]
    result = explain.run_bench("runs/.../resnet18_s0")              # the localisation benchmark

- ``methods``: the heatmaps behind one API (``explain(model, images, label, method)``,
  ``Explainer``; ``METHODS``): Grad-CAM, Grad-CAM++, HiResCAM and LayerCAM (fused stages) for
  CNNs; attention rollout and gradient-weighted rollout for ViTs; occlusion, Integrated Gradients
  and SmoothGrad for any model. Upsampled to the input and min-max normalised per image.
- ``checks``: the scores. Pointing game and energy on boxes (``pointing_game``, phantom v1) or
  masks (``score_masks``, phantom v2; ``pointing_tolerance``), mask IoU at a threshold chosen on
  validation, the location prior, deletion/insertion (``deletion_insertion``), bootstrap
  intervals, and the randomisation checks of Adebayo et al. (``sanity_check``: Spearman and SSIM
  against weight-randomised copies).
- ``bench``: the localisation benchmark over the phantom version-2 test split (``run_bench``,
  ``write_report``: report.md, bench.json, example figures), beside a uniform random point and
  the image-blind prior fitted on the train masks (``fit_prior``).
- ``render``: overlays, contact sheets and the benchmark's example grids; ``files``: explaining
  image files into overlay PNGs and ``explanations.json`` (``explain_files``); ``callback``:
  ``ExplanationPanel``, overlays of fixed validation images in TensorBoard during training.

``api`` gathers the public names. The command is ``python -m chest_tf.explain``
(``chest_tf.cli.explain``; ``bench`` and ``prior`` subcommands). This file imports nothing, so
that the command can quiet TensorFlow before Keras loads it (runpy imports a package before its
``__main__``).
"""
