"""The explain library's public names in one place: ``from chest_tf.explain import api as explain``.

See ``chest_tf/explain/__init__.py`` for what each module holds."""

from chest_tf.explain.bench import (
    BenchSettings,
    fit_prior,
    format_prior_table,
    format_tables,
    prior_table,
    run_bench,
    write_report,
)
from chest_tf.explain.callback import ExplanationPanel
from chest_tf.explain.checks import (
    best_threshold,
    bootstrap_mean,
    box_masks,
    deletion_insertion,
    dilate,
    load_phantom_split,
    location_prior,
    map_similarity,
    mask_iou,
    mask_prior,
    native_grid,
    peak_pixels,
    pixel_orders,
    pointing_game,
    pointing_tolerance,
    prior_pointing_game,
    randomized_copy,
    reachable_peaks,
    run_phantom_npz,
    sanity_check,
    score_heatmaps,
    score_masks,
    spearman,
    ssim,
    weight_groups,
    wilson_interval,
)
from chest_tf.explain.files import Target, choose_targets, explain_files, output_probabilities
from chest_tf.explain.methods import (
    ANY_METHODS,
    CNN_METHODS,
    DEFAULT_BATCH_SIZE,
    METHOD_TITLES,
    METHODS,
    VIT_METHODS,
    Explainer,
    attention_rollout,
    blur,
    default_method,
    explain,
    family_methods,
    gradcam,
    gradient_rollout,
    is_vit,
    prepare_images,
    resolve_method,
    stage_layers,
    upsample_and_normalize,
)
from chest_tf.explain.render import (
    Panel,
    blend_overlay,
    resize_heatmap,
    save_contact_sheet,
    save_example_grid,
    save_overlay,
)

__all__ = [
    "ANY_METHODS", "CNN_METHODS", "DEFAULT_BATCH_SIZE", "METHOD_TITLES", "METHODS", "VIT_METHODS",
    "BenchSettings", "ExplanationPanel", "Explainer", "Panel", "Target",
    "attention_rollout", "best_threshold", "blend_overlay", "blur", "bootstrap_mean", "box_masks", "choose_targets",
    "default_method", "deletion_insertion", "dilate", "explain", "explain_files", "family_methods", "fit_prior",
    "format_prior_table", "format_tables", "gradcam", "gradient_rollout", "is_vit", "load_phantom_split",
    "location_prior", "map_similarity", "mask_iou", "mask_prior", "native_grid", "output_probabilities",
    "peak_pixels", "pixel_orders", "pointing_game", "pointing_tolerance", "prepare_images", "prior_pointing_game",
    "prior_table", "randomized_copy", "reachable_peaks", "resize_heatmap", "resolve_method", "run_bench",
    "run_phantom_npz", "sanity_check", "save_contact_sheet", "save_example_grid", "save_overlay", "score_heatmaps",
    "score_masks", "spearman", "ssim", "stage_layers", "upsample_and_normalize", "weight_groups",
    "wilson_interval", "write_report",
]
