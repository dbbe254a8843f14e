"""On-device augmentation: correctness, determinism, XLA compatibility, serialisation."""
import ast
import math
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from chest_tf import augment as aug
from chest_tf.augment import (
    PRESETS,
    AugmentConfig,
    ChestAugment,
    affine_matrices,
    attach_augmentation,
    build_augmentation,
    mixup,
    sample_affine,
    strip_augmentation,
)

SIZE = 28


def random_images(batch=8, size=SIZE, channels=1, seed=0):
    shape = (batch, size, size, channels)
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


def dot_image(size, y, x):
    """A black image with one bright pixel."""
    image = np.full((1, size, size, 1), -1.0, "float32")
    image[0, y, x, 0] = 1.0
    return image


def centroid(image):
    """Intensity-weighted (y, x) centre of the bright part of one (H, W, 1) image in [-1, 1]."""
    weights = np.asarray(image)[..., 0] + 1.0
    rows, cols = np.indices(weights.shape)
    return (rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum()


def fixed_matrices(batch, angle_deg=0.0, scale=1.0, shear_deg=0.0, shift_y=0.0, shift_x=0.0,
                   flip=0.0, size=SIZE):
    def full(value):
        return np.full(batch, value, "float32")

    return affine_matrices(full(math.radians(angle_deg)), full(scale),
                           full(math.radians(shear_deg)), full(shift_y), full(shift_x), full(flip),
                           size, size)


def tiny_classifier(size=SIZE, classes=14):
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny")


# ------------------------------------------------------------------ identity, shape, dtype, range


@pytest.mark.parametrize("training", [False, None])
def test_identity_when_not_training(training):
    images = random_images()
    layer = build_augmentation("strong", seed=1)
    np.testing.assert_array_equal(np.asarray(layer(images, training=training)), images)


def test_shape_dtype_and_range_float32():
    images = random_images(batch=6, size=32, channels=3)
    out = build_augmentation("strong", seed=2)(images, training=True)
    assert out.shape == images.shape
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = np.asarray(out)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not np.allclose(out, images)


def test_values_stay_in_range_on_extreme_inputs():
    images = np.concatenate([np.full((2, SIZE, SIZE, 1), -1.0), np.full((2, SIZE, SIZE, 1), 1.0),
                             np.sign(random_images(4))]).astype("float32")
    layer = ChestAugment(PRESETS["strong"], seed=3, brightness=0.5, contrast=0.9, noise_std=0.5)
    out = np.asarray(layer(images, training=True))
    assert np.isfinite(out).all() and out.min() >= -1.0 and out.max() <= 1.0


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_dtype_preserved_under_mixed_precision(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = build_augmentation("medium", seed=4)
        images = random_images(4)
        out32 = layer(images, training=True)
        assert keras.backend.standardize_dtype(out32.dtype) == "float32"  # not autocast
        half = ops.cast(images, layer.compute_dtype)
        out_half = layer(half, training=True)
        assert keras.backend.standardize_dtype(out_half.dtype) == layer.compute_dtype
        assert np.isfinite(np.asarray(ops.cast(out_half, "float32"))).all()
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ------------------------------------------------------------------ randomness


def test_deterministic_for_a_fixed_seed():
    images = random_images()
    first = build_augmentation("strong", seed=11)
    second = build_augmentation("strong", seed=11)
    np.testing.assert_array_equal(np.asarray(first(images, training=True)),
                                  np.asarray(second(images, training=True)))
    other = build_augmentation("strong", seed=12)
    assert not np.allclose(np.asarray(other(images, training=True)),
                           np.asarray(build_augmentation("strong", seed=11)(images, training=True)))


def test_differs_across_calls_and_images():
    layer = build_augmentation("medium", seed=5)
    same_image = np.repeat(random_images(1), 6, axis=0)
    first = np.asarray(layer(same_image, training=True))
    second = np.asarray(layer(same_image, training=True))
    assert not np.allclose(first, second)  # the seed state advances per call
    for i in range(1, 6):
        assert not np.allclose(first[0], first[i])  # each image draws its own parameters


# ------------------------------------------------------------------ geometry references


def test_zero_transform_is_exact_identity():
    images = random_images(3)
    for fill_mode in aug.FILL_MODES:
        out = sample_affine(images, fixed_matrices(3), fill_mode=fill_mode)
        np.testing.assert_array_equal(np.asarray(out), images)
    # A layer whose only geometry is a 0-degree rotation range is exactly the identity too.
    layer = ChestAugment(rotation_deg=0.0, flip_horizontal=True, seed=0)
    out = np.asarray(layer(images, training=True))
    for original, result in zip(images, out):
        assert (np.array_equal(result, original)
                or np.array_equal(result, original[:, ::-1]))  # flips are exact, too


@pytest.mark.parametrize("angle_deg", [30.0, 90.0, -45.0])
def test_rotation_moves_a_dot_counter_clockwise(angle_deg):
    size, centre, radius = 29, 14, 10  # odd size: the centre is a pixel
    image = dot_image(size, centre, centre + radius)  # right of centre
    out = sample_affine(image, fixed_matrices(1, angle_deg=angle_deg, size=size),
                        fill_mode="constant")
    # Counter-clockwise as displayed (y down): the dot at angle 0 goes up for positive angles.
    theta = math.radians(angle_deg)
    expected = (centre - radius * math.sin(theta), centre + radius * math.cos(theta))
    got = centroid(np.asarray(out)[0])
    assert got == pytest.approx(expected, abs=0.35)


def test_scale_shift_and_flip_move_a_dot_as_documented():
    size, centre = 29, 14
    image = dot_image(size, centre, centre + 6)
    zoomed = centroid(np.asarray(sample_affine(image, fixed_matrices(1, scale=1.5, size=size)))[0])
    assert zoomed == pytest.approx((centre, centre + 9), abs=0.35)
    shifted = centroid(np.asarray(
        sample_affine(image, fixed_matrices(1, shift_y=3.0, shift_x=-2.0, size=size)))[0])
    assert shifted == pytest.approx((centre + 3, centre + 4), abs=1e-4)
    flipped = centroid(np.asarray(sample_affine(image, fixed_matrices(1, flip=1.0, size=size)))[0])
    assert flipped == pytest.approx((centre, centre - 6), abs=1e-4)


@pytest.mark.parametrize("fill_mode", aug.FILL_MODES)
def test_sampler_matches_keras_image_ops(fill_mode):
    """The whole geometry path against two independent Keras implementations."""
    images = random_images(3, size=20)
    matrices = np.asarray(fixed_matrices(3, angle_deg=17.0, scale=1.1, shear_deg=4.0,
                                         shift_y=1.5, shift_x=-2.25, size=20))
    ours = np.asarray(sample_affine(images, matrices, fill_mode=fill_mode, fill_value=-1.0))
    # 1. affine_transform (TF's ImageProjectiveTransformV3; not XLA-compilable, fine eagerly):
    #    its 8 numbers map output (x, y) to input (x, y).
    zeros = np.zeros(3, "float32")
    (yy, yx, y0), (xy, xx, x0) = matrices[:, 0].T, matrices[:, 1].T
    projective = np.stack([xx, xy, x0, yx, yy, y0, zeros, zeros], axis=1)
    reference = ops.image.affine_transform(images, projective, interpolation="bilinear",
                                           fill_mode=fill_mode, fill_value=-1.0)
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-5)
    # 2. map_coordinates, one static (H, W) image at a time.
    rows, cols = np.mgrid[0:20, 0:20].astype("float32")
    for i in range(3):
        source_y = matrices[i, 0, 0] * rows + matrices[i, 0, 1] * cols + matrices[i, 0, 2]
        source_x = matrices[i, 1, 0] * rows + matrices[i, 1, 1] * cols + matrices[i, 1, 2]
        single = ops.image.map_coordinates(images[i, ..., 0], np.stack([source_y, source_x]),
                                           order=1, fill_mode=fill_mode, fill_value=-1.0)
        np.testing.assert_allclose(ours[i, ..., 0], np.asarray(single), atol=1e-5)


def test_random_rotation_keeps_the_dot_on_its_circle():
    """The layer with rotation only: each image's dot stays at its radius, within the angle."""
    size, centre, radius = 29, 14, 10
    images = np.repeat(dot_image(size, centre, centre + radius), 16, axis=0)
    out = np.asarray(ChestAugment(rotation_deg=20.0, fill_mode="constant", seed=9)(
        images, training=True))
    angles = []
    for image in out:
        y, x = centroid(image)
        assert math.hypot(y - centre, x - centre) == pytest.approx(radius, abs=0.4)
        angles.append(math.degrees(math.atan2(centre - y, x - centre)))
    assert max(abs(a) for a in angles) <= 20.5
    assert np.std(angles) > 3.0


# ------------------------------------------------------------------ photometric pieces


def test_photometric_functions():
    unit = np.linspace(0, 1, 16, dtype="float32").reshape(1, 4, 4, 1)
    np.testing.assert_allclose(np.asarray(aug.adjust_gamma(unit, np.array([2.0], "float32"))),
                               unit ** 2, rtol=1e-5)
    contrasted = np.asarray(aug.adjust_contrast(unit, np.array([0.5], "float32")))
    assert contrasted.mean() == pytest.approx(unit.mean(), abs=1e-6)
    assert contrasted.std() == pytest.approx(0.5 * unit.std(), rel=1e-5)
    np.testing.assert_allclose(np.asarray(aug.adjust_brightness(unit, np.array([0.1], "float32"))),
                               unit + 0.1, rtol=1e-6)
    np.testing.assert_allclose(aug.from_unit_range(aug.to_unit_range(unit)), unit, atol=1e-7)


def test_random_erasing_covers_the_configured_area():
    layer = ChestAugment(erase_prob=1.0, erase_area=(0.1, 0.2), erase_fill="mean", seed=6)
    images = random_images(16, size=32)
    out = np.asarray(layer(images, training=True))
    changed = (np.abs(out - images) > 1e-6).mean(axis=(1, 2, 3))
    assert changed.min() > 0.05 and changed.max() < 0.3
    # The erased rectangle holds one value (the image mean) in "mean" mode.
    for image, original in zip(out, images):
        mask = np.abs(image - original) > 1e-6
        assert np.ptp(image[mask]) < 1e-5


# ------------------------------------------------------------------ XLA inside model.fit


def test_training_model_compiles_with_xla_and_keeps_jit_compile():
    classifier = tiny_classifier()
    train_model = attach_augmentation(classifier, build_augmentation("strong", seed=0))
    train_model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True),
                        jit_compile=True)
    assert train_model.jit_compile is True
    images = random_images(16)
    labels = (np.random.default_rng(1).random((16, 14)) < 0.2).astype("float32")
    # A tf.data input, as in training: the step is traced with an unknown (None) batch size,
    # which e.g. keras.ops.image.map_coordinates cannot trace.
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    assert dataset.element_spec[0].shape[0] is None
    before = [w.copy() for w in classifier.get_weights()]
    history = train_model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
    assert train_model.jit_compile is True  # Keras turns it off silently for non-jittable layers
    assert all(layer.supports_jit for layer in train_model._flatten_layers())
    # Training the wrapper trained the classifier, which holds no augmentation.
    assert any(not np.allclose(a, b) for a, b in zip(before, classifier.get_weights()))
    assert not any(isinstance(layer, ChestAugment) for layer in classifier._flatten_layers())
    assert strip_augmentation(train_model) is classifier
    assert strip_augmentation(classifier) is classifier


