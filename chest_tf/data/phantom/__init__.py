"""Phantom ChestMNIST: synthetic frontal (PA) chest radiographs with known findings, made offline.

Each image is a smooth "attenuation" map built from simple shapes in anatomical coordinates
(x to the image right = the patient's left, y downwards, both in [-1, 1] for an unjittered body):
soft tissue of the thorax, two dark lung fields, the mediastinum and a heart shadow biased to the
image right, posterior ribs, clavicles, spine, trachea, hila with vessels, diaphragm domes. The 14
ChestMNIST findings are drawn where a radiologist would look for them, and a box per finding per
image records where each was drawn (for Grad-CAM pointing-game checks).

The map is rendered at an internal size (twice the target for 28 and 64 px, so small sizes come
out area-downsampled like MedMNIST's resized radiographs), then passed through a random exposure
(auto-windowed on the image mean, so the mean carries no label information) and quantum noise.
Pose (shift, scale, rotation), body build, lung density and exposure vary widely from image to
image so that no single pixel predicts a label well, while the findings stay visible at 28 px.

Determinism: every image draws all its random numbers from its own generator, seeded from
(seed, split, index), so image i is the same whatever chunk it is generated in, splits are
independent streams, and the same seed gives bit-identical arrays (on one platform: float32
transcendental functions may differ in the last bit between CPUs). Numpy only (no TensorFlow).

Label rates (``PREVALENCE``, exact under the co-occurrence model below) against the real rates of
NIH ChestX-ray14, from which ChestMNIST is made (``CHESTMNIST_PREVALENCE``). The phantom's are
deliberately higher, so that every label is learnable from a few thousand images:

    label          phantom  real      label          phantom  real
    atelectasis     14.8%   10.3%     pneumothorax     5.0%    4.7%
    cardiomegaly    12.8%    2.5%     consolidation    9.0%    4.2%
    effusion        14.2%   11.9%     edema            8.6%    2.1%
    infiltration    23.0%   17.7%     emphysema        7.4%    2.2%
    mass             6.0%    5.2%     fibrosis         6.8%    1.5%
    nodule           8.0%    5.6%     pleural          6.6%    3.0%
    pneumonia        8.8%    1.3%     hernia           4.0%    0.2%
    no finding      31.1%   53.8%

Usage::

    images, labels, boxes = generate_split(28, 1000, seed=0, split="train")
    write_phantom("phantom_28.npz", size=28)        # + phantom_28_boxes.npz beside it

Layout (one module per role; each imports only the ones before it):

    labels     the 14 findings, how they co-occur, their rates, label noise, location kinds
    anatomy    per-image random streams, normal anatomy, the canvas findings draw into, rendering
    variants   the named sets (``VARIANTS``), difficulty, ``PhantomData``
    version1   version 1's findings and generation (``phantom``)
    version2   version 2's findings, masks, distractors, shortcut marker and generation
    sets       ``generate`` / ``generate_split``, ``write_phantom``, ``read_masks``

The names below are the package's API; import them from ``chest_tf.data.phantom``.
"""
from chest_tf.data.info import SIZES
from chest_tf.data.phantom.labels import (
    CHESTMNIST_PREVALENCE,
    DEFAULT_COUNTS,
    LOCALISABLE,
    LOCATION_KINDS,
    NO_FINDING_RATE,
    PHANTOM_LABELS,
    PREVALENCE,
    draw_labels,
    noisy_labels,
)
from chest_tf.data.phantom.sets import (
    FindingMasks,
    boxes_path,
    generate,
    generate_split,
    masks_path,
    read_masks,
    write_phantom,
)
from chest_tf.data.phantom.variants import (
    DIFFICULTIES,
    SHORTCUT_WITH,
    SHORTCUT_WITHOUT,
    VARIANTS,
    Difficulty,
    PhantomData,
    PhantomVariant,
    get_variant,
    variant_for_path,
)
from chest_tf.data.phantom.version1 import (
    apply_volume_changes,
    draw_case,
    image_rng,
    render_density,
    stack_cases,
)
from chest_tf.data.phantom.version2 import (
    apply_volume_changes_v2,
    draw_case_v2,
    image_rng_v2,
    render_v2,
    stack_cases_v2,
)

__all__ = [
    "CHESTMNIST_PREVALENCE",
    "DEFAULT_COUNTS",
    "DIFFICULTIES",
    "Difficulty",
    "FindingMasks",
    "LOCALISABLE",
    "LOCATION_KINDS",
    "NO_FINDING_RATE",
    "PHANTOM_LABELS",
    "PREVALENCE",
    "PhantomData",
    "PhantomVariant",
    "SHORTCUT_WITH",
    "SHORTCUT_WITHOUT",
    "SIZES",
    "VARIANTS",
    "apply_volume_changes",
    "apply_volume_changes_v2",
    "boxes_path",
    "draw_case",
    "draw_case_v2",
    "draw_labels",
    "generate",
    "generate_split",
    "get_variant",
    "image_rng",
    "image_rng_v2",
    "masks_path",
    "noisy_labels",
    "read_masks",
    "render_density",
    "render_v2",
    "stack_cases",
    "stack_cases_v2",
    "variant_for_path",
    "write_phantom",
]
