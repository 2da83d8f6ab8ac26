"""Our tfmot `QuantizeConfig`s: what QAT quantizes in the layers tfmot's registry misses.

tfmot's default 8-bit registry has no config for our attention layer, quantizes every
kernel with one range, and gives every supported layer an output quantizer. These
configs say per layer which kernels (by attribute path, see
`quantizers.KernelQuantizer`), activations and outputs get fake-quantized;
`models.quantization.qat` picks one per layer. All share `KernelsQuantizeConfig`.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from models.bert import BertSelfAttention
from models.quantization.quantizers import (
    KernelQuantizer,
    add_internal_quantizers,
    output_quantizer,
    resolve_attribute,
)

quantize = tfmot.quantization.keras

ATTENTION_KERNELS = {"query_kernel": "_query_dense.kernel", "key_kernel": "_key_dense.kernel",
                     "value_kernel": "_value_dense.kernel",
                     "output_kernel": "_output_dense.kernel"}


class KernelsQuantizeConfig(quantize.QuantizeConfig):
    """Quantizes the named kernels of a layer and, optionally, its output.

    Base of the configs below; the kernels are attribute paths inside the layer, so one
    config reaches weights of inner layers (MultiHeadAttention's EinsumDense).

    Args:
        kernels: dict. Quantizer name -> attribute path of the kernel.
        quantize_output: bool. Fake-quantize the layer's output.
        preserve_sparsity: bool. Keep the kernels' zeros (see `KernelQuantizer`).
    """

    per_axis = False

    def __init__(self, kernels: dict[str, str] | None = None, quantize_output: bool = False,
                 preserve_sparsity: bool = False):
        self.kernels = dict(kernels or {})
        self.quantize_output = bool(quantize_output)
        self.preserve_sparsity = bool(preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        return [(resolve_attribute(layer, path),
                 KernelQuantizer(name, path, preserve_sparsity=self.preserve_sparsity,
                                 per_axis=self.per_axis))
                for name, path in self.kernels.items()]

    def set_quantize_weights(self, layer, quantize_weights) -> None:
        if len(quantize_weights) != len(self.kernels):
            raise ValueError(f"{layer.name}: {len(quantize_weights)} quantized weights for "
                             f"{len(self.kernels)} kernels {list(self.kernels)}")
        for path, weight in zip(self.kernels.values(), quantize_weights):
            owner_path, _, attr = path.rpartition(".")
            setattr(resolve_attribute(layer, owner_path) if owner_path else layer, attr,
                    weight)

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_activations(self, layer, quantize_activations) -> None:
        pass

    def get_output_quantizers(self, layer):
        return [output_quantizer()] if self.quantize_output else []

    def get_config(self) -> dict:
        return {"kernels": self.kernels, "quantize_output": self.quantize_output,
                "preserve_sparsity": self.preserve_sparsity}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _build_projections(layer: BertSelfAttention) -> None:
    """Create the q/k/v/o kernels of an attention layer rebuilt from its config.

    A layer loaded from a file has its EinsumDense sub-layers but no kernels until its
    first call; the QuantizeWrapper needs them when it builds.
    """
    if not getattr(layer, "_built_from_signature", False):
        raise ValueError(f"{layer.name}: attention layer without input shapes; call it "
                         "once before quantizing")
    query_shape = tf.TensorShape(layer._query_shape)  # noqa: SLF001
    projections = ((layer._query_dense, query_shape),  # noqa: SLF001
                   (layer._key_dense, tf.TensorShape(layer._key_shape)),  # noqa: SLF001
                   (layer._value_dense, tf.TensorShape(layer._value_shape)),  # noqa: SLF001
                   (layer._output_dense, query_shape[:-1].concatenate(  # noqa: SLF001
                       [layer._num_heads, layer._value_dim])))  # noqa: SLF001
    for dense, shape in projections:
        if not dense.built:
            with tf.init_scope():
                dense.build(shape)


class AttentionQuantizeConfig(KernelsQuantizeConfig):
    """`BertSelfAttention`: 8-bit q/k/v/o kernels, no output quantizer.

    The output is left to the next layer (the residual `Add` quantizes its own output);
    an output quantizer on a MultiHeadAttention wrapper breaks its keyword call.
    """

    def __init__(self, preserve_sparsity: bool = False, **kwargs):
        kwargs.pop("kernels", None)
        kwargs.pop("quantize_output", None)
        super().__init__(ATTENTION_KERNELS, quantize_output=False,
                         preserve_sparsity=preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        _build_projections(layer)
        add_internal_quantizers(layer)
        return super().get_weights_and_quantizers(layer)

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity}


class SplitOutputDenseQuantizeConfig(KernelsQuantizeConfig):
    """`SplitOutputDense`: 8-bit kernel, one range per output channel; the two output
    parts are rounded by the layer's own quantization points."""

    per_axis = True

    def __init__(self, preserve_sparsity: bool = False, **kwargs):
        super().__init__({"kernel": "kernel"}, quantize_output=False,
                         preserve_sparsity=preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        add_internal_quantizers(layer)
        return super().get_weights_and_quantizers(layer)

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity}


class OutputQuantizeConfig(KernelsQuantizeConfig):
    """Output only (LayerNormalization, PositionEmbedding): no kernel is quantized."""

    def __init__(self, **kwargs):
        super().__init__({}, quantize_output=True)

    def get_config(self) -> dict:
        return {}


class PassThroughQuantizeConfig(KernelsQuantizeConfig):
    """Nothing quantized (ClsToken: a slice keeps its input's range)."""

    def __init__(self, **kwargs):
        super().__init__({}, quantize_output=False)

    def get_config(self) -> dict:
        return {}


class DenseQuantizeConfig(KernelsQuantizeConfig):
    """`Dense` outside tfmot's defaults: 8-bit kernel, activation left as it is.

    Used for an activation tfmot does not know (the output after it is quantized) and
    for the logits layer (output not quantized: a range fixed by calibration or a slow
    moving average would clip logits that training keeps growing; the converter takes
    the final range from the representative dataset instead).

    Args:
        preserve_sparsity: bool. Keep the kernel's zeros.
        quantize_output: bool. Fake-quantize the output (after the activation).
    """

    def __init__(self, preserve_sparsity: bool = False, quantize_output: bool = True,
                 **kwargs):
        super().__init__({"kernel": "kernel"}, quantize_output=quantize_output,
                         preserve_sparsity=preserve_sparsity)

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity,
                "quantize_output": self.quantize_output}


