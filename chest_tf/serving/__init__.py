"""Serving: the uint8-in computation (signature.py), the metadata that travels with a model
(metadata.py), the SavedModel export (savedmodel.py), and predictions on image files
(predictor.py, outputs.py, bench.py)."""
