"""Quantization-aware training (tfmot) of our BERT: the Keras side of int8.

One idea per module:

- `quantizers`: the fake-quantizers (named kernel quantizer with sparsity mask and
  per-channel ranges, output quantizer, quantization points inside layers);
- `configs`: the `QuantizeConfig`s for the layers tfmot's registry does not cover;
- `layers`: the layers QAT swaps in (`FakeQuantEmbedding`, `SplitOutputDense`) and
  `custom_objects`;
- `qat`: which layer gets which config, and `quantize_for_training`;
- `calibration`: activation ranges from data, weight ranges, effective kernels, and
  the view of a QAT model that conversion needs.

Conversion to TFLite, flatbuffer inspection and TFLite inference are export's
(`export.tflite`, `export.flatbuffer`, `export.runtime`). The names below are re-exported
so that `from models import quantization as quant` reaches the whole QAT API; importing
the package registers the custom layers for loading.
"""

from models.quantization.calibration import (
    calibrate_ranges,
    effective_kernels,
    frozen_per_axis_kernels,
    refresh_weight_ranges,
    strip_for_export,
)
from models.quantization.configs import (
    AttentionQuantizeConfig,
    DenseQuantizeConfig,
    KernelsQuantizeConfig,
    OutputQuantizeConfig,
    PassThroughQuantizeConfig,
    PerChannelDenseQuantizeConfig,
    SplitOutputDenseQuantizeConfig,
)
from models.quantization.layers import FakeQuantEmbedding, SplitOutputDense, custom_objects
from models.quantization.qat import (
    calibrated_copy,
    outlier_channels,
    quantize_for_training,
    split_channels,
)
from models.quantization.quantizers import KernelQuantizer

__all__ = ["AttentionQuantizeConfig", "DenseQuantizeConfig", "FakeQuantEmbedding",
           "KernelQuantizer", "calibrated_copy", "KernelsQuantizeConfig", "OutputQuantizeConfig",
           "PassThroughQuantizeConfig", "PerChannelDenseQuantizeConfig",
           "SplitOutputDense", "SplitOutputDenseQuantizeConfig", "calibrate_ranges",
           "custom_objects", "effective_kernels", "frozen_per_axis_kernels",
           "outlier_channels", "quantize_for_training", "refresh_weight_ranges",
           "split_channels", "strip_for_export"]
