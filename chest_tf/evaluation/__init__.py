"""Evaluation: every reported number (metrics.py, numpy only), the report and its figures, the
published rows to compare against, and the one path from a model to a report (evaluator.py)."""