class PerChannelDenseQuantizeConfig(KernelsQuantizeConfig):
    """Encoder `Dense` (FFN): 8-bit kernel with one range per output channel, and the
    activation quantized as tfmot's default config does (before and after GELU).

    A per-tensor range is set by the largest weight of the whole kernel (the FFN
    output kernels have a few weights far larger than the typical one, so most weights
    would round to 0 or +-1); per channel, each output column keeps its own resolution.
    TFLite runs such weights as per-channel int8 FULLY_CONNECTED.

    Args:
        preserve_sparsity: bool. Keep the kernel's zeros.
    """

    per_axis = True

    def __init__(self, preserve_sparsity: bool = False, **kwargs):
        super().__init__({"kernel": "kernel"}, quantize_output=False,
                         preserve_sparsity=preserve_sparsity)

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, output_quantizer())]

    def set_quantize_activations(self, layer, quantize_activations) -> None:
        layer.activation = quantize_activations[0]

    def get_config(self) -> dict:
        return {"preserve_sparsity": self.preserve_sparsity}


# Every QuantizeConfig of ours: what loading or cloning a QAT model must know by name.
QUANTIZE_CONFIGS = (KernelsQuantizeConfig, AttentionQuantizeConfig,
                    SplitOutputDenseQuantizeConfig, OutputQuantizeConfig,
                    PassThroughQuantizeConfig, DenseQuantizeConfig,
                    PerChannelDenseQuantizeConfig)

__all__ = ["ATTENTION_KERNELS", "QUANTIZE_CONFIGS", "AttentionQuantizeConfig",
           "DenseQuantizeConfig", "KernelsQuantizeConfig", "OutputQuantizeConfig",
           "PassThroughQuantizeConfig", "PerChannelDenseQuantizeConfig",
           "SplitOutputDenseQuantizeConfig"]
