"""Evaluation of representations: weighted kNN and linear probing."""

from cssl.eval.knn import knn_predict

__all__ = ["knn_predict"]