def test_keras_random_rotation_would_turn_xla_off():
    """The negative control: what the XLA test guards against."""
    inputs = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inputs, tiny_classifier()(keras.layers.RandomRotation(0.05)(inputs)))
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    assert model.jit_compile is False


def test_mixup_uses_one_lambda_for_images_and_labels():
    batch = 6
    values = np.linspace(-0.9, 0.9, batch, dtype="float32")
    images = np.broadcast_to(values.reshape(batch, 1, 1, 1), (batch, 4, 4, 1)).copy()
    labels = np.eye(batch, dtype="float32")[:, :4]  # multi-hot rows (some all-zero)
    labels[:, 3] = values
    mixed_images, mixed_labels = mixup(images, labels, 0.4, keras.random.SeedGenerator(3))
    mixed_images, mixed_labels = np.asarray(mixed_images), np.asarray(mixed_labels)
    partner = values[::-1]
    for i in range(batch):
        if abs(values[i] - partner[i]) < 1e-6:
            continue  # an image paired with itself (odd batches) carries no lambda
        lam = (mixed_images[i, 0, 0, 0] - partner[i]) / (values[i] - partner[i])
        assert 0.0 <= lam <= 1.0
        expected = lam * labels[i] + (1 - lam) * labels[batch - 1 - i]
        np.testing.assert_allclose(mixed_labels[i], expected, atol=1e-5)
    assert mixed_labels.dtype == np.float32


