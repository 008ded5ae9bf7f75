"""Evaluation: metrics (importable on their own) and the suite that runs them over a trained model."""

from kdbench.evaluation.metrics import exact_match, rouge_l

__all__ = ["exact_match", "rouge_l"]
