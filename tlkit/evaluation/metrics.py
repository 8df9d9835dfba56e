"""The figures people read, from scikit-learn: pure arithmetic on class probabilities and true labels."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support,
                             top_k_accuracy_score)


def figures(labels, probabilities, class_names: list[str], top_k: int = 5) -> dict:
    """Accuracy, top-k accuracy, log loss, precision/recall/F1 (macro, weighted, per class) and the confusion
    matrix (rows: true class, columns: predicted) of class probabilities against true labels.

    ``top_k`` is capped at the number of classes minus one: top-k over every class is always 1. Macro and
    weighted averages cover the classes present in the labels or predictions (scikit-learn's default).
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    classes = np.arange(len(class_names))
    predicted = probabilities.argmax(axis=1)
    k = max(1, min(top_k, len(class_names) - 1))
    scores = probabilities[:, 1] if len(class_names) == 2 else probabilities  # scikit-learn's binary form

    def averaged(average):
        precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average=average,
                                                                    zero_division=0)
        return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}

    per_class = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    return {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "top_k": k,
        "top_k_accuracy": float(top_k_accuracy_score(labels, scores, k=k, labels=classes)),
        "log_loss": float(log_loss(labels, probabilities, labels=classes)),
        "macro": averaged("macro"),
        "weighted": averaged("weighted"),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(class_names, *per_class)},
        "classes": list(class_names),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }
