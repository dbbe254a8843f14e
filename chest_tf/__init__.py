"""chest_tf: train, evaluate, explain and export chest X-ray classifiers (MedMNIST) with Keras 3."""

__version__ = "0.1.0"
