"""What a TFLite flatbuffer holds: its operators by type and dtypes, and its matmul weights.

Read with ai-edge-litert's flatbuffer schema, without running the model. The op census
shows whether a conversion ran the matmuls in int8, float or hybrid (float activations x
int8 weights) and whether it needs custom or Flex ops; `matmul_weight_sparsity` shows
whether pruning's zeros survived conversion. Only the main subgraph is read.

Example:
    >>> op_census(flatbuffer)["float_matmuls"]
    0
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from models.pruning import zero_counts

# The TFLite ops that multiply an activation by a weight (or by another activation).
MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")


def _enum_names(cls) -> dict[int, str]:
    return {value: key for key, value in vars(cls).items()
            if not key.startswith("_") and isinstance(value, int)}


def op_census(tflite: bytes) -> dict[str, Any]:
    """Operators of a TFLite model by type and tensor dtypes.

    Args:
        tflite: bytes. A flatbuffer.

    Returns:
        {"ops": {"FULLY_CONNECTED int8,int8,int32->int8": count, ...} (op type, dtypes
        of all present inputs -> outputs), "float_matmuls", "int8_matmuls",
        "hybrid_matmuls" (float activations x int8 weights, dynamic-range kernels),
        "other_matmuls", "matmuls" (FULLY_CONNECTED + BATCH_MATMUL), "total_ops",
        "custom_ops" and "flex_ops" (names)}. Only the main subgraph is counted.
    """
    from ai_edge_litert import schema_py_generated as schema

    ops_names = _enum_names(schema.BuiltinOperator)
    type_names = {k: v.lower() for k, v in _enum_names(schema.TensorType).items()}
    model = schema.Model.GetRootAs(tflite, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else ops_names.get(builtin, str(builtin)))
    graph = model.Subgraphs(0)

    def dtype(index: int) -> str:
        return type_names[graph.Tensors(index).Type()]

    ops: Counter = Counter()
    matmuls = Counter()
    custom, flex = [], []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = codes[op.OpcodeIndex()]
        custom_code = model.OperatorCodes(op.OpcodeIndex()).CustomCode()
        if custom_code:
            (flex if name.startswith("Flex") else custom).append(name)
        inputs = [dtype(j) for j in op.InputsAsNumpy() if j >= 0] \
            if op.InputsLength() else []
        outputs = [dtype(j) for j in op.OutputsAsNumpy()] if op.OutputsLength() else []
        ops[f"{name} {','.join(inputs)}->{','.join(outputs)}"] += 1
        if name in MATMUL_OPS:
            activation, weight = inputs[0], inputs[1]
            if activation == weight == "float32":
                matmuls["float"] += 1
            elif activation == weight == "int8":
                matmuls["int8"] += 1
            elif activation == "float32" and weight == "int8":
                matmuls["hybrid"] += 1
            else:
                matmuls["other"] += 1
    return {"ops": dict(sorted(ops.items())), "float_matmuls": matmuls["float"],
            "int8_matmuls": matmuls["int8"], "hybrid_matmuls": matmuls["hybrid"],
            "other_matmuls": matmuls["other"], "matmuls": sum(matmuls.values()),
            "total_ops": graph.OperatorsLength(), "custom_ops": sorted(set(custom)),
            "flex_ops": sorted(set(flex))}


def census_summary(census: dict[str, Any]) -> dict[str, Any]:
    """`op_census` without the per-op table: matmul counts, op total, custom/Flex ops."""
    return {key: census[key] for key in ("matmuls", "int8_matmuls", "hybrid_matmuls",
                                         "float_matmuls", "other_matmuls", "total_ops",
                                         "custom_ops", "flex_ops")}


def matmul_weight_sparsity(tflite: bytes) -> dict[str, dict[str, Any]]:
    """Zeros of every constant weight operand of the model's matmuls: name ->
    `models.pruning.zero_counts` (parameters, zeros, zero fraction `sparsity`).

    The weights as the runtime reads them (int8 or float), keyed by tensor name: shows
    whether pruning survived conversion. Rounding to int8 can add a few zeros.
    """
    from ai_edge_litert import schema_py_generated as schema

    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
              schema.TensorType.INT8: np.int8}
    ops_names = _enum_names(schema.BuiltinOperator)
    model = schema.Model.GetRootAs(tflite, 0)
    graph = model.Subgraphs(0)
    out = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if ops_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) \
                not in MATMUL_OPS:
            continue
        tensor = graph.Tensors(int(op.Inputs(1)))
        buffer = model.Buffers(tensor.Buffer())
        if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
            data = np.frombuffer(tflite, np.uint8, buffer.Size(), buffer.Offset())
        elif buffer.DataLength():
            data = buffer.DataAsNumpy()
        else:
            continue  # an activation (BATCH_MATMUL of scores and values)
        if tensor.Type() not in dtypes:
            continue
        values = np.frombuffer(data.tobytes(), dtypes[tensor.Type()])
        name = tensor.Name().decode()
        out[name if name not in out else f"{name}#{i}"] = zero_counts(values)
    return out


__all__ = ["MATMUL_OPS", "census_summary", "matmul_weight_sparsity", "op_census"]