def test_mixup_compiles_with_xla():
    seed = keras.random.SeedGenerator(0)
    step = tf.function(lambda x, y: mixup(x, y, 0.2, seed), jit_compile=True,
                       input_signature=[tf.TensorSpec((None, SIZE, SIZE, 1)),
                                        tf.TensorSpec((None, 14))])
    images, labels = step(random_images(5), np.ones((5, 14), "float32"))
    assert images.shape == (5, SIZE, SIZE, 1) and labels.shape == (5, 14)


def soft_label_share(y_true, y_pred):
    """Mean of y(1 - y) over the batch's labels: 0 for hard 0/1 labels, > 0 once mixed."""
    return ops.mean(ops.cast(y_true, "float32") * (1.0 - ops.cast(y_true, "float32")), axis=-1)


@pytest.mark.parametrize("augment", ["light", None])
def test_training_model_mixes_labels_in_the_compiled_step_only(augment):
    classifier = tiny_classifier()
    train_model = attach_augmentation(classifier, build_augmentation(augment, seed=0),
                                      mixup_alpha=0.4, mixup_seed=5)
    assert isinstance(train_model, aug.TrainingModel) and strip_augmentation(train_model) is classifier
    train_model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True),
                        metrics=[keras.metrics.MeanMetricWrapper(soft_label_share, name="soft")],
                        jit_compile=True)
    images = random_images(32)
    labels = (np.random.default_rng(1).random((32, 14)) < 0.3).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    seed_before = np.asarray(train_model.mixup_seed_generator.state.value).copy()
    history = train_model.fit(dataset, epochs=2, verbose=0, shuffle=False)
    assert train_model.jit_compile is True
    assert min(history.history["soft"]) > 0.01  # the loss saw mixed (soft) labels
    assert np.isfinite(history.history["loss"]).all()
    # The mixup seed is a model variable (BackupAndRestore resumes it) and it advanced.
    assert any(v is train_model.mixup_seed_generator.state for v in train_model.variables)
    assert not np.array_equal(seed_before, np.asarray(train_model.mixup_seed_generator.state.value))
    # Evaluation never mixes.
    assert train_model.evaluate(dataset, verbose=0, return_dict=True)["soft"] == 0.0


