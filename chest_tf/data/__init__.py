"""Data layer: MedMNIST catalogue, download, TFDS builder, tf.data pipeline, phantom generator."""
