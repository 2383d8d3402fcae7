"""shiftquant: differentiable power-of-two (shift) quantization-aware training.

The public API, re-exported here; nothing is defined in this file.
"""
from .checkpoint import load_model as load_checkpoint
from .convert import (
                      bound_scales,
                      calibrate,
                      get_slope,
                      load_float_weights,
                      quantize_model,
                      quantized_layers,
                      quantizers,
                      reestimate_batchnorm,
                      set_slope,
)
from .errors import (
                      BundleError,
                      CheckpointError,
                      CodegenError,
                      CompilerNotFoundError,
                      ConfigError,
                      DataError,
                      ExportError,
                      ShiftQuantError,
)
from .export import PixelInput, check_exportable, export, export_onnx, export_qonnx, load_bundle
from .export.c import codegen
from .mixed import assign_bits, sensitivity
from .nn.layers import QuantConv2d, QuantLinear
from .nn.residual import QuantBatchNorm2d
from .quant.quantizers import ShiftQuantizer, UniformQuantizer
from .quant.scales import ActivationQuantizer, WeightQuantizer
from .recipe import PRESETS, QuantRecipe
from .summary import summary

__version__ = "0.1.0"

__all__ = [
    "ActivationQuantizer", "BundleError", "CheckpointError", "CodegenError", "CompilerNotFoundError",
    "ConfigError", "DataError",
    "ExportError", "PixelInput", "PRESETS", "check_exportable", "codegen", "export", "export_onnx", "export_qonnx", "load_bundle", "load_checkpoint", "QuantBatchNorm2d", "QuantConv2d", "QuantLinear", "QuantRecipe", "ShiftQuantError",
    "ShiftQuantizer", "UniformQuantizer", "WeightQuantizer", "bound_scales", "calibrate", "get_slope",
    "assign_bits", "load_float_weights", "quantize_model", "sensitivity", "quantized_layers", "quantizers", "reestimate_batchnorm", "set_slope",
    "summary", "__version__",
]
