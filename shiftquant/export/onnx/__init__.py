"""The ONNX backend: the hard model as a QDQ ONNX graph (onnxruntime runs it)."""
