"""pneumo-edge runtime: the lean layer that runs on a Jetson.

Imports numpy, OpenCV and one inference backend only; never TensorFlow,
Keras, tf2onnx, ``train`` or ``export`` (tests/edge_runtime/test_lean.py
checks this in a subprocess). The preprocessing contract and the bundle
schema live here because every other stage depends on them.
"""

__version__ = "0.1.0"