def test_training_model_without_mixup_trains_on_the_labels_as_given():
    train_model = attach_augmentation(tiny_classifier(), build_augmentation("light", seed=0))
    train_model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True),
                        metrics=[keras.metrics.MeanMetricWrapper(soft_label_share, name="soft")])
    labels = (np.random.default_rng(1).random((16, 14)) < 0.3).astype("float32")
    history = train_model.fit(random_images(16), labels, batch_size=8, epochs=1, verbose=0)
    assert history.history["soft"] == [0.0]
    with pytest.raises(ValueError, match="mixup alpha must be >= 0"):
        attach_augmentation(tiny_classifier(), None, mixup_alpha=-1.0)


# ------------------------------------------------------------------ serialisation, presets


def test_keras_save_and_load_in_safe_mode(tmp_path):
    train_model = attach_augmentation(tiny_classifier(), build_augmentation("medium", seed=21),
                                      mixup_alpha=0.2, mixup_seed=4)
    path = tmp_path / "train_model.keras"
    train_model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    layer = next(layer for layer in loaded.layers if isinstance(layer, ChestAugment))
    assert layer.config == PRESETS["medium"] and layer.seed == 21
    assert isinstance(loaded, aug.TrainingModel)
    assert (loaded.mixup_alpha, loaded.mixup_seed) == (0.2, 4)
    assert strip_augmentation(loaded) is not loaded
    images = random_images(4)
    np.testing.assert_allclose(np.asarray(loaded.predict(images, verbose=0)),
                               np.asarray(train_model.predict(images, verbose=0)), atol=1e-6)
    assert not np.allclose(np.asarray(layer(images, training=True)), images)
    round_trip = ChestAugment.from_config(layer.get_config())
    assert round_trip.config == layer.config and round_trip.seed == 21


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run(name):
    layer = build_augmentation(name, seed=0)
    if name == "none":
        assert layer is None
        return
    assert isinstance(layer, ChestAugment) and layer.config == PRESETS[name]
    out = np.asarray(layer(random_images(4), training=True))
    assert out.shape == (4, SIZE, SIZE, 1) and out.min() >= -1 and out.max() <= 1


