"""The ONNX Runtime side of `inference_vs_onnxruntime.py`: tf2onnx conversion of a Keras
classifier, dynamic int8 quantization with onnxruntime, the ONNX matmul census, and a
session wrapper with the same call as the TFLite contender."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from data.features import INPUT_NAMES

OPSET = 17


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx custom handler: TF `Erfc(x)` (exact GELU) -> `1 - Erf(x)` (ONNX has Erf)."""
    from tf2onnx import utils

    node.type = "Erf"
    one = ctx.make_const(utils.make_name(f"{name}/one"), np.array(1.0, np.float32))
    sub = ctx.insert_new_node_on_output("Sub", node.output[0],
                                        name=utils.make_name(f"{name}/one_minus"),
                                        inputs=[one.output[0], node.output[0]])
    ctx.copy_shape(node.output[0], sub.output[0])
    ctx.set_dtype(sub.output[0], ctx.get_dtype(node.output[0]))


def gemm_to_matmul(src: Path, dst: Path) -> int:
    """Rewrite every Gemm whose weight is an initializer as MatMul (+ Add for a bias), so
    that `quantize_dynamic` (which quantizes MatMul, not Gemm) makes it int8. Returns how
    many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0) \
                or attrs.get("alpha", 1.0) != 1.0:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight),
                                                         weight_name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] and \
            attrs.get("beta", 1.0) != 0 else None
        if bias is not None and attrs.get("beta", 1.0) != 1.0:
            raise ValueError(f"Gemm {node.name}: beta {attrs['beta']} is not supported")
        if bias is None:
            nodes.append(helper.make_node("MatMul", [node.input[0], weight_name],
                                          list(node.output), name=node.name))
        else:
            product = f"{node.output[0]}__matmul"
            nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product],
                                          name=f"{node.name}__matmul"))
            nodes.append(helper.make_node("Add", [product, bias], list(node.output),
                                          name=f"{node.name}__bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return rewritten


def onnx_census(path: Path) -> dict[str, int]:
    """Matmuls of an ONNX graph: with a constant weight (fp32 or int8) and between
    activations."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {init.name for init in model.graph.initializer}
    census = {"weight_matmuls_fp32": 0, "weight_matmuls_int8": 0, "activation_matmuls": 0}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            census["weight_matmuls_int8"] += 1
        elif node.op_type in ("MatMul", "Gemm"):
            key = "weight_matmuls_fp32" if node.input[1] in inits else "activation_matmuls"
            census[key] += 1
    return census


def convert_onnx(model, seq_len: int, out_dir: Path, check: dict[str, np.ndarray],
                 per_channel: bool = False) -> dict:
    """fp32 (tf2onnx) and int8 (quantize_dynamic) ONNX files of a Keras classifier in
    `out_dir`; returns what was done."""
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    specs = [tf.TensorSpec([None, seq_len], tf.int32, name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=specs)
    def serve(input_ids, input_mask, segment_ids):
        return {"logits": model({"input_ids": input_ids, "input_mask": input_mask,
                                 "segment_ids": segment_ids}, training=False)}

    fp32 = out_dir / "fp32.onnx"
    start = time.perf_counter()
    tf2onnx.convert.from_function(serve, input_signature=specs, opset=OPSET,
                                  custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
                                  output_path=str(fp32))
    convert_seconds = time.perf_counter() - start
    folded, matmuls, int8 = out_dir / "folded.onnx", out_dir / "matmul.onnx", \
        out_dir / "int8.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" warning
    try:
        quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
        rewritten = gemm_to_matmul(folded, matmuls)
        quantize_dynamic(str(matmuls), str(int8), weight_type=QuantType.QInt8,
                         per_channel=per_channel)
    finally:
        root.setLevel(level)
    folded.unlink()
    matmuls.unlink()

    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    keras_logits = model(check, training=False).numpy()
    onnx_logits = session.run(["logits"], check)[0]
    return {"tf2onnx_seconds": round(convert_seconds, 1),
            "erfc": "custom tf2onnx handler: Erfc(x) -> 1 - Erf(x)",
            "int8_recipe": "quant_pre_process (constant folding, no symbolic shapes) -> "
                           f"{rewritten} Gemm rewritten as MatMul -> quantize_dynamic "
                           f"(QInt8 weights, per {'channel' if per_channel else 'tensor'})",
            "fp32_census": onnx_census(fp32), "int8_census": onnx_census(int8),
            "fp32_max_abs_logit_diff_vs_keras": float(np.abs(keras_logits - onnx_logits).max()),
            "checked_examples": int(len(check["input_ids"]))}


class OrtModel:
    def __init__(self, name: str, path: Path, threads: int, spinning: bool):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads halve ORT's speed at 2 threads when other work shares
        # the cores (measured here: int8 24 ms spinning vs 12 ms not, batch 1).
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spinning else "0")
        self.name, self.path = name, path
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.runtime = f"onnxruntime {ort.__version__}"
        self.how = "dynamic batch"
        self.resize_error = None

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feed)[0]
