"""pneumo-edge export: Keras ``.h5`` -> ONNX (uint8 in, scaling inside) -> FP16 and INT8 Q/DQ ONNX,
calibration and golden sets, parity checks, and the deployment bundle a Jetson builds its engine from.

Importing ``export`` imports nothing heavy: TensorFlow, Keras, tf2onnx, onnx and
ONNX Runtime are imported inside the functions that need them. The TensorRT
engine build lives in :mod:`edge_runtime.engine_from_onnx` (a Jetson builds its own
engine without TensorFlow); ``pneumo export engine`` only wraps it.
"""
