"""Evaluation: figures from predictions, calibration and unknown answers fitted on validation, predictions from
models, Grad-CAM explanations, and the reports people read."""
