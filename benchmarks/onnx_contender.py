"""The ONNX Runtime side of `inference_vs_onnxruntime.py`: tf2onnx conversion of a Keras
classifier, ORT's transformer fusions, dynamic int8 quantization with onnxruntime, the
ONNX matmul census, and a session wrapper with the same call as the TFLite contender."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def plain_attention(model, seq_len: int):
    """Within the block, every attention layer of `model` computes what it computes as
    BERT's reference code writes it: per-projection matmul + bias, reshape to heads and
    transpose, scores scaled after the q.k matmul, the key mask added, softmax, and the
    inverse reshape before the output matmul. The same function of the same weights
    (up to float rounding), but tf2onnx turns it into the subgraph ORT's attention
    fusion recognises, where the Keras layer's einsums become reshaped batched matmuls
    that it does not."""
    import tensorflow as tf
    import tf_keras as keras

    def plain(layer):
        config = layer.get_config()
        heads, size = config["num_heads"], config["key_dim"]
        width = heads * size

        def project(dense, x):
            return tf.matmul(x, tf.reshape(dense.kernel, [-1, width])) \
                + tf.reshape(dense.bias, [width])

        def heads_first(x, perm):
            return tf.transpose(tf.reshape(x, [-1, seq_len, heads, size]), perm)

        def call(query, value, key=None, attention_mask=None, training=None, **kwargs):
            key = value if key is None else key
            q = heads_first(project(layer._query_dense, query), [0, 2, 1, 3])
            k = heads_first(project(layer._key_dense, key), [0, 2, 3, 1])
            v = heads_first(project(layer._value_dense, value), [0, 2, 1, 3])
            scores = tf.matmul(q, k) / float(np.sqrt(size))
            if attention_mask is not None:  # [B, 1, S] of 0/1, as BertSelfAttention's
                mask = tf.expand_dims(tf.cast(attention_mask, scores.dtype), 1)
                scores += (1.0 - mask) * layer.mask_value
            context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
            context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, seq_len, width])
            out = layer._output_dense
            return tf.matmul(context, tf.reshape(out.kernel, [width, -1])) + out.bias

        return call

    layers = [layer for layer in model.submodules
              if isinstance(layer, keras.layers.MultiHeadAttention)]
    for layer in layers:
        layer.call = plain(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.call


def fusable(src: Path, dst: Path) -> dict[str, int]:
    """Rewrite three tf2onnx idioms into the same functions in the forms ORT's
    transformer optimizer recognises; returns how many of each were rewritten.

    - LayerNorm's mean: tf2onnx emits the last-axis `Mean` of a rank-3 tensor as
      `GlobalAveragePool`; ORT's LayerNorm fusion looks for `ReduceMean` (axes [-1]).
    - Exact GELU: TF's `0.5 x erfc(-x / sqrt 2)` arrives as
      `Neg -> Mul(1/sqrt 2) -> Erf -> Sub(1, .)`; ORT's Gelu fusion looks for
      `Div(sqrt 2) -> Erf -> Add(1)`, the same function since erf is odd.
    - Attention scale: TF turns `scores / sqrt(d)` into `Mul(1/sqrt(d))`, and ORT's
      attention fusion then takes that `Mul` for the mask's; written back as a `Div`
      (equal up to rounding).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*graph.value_info, *graph.input, *graph.output]
             if v.type.tensor_type.HasField("shape")}
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def scalar(name: str) -> float | None:
        value = consts.get(name)
        return float(value) if value is not None and value.size == 1 else None

    sqrt2 = "fusable_sqrt2"
    counts = {"mean": 0, "gelu": 0, "scale": 0}
    replace: dict[int, list] = {}  # id(node) -> its replacement nodes
    for node in graph.node:
        if node.op_type == "GlobalAveragePool" and ranks.get(node.input[0]) == 3:
            replace[id(node)] = [helper.make_node("ReduceMean", list(node.input),
                                                  list(node.output), name=node.name,
                                                  axes=[-1], keepdims=1)]
            counts["mean"] += 1
        elif node.op_type == "Mul" and scalar(node.input[1]) and [
                user.op_type for add in consumers.get(node.output[0], [])
                if add.op_type == "Add" for user in consumers.get(add.output[0], [])
        ] == ["Softmax"] and producer.get(node.input[0]) is not None \
                and producer[node.input[0]].op_type == "MatMul":
            divisor = f"{node.name}__divisor"
            graph.initializer.append(numpy_helper.from_array(
                np.array(1 / scalar(node.input[1]), np.float32), divisor))
            replace[id(node)] = [helper.make_node("Div", [node.input[0], divisor],
                                                  list(node.output), name=node.name)]
            counts["scale"] += 1
        elif node.op_type == "Erf":
            mul = producer.get(node.input[0])
            neg = producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" \
                else None
            subs = consumers.get(node.output[0], [])
            if neg is None or neg.op_type != "Neg" or len(subs) != 1 \
                    or subs[0].op_type != "Sub" or subs[0].input[1] != node.output[0] \
                    or abs((scalar(mul.input[1]) or 0) - 1 / np.sqrt(2)) > 1e-4 \
                    or scalar(subs[0].input[0]) != 1.0 \
                    or len(consumers[neg.output[0]]) != 1 or len(consumers[mul.output[0]]) != 1:
                continue
            sub = subs[0]
            replace[id(neg)] = []
            replace[id(mul)] = [helper.make_node("Div", [neg.input[0], sqrt2],
                                                 list(mul.output), name=mul.name)]
            replace[id(sub)] = [helper.make_node("Add", [node.output[0], sub.input[0]],
                                                 list(sub.output), name=sub.name)]
            counts["gelu"] += 1
    if counts["gelu"]:
        graph.initializer.append(numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32),
                                                         sqrt2))
    nodes = [new for node in graph.node for new in replace.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.save(model, str(dst))
    return counts


def fuse(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict:
    """ORT's transformer optimizer (`optimize_model`, model type "bert", every fusion on)
    on `src` after `fusable`, written to `dst`. Python fusions only (`opt_level=0`):
    ORT's own graph optimizations run when a session loads the model anyway, and
    `opt_level` > 0 imports torch. Returns the rewrites and the fused operators (nonzero
    counts)."""
    from onnxruntime.transformers.optimizer import optimize_model

    canonical = dst.with_suffix(".canonical.onnx")
    rewrites = fusable(src, canonical)
    optimized = optimize_model(str(canonical), model_type="bert", num_heads=num_heads,
                               hidden_size=hidden_size, opt_level=0)
    optimized.save_model_to_file(str(dst))
    canonical.unlink()
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items()
             if count}
    return {"rewrites": rewrites, "fused": fused}


def quantize(src: Path, dst: Path, per_channel: bool) -> int:
    """`quantize_dynamic` (QInt8 weights) of `src` into `dst`, after constant folding
    (`quant_pre_process`) and `gemm_to_matmul`; returns how many Gemm were rewritten.
    ORT's fused operators (com.microsoft domain) defeat ONNX shape inference, so tensors
    of unknown type are taken as float (they all are)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded, matmuls = dst.with_suffix(".folded.onnx"), dst.with_suffix(".matmul.onnx")
    quant_pre_process(str(src), str(folded), skip_symbolic_shape=True)
    rewritten = gemm_to_matmul(folded, matmuls)
    quantize_dynamic(str(matmuls), str(dst), weight_type=QuantType.QInt8,
                     per_channel=per_channel,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    folded.unlink()
    matmuls.unlink()
    return rewritten


def attention_shape(model) -> tuple[int, int]:
    """(num_heads, hidden size of all heads) of a Keras classifier's first attention."""
    import tf_keras as keras

    for layer in model.submodules:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            config = layer.get_config()
            return config["num_heads"], config["num_heads"] * config["key_dim"]
    raise ValueError(f"{model.name} has no MultiHeadAttention layer")


def onnx_census(path: Path) -> dict[str, int]:
    """Matmuls of an ONNX graph: with a constant weight (fp32 or int8) and between
    activations. A fused (Q)Attention counts as its three projections (one packed
    weight) and its two matmuls between activations."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {init.name for init in model.graph.initializer}
    census = {"weight_matmuls_fp32": 0, "weight_matmuls_int8": 0, "activation_matmuls": 0}
    for node in model.graph.node:
        if node.op_type in ("Attention", "QAttention"):
            census["weight_matmuls_int8" if node.op_type == "QAttention"
                   else "weight_matmuls_fp32"] += 3
            census["activation_matmuls"] += 2
        elif node.op_type == "MatMulInteger":
            census["weight_matmuls_int8"] += 1
        elif node.op_type in ("MatMul", "Gemm"):
            key = "weight_matmuls_fp32" if node.input[1] in inits else "activation_matmuls"
            census[key] += 1
    return census


def convert_onnx(model, seq_len: int, out_dir: Path, check: dict[str, np.ndarray],
                 per_channel: bool = False) -> dict:
    """ONNX files of a Keras classifier in `out_dir`: `fp32.onnx` (tf2onnx), `int8.onnx`
    (its `quantize`), `fused-fp32.onnx` (`fuse` of tf2onnx's conversion under
    `plain_attention`) and `fused-int8.onnx` (the `quantize` of that); returns what was
    done."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    specs = [tf.TensorSpec([None, seq_len], tf.int32, name=name) for name in INPUT_NAMES]

    def serve(input_ids, input_mask, segment_ids):
        return {"logits": model({"input_ids": input_ids, "input_mask": input_mask,
                                 "segment_ids": segment_ids}, training=False)}

    def convert(path: Path) -> None:  # traced anew each time
        tf2onnx.convert.from_function(
            tf.function(serve, input_signature=specs),
            input_signature=specs, opset=OPSET,
            custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])}, output_path=str(path))

    fp32, plain, fused_fp32 = out_dir / "fp32.onnx", out_dir / "plain-fp32.onnx", \
        out_dir / "fused-fp32.onnx"
    start = time.perf_counter()
    convert(fp32)
    convert_seconds = time.perf_counter() - start
    with plain_attention(model, seq_len):
        convert(plain)
    num_heads, hidden_size = attention_shape(model)
    root = logging.getLogger()
    level = root.level
    # quantize_dynamic's "consider pre-processing" and optimize_model's "producer not
    # matched" warnings, and the shape inference warnings on fused operators.
    root.setLevel(logging.ERROR)
    try:
        rewritten = quantize(fp32, out_dir / "int8.onnx", per_channel)
        fusion = fuse(plain, fused_fp32, num_heads, hidden_size)
        quantize(fused_fp32, out_dir / "fused-int8.onnx", per_channel)
    finally:
        root.setLevel(level)
    plain.unlink()

    import onnxruntime as ort

    keras_logits = model(check, training=False).numpy()

    def max_diff(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float(np.abs(keras_logits - session.run(["logits"], check)[0]).max())

    return {"tf2onnx_seconds": round(convert_seconds, 1),
            "erfc": "custom tf2onnx handler: Erfc(x) -> 1 - Erf(x)",
            "int8_recipe": "quant_pre_process (constant folding, no symbolic shapes) -> "
                           f"{rewritten} Gemm rewritten as MatMul -> quantize_dynamic "
                           f"(QInt8 weights, per {'channel' if per_channel else 'tensor'})",
            "fusion_recipe": "tf2onnx with the attention written plainly "
                             f"(plain_attention), {fusion['rewrites']['mean']} "
                             f"GlobalAveragePool -> ReduceMean, {fusion['rewrites']['gelu']} "
                             f"GELU Neg/Sub -> Div/Add, {fusion['rewrites']['scale']} "
                             "attention scale Mul -> Div, then onnxruntime.transformers "
                             "optimize_model "
                             f"(model_type bert, num_heads {num_heads}, hidden_size "
                             f"{hidden_size}, opt_level 0)",
            "fused_operators": fusion["fused"],
            "fp32_census": onnx_census(fp32), "int8_census": onnx_census(out_dir / "int8.onnx"),
            "fused_fp32_census": onnx_census(fused_fp32),
            "fused_int8_census": onnx_census(out_dir / "fused-int8.onnx"),
            "fp32_max_abs_logit_diff_vs_keras": max_diff(fp32),
            "fused_fp32_max_abs_logit_diff_vs_keras": max_diff(fused_fp32),
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
