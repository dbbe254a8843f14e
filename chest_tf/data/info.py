"""The catalogue of MedMNIST 2D datasets: tasks, label names, channels, split sizes, URLs and MD5s.

These are MedMNIST"s published facts, restated here so chest_tf does not depend on the ``medmnist``
package (which hard-requires torch). Source: MedMNIST v2/v3 (medmnist 3.0.2, ``medmnist/info.py``;
https://github.com/MedMNIST/MedMNIST; data on Zenodo, record 10519652).

Please cite when you use the data:
    Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter Pfister,
    Bingbing Ni. "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
    classification." Scientific Data, 2023.
    Jiancheng Yang, Rui Shi, Bingbing Ni. "MedMNIST Classification Decathlon: A Lightweight AutoML
    Benchmark for Medical Image Analysis." IEEE ISBI, 2021.
and the source dataset of the set you use (ChestMNIST: Wang et al., "ChestX-ray8", CVPR 2017).
The data are licensed per set (``license`` below: CC BY 4.0, DermaMNIST CC BY-NC 4.0).

``phantom`` is chest_tf"s own generated stand-in for ChestMNIST (see the ``phantom`` package): same label
names and image format, made offline, never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chest_tf.errors import ConfigError

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
ZENODO_RECORD = "https://zenodo.org/records/10519652/files"

MULTI_LABEL = "multi-label, binary-class"
BINARY = "binary-class"
MULTI_CLASS = "multi-class"
ORDINAL = "ordinal-regression"


def _splits(train: int, val: int, test: int) -> dict[str, int]:
    return {"train": train, "val": val, "test": test}


def _by_size(md5_28: str, md5_64: str, md5_128: str, md5_224: str) -> dict[int, str]:
    return dict(zip(SIZES, (md5_28, md5_64, md5_128, md5_224)))


@dataclass(frozen=True)
class DatasetInfo:
    """One MedMNIST 2D set. ``labels`` are in the order of the label columns (multi-label) or class
    indices (binary / multi-class)."""

    name: str
    task: str
    n_channels: int
    license: str
    split_sizes: dict[str, int]
    labels: tuple[str, ...]
    md5: dict[int, str] = field(default_factory=dict)
    generated: bool = False  # True for the phantom set: made locally, never downloaded

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def label_width(self) -> int:
        """Columns of the npz ``*_labels`` arrays: one per finding (multi-label) or 1 (class index)."""
        return self.num_labels if self.task == MULTI_LABEL else 1

    @property
    def num_outputs(self) -> int:
        """Logits a classifier for this set emits: one per finding; one for a binary set; one per
        class otherwise."""
        if self.task == BINARY:
            return 1
        return self.num_labels

    @property
    def sizes(self) -> tuple[int, ...]:
        return SIZES

    def filename(self, size: int) -> str:
        self.check_size(size)
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"

    def url(self, size: int) -> str:
        if self.generated:
            raise ValueError(f"'{self.name}' is generated locally and has no download URL")
        return f"{ZENODO_RECORD}/{self.filename(size)}?download=1"

    def check_size(self, size: int) -> None:
        if size not in SIZES:
            raise ConfigError(f"{self.name} has no {size} px version; choose one of {', '.join(map(str, SIZES))}")


CATALOGUE: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "pathmnist",
            "multi-class",
            n_channels=3,
            license="CC BY 4.0",
            split_sizes=_splits(89996, 10004, 7180),
            labels=(
                "adipose",
                "background",
                "debris",
                "lymphocytes",
                "mucus",
                "smooth muscle",
                "normal colon mucosa",
                "cancer-associated stroma",
                "colorectal adenocarcinoma epithelium",
            ),
            md5=_by_size(
                "a8b06965200029087d5bd730944a56c1",
                "55aa9c1e0525abe5a6b9d8343a507616",
                "ac42d08fb904d92c244187169d1fd1d9",
                "2c51a510bcdc9cf8ddb2af93af1eadec",
            ),
        ),
        DatasetInfo(
            "chestmnist",
            "multi-label, binary-class",
            n_channels=1,
            license="CC BY 4.0",
            # MedMNIST's own 7:1:2 split of all 112,120 NIH ChestX-ray14 images (MedMNIST v2, Table 1;
            # medmnist/info.py). It is NOT NIH's train_val_list.txt / test_list.txt (86,524 / 25,596
            # images; https://nihcc.app.box.com/v/ChestXray-NIHCC), although medmnist's description
            # calls it "the official data split": ChestMNIST test numbers are not comparable with
            # results on NIH's test list.
            split_sizes=_splits(78468, 11219, 22433),
            labels=(
                "atelectasis",
                "cardiomegaly",
                "effusion",
                "infiltration",
                "mass",
                "nodule",
                "pneumonia",
                "pneumothorax",
                "consolidation",
                "edema",
                "emphysema",
                "fibrosis",
                "pleural",
                "hernia",
            ),
            md5=_by_size(
                "02c8a6516a18b556561a56cbdd36c4a8",
                "9de6cd0b934ebb5b7426cfba5efbae16",
                "db107e5590b27930b62dbaf558aebee3",
                "45bd33e6f06c3e8cdb481c74a89152aa",
            ),
        ),
        DatasetInfo(
            "dermamnist",
            "multi-class",
            n_channels=3,
            license="CC BY-NC 4.0",
            split_sizes=_splits(7007, 1003, 2005),
            labels=(
                "actinic keratoses and intraepithelial carcinoma",
                "basal cell carcinoma",
                "benign keratosis-like lesions",
                "dermatofibroma",
                "melanoma",
                "melanocytic nevi",
                "vascular lesions",
            ),
            md5=_by_size(
                "0744692d530f8e62ec473284d019b0c7",
                "b70a2f5635c6199aeaa28c31d7202e1f",
                "2defd784463fa5243564e855ed717de1",
                "8974907d8e169bef5f5b96bc506ae45d",
            ),
        ),
        DatasetInfo(
            "octmnist",
            "multi-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(97477, 10832, 1000),
            labels=("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
            md5=_by_size(
                "c68d92d5b585d8d81f7112f81e2d0842",
                "e229e9440236b774d9f0dfef9d07bdaf",
                "0a97e76651ace45c5d943ee3f65b63ae",
                "abc493b6d529d5de7569faaef2773ba3",
            ),
        ),
        DatasetInfo(
            "pneumoniamnist",
            "binary-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(4708, 524, 624),
            labels=("normal", "pneumonia"),
            md5=_by_size(
                "28209eda62fecd6e6a2d98b1501bb15f",
                "8f4eceb4ccffa70c672198ea285246c6",
                "05b46931834c231683c68f40c47b2971",
                "d6a3c71de1b945ea11211b03746c1fe1",
            ),
        ),
        DatasetInfo(
            "retinamnist",
            "ordinal-regression",
            n_channels=3,
            license="CC BY 4.0",
            split_sizes=_splits(1080, 120, 400),
            labels=("0", "1", "2", "3", "4"),
            md5=_by_size(
                "bd4c0672f1bba3e3a89f0e4e876791e4",
                "afda852cc34dcda56f86ad2b2457dbcc",
                "e48e916a24454daf90583d4e6efb1a18",
                "eae7e3b6f3fcbda4ae613ebdcbe35348",
            ),
        ),
        DatasetInfo(
            "breastmnist",
            "binary-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(546, 78, 156),
            labels=("malignant", "normal, benign"),
            md5=_by_size(
                "750601b1f35ba3300ea97c75c52ff8f6",
                "742edef2a1fd1524b2efff4bd7ba9364",
                "363e4b3f8d712e9b5de15470a2aaadf1",
                "b56378a6eefa9fed602bb16d192d4c8b",
            ),
        ),
        DatasetInfo(
            "bloodmnist",
            "multi-class",
            n_channels=3,
            license="CC BY 4.0",
            split_sizes=_splits(11959, 1712, 3421),
            labels=(
                "basophil",
                "eosinophil",
                "erythroblast",
                "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                "lymphocyte",
                "monocyte",
                "neutrophil",
                "platelet",
            ),
            md5=_by_size(
                "7053d0359d879ad8a5505303e11de1dc",
                "2b94928a2ae4916078ca51e05b6b800b",
                "adace1e0ed228fccda1f39692059dd4c",
                "b718ff6835fcbdb22ba9eacccd7b2601",
            ),
        ),
        DatasetInfo(
            "tissuemnist",
            "multi-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(165466, 23640, 47280),
            labels=(
                "Collecting Duct, Connecting Tubule",
                "Distal Convoluted Tubule",
                "Glomerular endothelial cells",
                "Interstitial endothelial cells",
                "Leukocytes",
                "Podocytes",
                "Proximal Tubule Segments",
                "Thick Ascending Limb",
            ),
            md5=_by_size(
                "ebe78ee8b05294063de985d821c1c34b",
                "123ece2eba09d0aa5d698fda57103344",
                "61b955355d7425a89687b06cca3ce0c2",
                "b077128c4a949f0a4eb01517f9037b9c",
            ),
        ),
        DatasetInfo(
            "organamnist",
            "multi-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(34561, 6491, 17778),
            labels=(
                "bladder",
                "femur-left",
                "femur-right",
                "heart",
                "kidney-left",
                "kidney-right",
                "liver",
                "lung-left",
                "lung-right",
                "pancreas",
                "spleen",
            ),
            md5=_by_size(
                "68e3f8846a6bd62f0c9bf841c0d9eacc",
                "2dcccc29b88e6da5a01161ef20cda288",
                "eeae80d0a227a8d099027e1b3cfd3b60",
                "50747347e05c87dd3aaf92c49f9f3170",
            ),
        ),
        DatasetInfo(
            "organcmnist",
            "multi-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(12975, 2392, 8216),
            labels=(
                "bladder",
                "femur-left",
                "femur-right",
                "heart",
                "kidney-left",
                "kidney-right",
                "liver",
                "lung-left",
                "lung-right",
                "pancreas",
                "spleen",
            ),
            md5=_by_size(
                "b9ceb9546e10131b32923c5bbeaea2b1",
                "3ce34a8724ea6f548e6db4744d03b6a9",
                "773c1f009daa3fe5d9a2a201b2a7ed94",
                "050f5e875dc056f6768abf94ec9995d1",
            ),
        ),
        DatasetInfo(
            "organsmnist",
            "multi-class",
            n_channels=1,
            license="CC BY 4.0",
            split_sizes=_splits(13932, 2452, 8827),
            labels=(
                "bladder",
                "femur-left",
                "femur-right",
                "heart",
                "kidney-left",
                "kidney-right",
                "liver",
                "lung-left",
                "lung-right",
                "pancreas",
                "spleen",
            ),
            md5=_by_size(
                "9ab87b696fb54e2a387ebe992d6ed5f1",
                "53a6d115339d874c25e309a994ff46d3",
                "ded0c5fa01a95dc4978b956f613e9b8e",
                "b354719e553fbbb2513d5533f52a4cb1",
            ),
        ),
        DatasetInfo(
            "phantom",
            MULTI_LABEL,
            n_channels=1,
            license="CC BY 4.0 (generated by chest_tf)",
            split_sizes=_splits(4000, 800, 800),
            labels=(
                "atelectasis",
                "cardiomegaly",
                "effusion",
                "infiltration",
                "mass",
                "nodule",
                "pneumonia",
                "pneumothorax",
                "consolidation",
                "edema",
                "emphysema",
                "fibrosis",
                "pleural",
                "hernia",
            ),
            generated=True,
        ),
        # Version 2 of the phantom generator (chest_tf/data/phantom/version2.py: findings placed broadly, a
        # per-pixel mask per finding, film distractors), for localisation benchmarks; the file name
        # (phantom2_hard_64.npz) tells the generator which variant to write.
        *(
            DatasetInfo(
                name,
                MULTI_LABEL,
                n_channels=1,
                license="CC BY 4.0 (generated by chest_tf)",
                split_sizes=sizes,
                labels=(
                    "atelectasis",
                    "cardiomegaly",
                    "effusion",
                    "infiltration",
                    "mass",
                    "nodule",
                    "pneumonia",
                    "pneumothorax",
                    "consolidation",
                    "edema",
                    "emphysema",
                    "fibrosis",
                    "pleural",
                    "hernia",
                ),
                generated=True,
            )
            for name, sizes in (
                ("phantom2", _splits(8000, 1000, 1000)),             # standard difficulty
                ("phantom2_hard", _splits(8000, 1000, 1000)),        # subtle findings, ~10% label errors
                ("phantom2_shortcut", _splits(8000, 1000, 1000)),    # a marker goes with pneumonia in train/val
                ("phantom2_randlabels", _splits(2000, 500, 1000)),  # permuted train labels (Adebayo's check)
            )
        ),
    )
}


def get_info(name: str) -> DatasetInfo:
    """The catalogue entry for ``name``; an unknown name fails with the list of known ones."""
    key = name.lower()
    if key not in CATALOGUE:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(sorted(CATALOGUE))}")
    return CATALOGUE[key]
