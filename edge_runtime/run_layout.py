"""The file names of a training run folder: written by ``train``, read by ``export`` and ``benchmarks``.

They live here, beside the data contract, because ``edge_runtime`` is the one package every stage
may import (tests/test_layers.py): one spelling of each name, so a writer and a reader cannot drift.
``contract.json`` and ``model_info.json`` are defined with their records in
:mod:`edge_runtime.contract`.
"""

from __future__ import annotations

MODEL_FILE = "model.h5"
MODEL_KERAS_FILE = "model.keras"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
MODEL_CARD_FILE = "model_card.json"
HISTORY_FILE = "history.csv"
