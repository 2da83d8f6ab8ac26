"""The raw-string TFLite model: tokenizer and classifier in one flatbuffer.

Input `text` (string [B]); output `probabilities` (float32 [B, C]). The tokenizer is the
data stage's `BertTokenizer` (tensorflow_text's FastBertTokenizer, converted as TF Text
custom ops: `FastBertNormalize`, `FastWordpieceTokenizeWithOffsets`); everything else is
builtin ops. No Flex ops: run it with ai-edge-litert's `InterpreterWithCustomOps` and
`tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS` (see `export.runtime`). The
classifier's weights are dynamic-range int8, as in the `cpu` variant.
"""

from __future__ import annotations

import warnings

import tensorflow as tf

from data.tokenizer import BertTokenizer


class _TextClassifier(tf.Module):
    def __init__(self, model, tokenizer: BertTokenizer) -> None:
        super().__init__(name="text_classifier")
        self.model = model
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        logits = self.model(self.tokenizer(text), training=False)
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}


def text_tflite(model, tokenizer: BertTokenizer, *, dynamic_int8: bool = True) -> bytes:
    """Convert tokenizer + classifier into a raw-string TFLite model (see module doc)."""
    from models.quantization import op_census

    module = _TextClassifier(model, tokenizer)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    if dynamic_int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        flatbuffer = converter.convert()
    census = op_census(flatbuffer)
    if census["flex_ops"]:
        raise RuntimeError(f"the text TFLite model needs Flex ops {census['flex_ops']}")
    return flatbuffer


__all__ = ["text_tflite"]