def test_build_from_dict_and_config():
    layer = build_augmentation({"rotation_deg": 5, "scale_range": [0.9, 1.1]}, seed=1)
    assert layer.config.scale_range == (0.9, 1.1)
    assert build_augmentation(AugmentConfig()) is None
    assert build_augmentation(None) is None
    assert attach_augmentation(model := tiny_classifier(), None) is model


def test_unknown_preset_lists_the_known_names():
    with pytest.raises(ValueError, match="light, medium, none, strong"):
        build_augmentation("extreme")


def test_invalid_config_values_are_rejected():
    for bad in [{"scale_range": (1.2, 0.8)}, {"erase_prob": 1.5}, {"fill_mode": "wrap"},
                {"rotation_deg": -1.0}, {"contrast": 1.0}]:
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_module_does_not_import_tensorflow():
    tree = ast.parse(Path(aug.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.split(".")[0] == "tensorflow" for name in imported)


# ------------------------------------------------------------------ throughput (printed)


@pytest.mark.parametrize("size", [28, 224])
def test_report_throughput(size):
    """Images/s of the 'medium' preset, batch 128, XLA on this CPU; printed, not asserted."""
    layer = build_augmentation("medium", seed=0)
    step = tf.function(lambda x: layer(x, training=True), jit_compile=True)
    images = tf.constant(random_images(128, size=size))
    step(images).numpy()  # compile
    repeats = 20 if size == 28 else 3
    start = time.perf_counter()
    for _ in range(repeats):
        out = step(images)
    out.numpy()
    rate = 128 * repeats / (time.perf_counter() - start)
    print(f"\naugment throughput 'medium' {size}px batch 128 (XLA, CPU): {rate:,.0f} images/s")
    assert rate > 0


@pytest.mark.parametrize("a, b", [(0.2, 0.2), (0.4, 0.4), (2.0, 5.0)])
def test_random_beta_matches_the_beta_moments(a, b):
    draws = np.asarray(aug.random_beta(20000, a, b, keras.random.SeedGenerator(0)))
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    mean = a / (a + b)
    variance = a * b / ((a + b) ** 2 * (a + b + 1))
    assert draws.mean() == pytest.approx(mean, abs=0.01)
    assert draws.var() == pytest.approx(variance, rel=0.05)


def test_pixel_noise_fields_are_standard_and_independent():
    images = np.zeros((16, 64, 64, 1), "float32")
    seed = keras.random.SeedGenerator(0)
    first = np.asarray(aug.random_normal_like(images, seed)).ravel()
    second = np.asarray(aug.random_normal_like(images, seed)).ravel()
    for draws in (first, second):
        assert np.isfinite(draws).all()
        assert draws.mean() == pytest.approx(0.0, abs=0.01)
        assert draws.std() == pytest.approx(1.0, abs=0.01)
        assert np.mean(draws**4) == pytest.approx(3.0, abs=0.1)  # gaussian kurtosis
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01  # the key advances per call
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < 0.01  # neighbours uncorrelated
    again = np.asarray(aug.random_normal_like(images, keras.random.SeedGenerator(0))).ravel()
    np.testing.assert_array_equal(first, again)
    uniform = np.asarray(aug.random_uniform_like(images, keras.random.SeedGenerator(1)))
    assert uniform.min() > 0.0 and uniform.max() < 1.0
    assert np.histogram(uniform, bins=10, range=(0, 1))[0].min() > 0.09 * uniform.size
