"""Published test-set results to compare a chest_tf run against, as data.

Transcribed from the project's reference/benchmarks.md, which gathers them from:

* MedMNIST v2 — J. Yang, R. Shi, D. Wei, Z. Liu, L. Zhao, B. Ke, H. Pfister, B. Ni, "MedMNIST v2 -
  A large-scale lightweight benchmark for 2D and 3D biomedical image classification", Scientific
  Data 10, 41 (2023); benchmark table on medmnist.com. Trained from scratch (Adam 1e-3, batch 128,
  100 epochs, no augmentation, best epoch by val AUC). Their "(224)" rows are the 28 px images
  upsampled to 224 with nearest neighbour, not the native 224 data. AutoML rows are on 28 px.
* MedMNIST+ — S. Doerrich, F. Di Salvo, J. Brockmann, C. Ledig, "Rethinking model prototyping
  through the MedMNIST+ dataset collection" (2024/2025, arXiv:2404.15786). Native sizes 28-224,
  ImageNet-pretrained, end-to-end, no augmentation, small images zero-padded to 224; ChestMNIST AUC
  is the mean of 3 seeds (ACC not given in our reference).
* Full-resolution ceiling — P. Rajpurkar et al., "CheXNet" (arXiv:1711.05225): DenseNet-121 on NIH
  ChestX-ray14 at 224 from 1024 px, mean AUC 0.841 over 14 findings; a public reproduction on the
  split sizes ChestMNIST uses: 0.847. Not MedMNIST data: an upper reference, not like-for-like.

All AUC = mean per-label ROC-AUC, ACC = mean per-label accuracy at 0.5 (MedMNIST's evaluator);
both as fractions here (MedMNIST+ percentages divided by 100).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SOURCE_V2 = "MedMNIST v2 (Yang et al., Scientific Data 2023), medmnist.com benchmark table"
SOURCE_PLUS = "MedMNIST+ (Doerrich et al., 2024/2025, arXiv:2404.15786)"
SOURCE_CHEXNET = "CheXNet (Rajpurkar et al., arXiv:1711.05225)"
SOURCE_REPRO = "public CheXNet reproduction on ChestMNIST-sized splits (via reference/benchmarks.md)"

NOTE_V2 = "trained from scratch on 28 px images"
NOTE_V2_AUTOML = "AutoML on 28 px images"
NOTE_V2_UPSAMPLED = "28 px images upsampled to 224 (nearest neighbour), not native 224 data"
NOTE_PLUS = "native size, ImageNet-pretrained, end-to-end, zero-padded to 224; mean of 3 seeds"
NOTE_CEILING = "full-resolution NIH ChestX-ray14 (224 from 1024 px), not MedMNIST: an upper reference"

ALL_SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class PublishedRow:
    """One published result. ``data_size`` is the image size the model actually saw the data at
    (28 for MedMNIST v2's upsampled "(224)" rows); ``applies_to`` the chest_tf sizes it is shown
    for; ``ceiling`` marks full-resolution results that are not MedMNIST."""

    dataset: str
    method: str
    auc: float | None
    acc: float | None
    source: str
    note: str
    data_size: int | None
    applies_to: tuple[int, ...]
    group: str
    ceiling: bool = False

    def as_dict(self) -> dict:
        row = asdict(self)
        row["applies_to"] = list(self.applies_to)
        return row


def _v2(dataset: str, method: str, auc: float, acc: float, input_size: int) -> PublishedRow:
    automl = not method.startswith("ResNet")
    # The 28 px rows and the upsampled "(224)" rows were both trained on 28 px data: shown at 28;
    # the "(224)" rows are also shown at 224, with their note, as the commonly quoted comparison.
    upsampled = input_size == 224
    return PublishedRow(dataset, method, auc, acc, SOURCE_V2, NOTE_V2_UPSAMPLED if upsampled else NOTE_V2_AUTOML if automl else NOTE_V2,
                        data_size=28, applies_to=(28, 224) if upsampled else (28,), group="MedMNIST v2")


def _plus(dataset: str, method: str, auc_percent: float, size: int, acc_percent: float | None = None,
          note: str = NOTE_PLUS) -> PublishedRow:
    return PublishedRow(dataset, f"{method} ({size})", round(auc_percent / 100, 6),
                        None if acc_percent is None else round(acc_percent / 100, 6), SOURCE_PLUS, note,
                        data_size=size, applies_to=(size,), group="MedMNIST+")


def _chestmnist_plus_rows() -> list[PublishedRow]:
    # "pretrained" keeps the names apart from MedMNIST v2's from-scratch "ResNet-18 (224)".
    table = {
        "VGG16": (76.16, 78.59, 80.07, 80.92),
        "ResNet-18": (73.82, 75.59, 78.24, 78.96),
        "DenseNet-121": (75.93, 78.70, 81.21, 82.22),
        "EfficientNet-B4": (67.44, 71.63, 77.65, 78.25),
        "ViT-B/16": (73.74, 76.21, 78.05, 80.08),
    }
    return [_plus("chestmnist", f"{model} pretrained", auc, size) for model, aucs in table.items() for size, auc in zip(ALL_SIZES, aucs)]


PUBLISHED: tuple[PublishedRow, ...] = (
    _v2("chestmnist", "ResNet-18 (28)", 0.768, 0.947, 28),
    _v2("chestmnist", "ResNet-18 (224)", 0.773, 0.947, 224),
    _v2("chestmnist", "ResNet-50 (28)", 0.769, 0.947, 28),
    _v2("chestmnist", "ResNet-50 (224)", 0.773, 0.948, 224),
    _v2("chestmnist", "auto-sklearn", 0.649, 0.779, 28),
    _v2("chestmnist", "AutoKeras", 0.742, 0.937, 28),
    _v2("chestmnist", "Google AutoML Vision", 0.778, 0.948, 28),
    _v2("pneumoniamnist", "ResNet-18 (28)", 0.944, 0.854, 28),
    _v2("pneumoniamnist", "ResNet-18 (224)", 0.956, 0.864, 224),
    _v2("pneumoniamnist", "ResNet-50 (28)", 0.948, 0.854, 28),
    _v2("pneumoniamnist", "ResNet-50 (224)", 0.962, 0.884, 224),
    _v2("pneumoniamnist", "auto-sklearn", 0.942, 0.855, 28),
    _v2("pneumoniamnist", "AutoKeras", 0.947, 0.878, 28),
    _v2("pneumoniamnist", "Google AutoML Vision", 0.991, 0.946, 28),
    *_chestmnist_plus_rows(),
    _plus("pneumoniamnist", "DINO ViT linear probe, best", 98.92, 224, 91.56,
          note="native 224, self-supervised DINO ViT features, linear probe; best MedMNIST+ result"),
    _plus("pneumoniamnist", "ResNet-18 end-to-end", 98.04, 224, 91.13),
    PublishedRow("chestmnist", "CheXNet (DenseNet-121)", 0.841, None, SOURCE_CHEXNET,
                 NOTE_CEILING + "; CheXNet's own split", data_size=1024, applies_to=ALL_SIZES,
                 group="full-resolution ceiling", ceiling=True),
    PublishedRow("chestmnist", "CheXNet reproduction", 0.847, None, SOURCE_REPRO,
                 NOTE_CEILING + "; same split sizes as ChestMNIST", data_size=1024, applies_to=ALL_SIZES,
                 group="full-resolution ceiling", ceiling=True),
)


def normalise_dataset(name: str) -> str:
    """"ChestMNIST", "chestmnist_224", "chest" -> "chestmnist"; same for PneumoniaMNIST."""
    key = name.lower().strip().replace("-", "").replace("_", "")
    key = key.rstrip("0123456789")
    if not key.endswith("mnist") and key in ("chest", "pneumonia"):
        key += "mnist"
    return key


def published_rows(dataset: str, size: int) -> list[dict]:
    """The published rows that apply to ``dataset`` at image ``size``, as dicts with keys dataset,
    method, auc, acc (None when not published), source, note, data_size, applies_to, group, ceiling.

    ChestMNIST 28: MedMNIST v2 rows (28 px, and the 28-upsampled-to-224 ones), MedMNIST+ 28, the
    ceiling. 64 / 128: MedMNIST+ at that size, the ceiling. 224: MedMNIST v2 "(224)" rows (noted as
    upsampled 28 px), MedMNIST+ 224, the ceiling. PneumoniaMNIST likewise without a ceiling.
    Any other set (e.g. chest_tf's generated ``phantom``) has no published rows: [].
    """
    key = normalise_dataset(dataset)
    return [row.as_dict() for row in PUBLISHED if row.dataset == key and int(size) in row.applies_to]
