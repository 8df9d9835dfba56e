"""Evaluation: figures from predictions, predictions from models, and the reports people read."""
