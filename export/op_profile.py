"""Where each op of a TFLite model runs in LiteRT, and what each op costs.

Two views of one model, at batch 1 on the CPU:

- `execution_plan`: the nodes of ai-edge-litert's `Interpreter` once its default XNNPACK
  delegate is applied (at `allocate_tensors`): each delegate node (a partition), the
  model ops it replaced, and the ops left on builtin kernels. Read from the
  interpreter's private `_get_ops_details()`: the model's ops keep indices 0..N-1, each
  delegate node (`op_name` "DELEGATE") is appended after them with the partition's
  boundary tensors as its inputs and outputs, so its members are the ops reached by
  walking back from its outputs to its inputs.
- `profile_ops`: time per op from LiteRT's own profiler, which the Python `Interpreter`
  does not expose. The LiteRT C API in ai-edge-litert's `libLiteRt.so` does: a
  CompiledModel built with the runtime option `enable_profiling = true` records one
  event per builtin op (tag: op type, metadata: node index) and one per XNNPACK operator
  inside each partition (tag: XNNPACK's name, e.g. "Fully Connected (NC, QS8, QC8W)
  GEMM", metadata: its index in the partition, restarting at 0), the events
  `benchmark_model --enable_op_profiling` prints. The C API is bound here with ctypes
  (signatures of LiteRT's `litert/c/*.h`). The CompiledModel's CPU accelerator is the
  same XNNPACK delegate; `attach_profile` checks that it partitions the model as the
  interpreter does and puts the times on the interpreter's partitions.

`kernels` is `export.runtime.KERNELS`: `default` (XNNPACK where it takes an op) or
`builtin` (the builtin kernels only). Only token-id models (int32 inputs) can be timed;
the plan of the raw-string `text` variant needs `custom_ops=True`. Inputs are filled
with token id 1, mask 1, segment 0: the cost of these models does not depend on the
token values. The profiler counts whole microseconds per event, so an op under 1 us
reads as 0 (the tiny test models are mostly such ops).

Example:
    >>> plan = execution_plan("int8.tflite")
    >>> len(plan["partitions"]), plan["builtin"]["BATCH_MATMUL"]
    (46, 12)
    >>> profile = profile_ops("int8.tflite", runs=20)
    >>> attach_profile(plan, profile)  # no differences: times are on plan["partitions"]
    []
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from core.native_logs import quiet_native_stderr
from export.runtime import KERNELS

DELEGATE_OP = "DELEGATE"

# LiteRtProfilerEventType (litert/c/litert_profiler_event.h).
_DEFAULT_EVENT = 1
_OPERATOR_EVENT = 2
_DELEGATE_OPERATOR_EVENT = 8
_CPU_ACCELERATOR = 1  # kLiteRtHwAcceleratorCpu
_LOCK_WRITE = 1  # kLiteRtTensorBufferLockModeWrite
_INT32 = 2  # kLiteRtElementTypeInt32

# === Execution plan (ai-edge-litert Interpreter) ===


def _interpreter(model_path, kernels: str, num_threads: int, custom_ops: bool = False):
    from ai_edge_litert import interpreter as litert

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, found {kernels!r}")
    resolver = (litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                if kernels == "builtin" else litert.OpResolverType.AUTO)
    kwargs = {"model_path": str(model_path), "num_threads": num_threads,
              "experimental_op_resolver_type": resolver}
    with quiet_native_stderr():  # LiteRT announces each delegate it creates
        if custom_ops:
            import tensorflow_text as tf_text

            interpreter = litert.InterpreterWithCustomOps(
                custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS, **kwargs)
        else:
            interpreter = litert.Interpreter(**kwargs)
        model_ops = interpreter._interpreter.NumNodes()  # before delegation
        interpreter.allocate_tensors()
    return interpreter, model_ops


def _signature(detail: dict) -> str:
    def names(types) -> str:
        return ",".join(getattr(t, "__name__", str(t)) for t in types)

    return f"{detail['op_name']} {names(detail['operand_types'])}->" \
           f"{names(detail['result_types'])}"


def execution_plan(model_path, *, kernels: str = "default", num_threads: int = 1,
                   custom_ops: bool = False) -> dict[str, Any]:
    """The model's ops after delegation: partitions and ops left on builtin kernels.

    Args:
        model_path: a .tflite file.
        kernels: str. `default` or `builtin` (see the module docstring).
        num_threads: int. Interpreter threads.
        custom_ops: bool. Register tensorflow_text's TFLite ops (the `text` variant).

    Returns:
        {"ops": model ops, "delegated_ops", "builtin_ops", "delegated_share",
        "partitions": [{"node", "ops", "op_types": {type: count}, "inputs", "outputs"}]
        in execution order, "builtin": {type: count}, "builtin_signatures":
        {"TYPE dtypes->dtypes": count}, "builtin_nodes": {node index: "TYPE
        dtypes->dtypes"}}.
    """
    interpreter, model_ops = _interpreter(model_path, kernels, num_threads, custom_ops)
    details = interpreter._get_ops_details()
    producer = {int(t): d["index"] for d in details[:model_ops] for t in d["outputs"]}
    partitions, delegated = [], set()
    for node in details[model_ops:]:
        if node["op_name"] != DELEGATE_OP:
            raise RuntimeError(f"unexpected node {node['op_name']!r} after the model ops")
        boundary = {int(t) for t in node["inputs"]}
        members, stack = set(), [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in members:
                continue
            members.add(index)
            stack.extend(int(t) for t in details[index]["inputs"] if t >= 0)
        if members & delegated:
            raise RuntimeError(f"delegate node {node['index']} overlaps another partition")
        delegated |= members
        partitions.append({
            "node": node["index"], "ops": len(members),
            "op_types": dict(Counter(details[i]["op_name"] for i in sorted(members))
                             .most_common()),
            "inputs": len(node["inputs"]), "outputs": len(node["outputs"])})
    builtin = [d for d in details[:model_ops] if d["index"] not in delegated]
    return {
        "ops": model_ops, "delegated_ops": len(delegated), "builtin_ops": len(builtin),
        "delegated_share": round(len(delegated) / model_ops, 4) if model_ops else 0.0,
        "partitions": partitions,
        "builtin": dict(Counter(d["op_name"] for d in builtin).most_common()),
        "builtin_signatures": dict(Counter(_signature(d) for d in builtin).most_common()),
        "builtin_nodes": {d["index"]: _signature(d) for d in builtin}}


def interpreter_latency_ms(model_path, *, kernels: str = "default", num_threads: int = 1,
                           runs: int = 30, warmup: int = 3) -> float:
    """Median `invoke()` time of the model in ai-edge-litert's Interpreter, the runtime
    `export.runtime` uses (inputs filled as in `profile_ops`)."""
    interpreter, _ = _interpreter(model_path, kernels, num_threads)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.full(
            detail["shape"], _fill_value(detail["name"]), detail["dtype"]))
    for _ in range(warmup):
        interpreter.invoke()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds) * 1000, 3)


def _fill_value(name: str) -> int:
    return 1 if "input_ids" in name or "mask" in name else 0


# === LiteRT C API (ctypes) ===

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_SIZE = ctypes.c_size_t
_PAYLOAD_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
# The payloads are Python-owned buffers kept alive by `_CompiledModel`.
_KEEP_PAYLOAD = _PAYLOAD_DESTRUCTOR(lambda payload: None)


class _Layout(ctypes.Structure):
    _fields_ = [("rank", ctypes.c_uint, 7), ("has_strides", ctypes.c_uint, 1),
                ("dimensions", ctypes.c_int32 * 8), ("strides", ctypes.c_uint32 * 8)]


class _RankedTensorType(ctypes.Structure):
    _fields_ = [("element_type", ctypes.c_int), ("layout", _Layout)]


class _MemoryUsage(ctypes.Structure):
    _fields_ = [("total_allocated_bytes", _SIZE), ("in_use_allocated_bytes", _SIZE),
                ("private_footprint_bytes", _SIZE)]


class _Event(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_char_p), ("event_type", ctypes.c_int),
                ("start_timestamp_us", ctypes.c_uint64),
                ("elapsed_time_us", ctypes.c_uint64), ("begin_mem_usage", _MemoryUsage),
                ("end_mem_usage", _MemoryUsage), ("event_metadata1", ctypes.c_uint64),
                ("event_metadata2", ctypes.c_uint64), ("event_source", ctypes.c_int)]


_FUNCTIONS = {  # name: argument types; all return LiteRtStatus unless listed in _VOID
    "LiteRtCreateEnvironment": (ctypes.c_int, _P, _PP),
    "LiteRtDestroyEnvironment": (_P,),
    "LiteRtCreateModelFromFile": (_P, ctypes.c_char_p, _PP),
    "LiteRtDestroyModel": (_P,),
    "LiteRtCreateOptions": (_PP,),
    "LiteRtDestroyOptions": (_P,),
    "LiteRtSetOptionsHardwareAccelerators": (_P, ctypes.c_int),
    "LiteRtCreateOpaqueOptions": (ctypes.c_char_p, _P, _PAYLOAD_DESTRUCTOR, _PP),
    "LiteRtAddOpaqueOptions": (_P, _P),
    "LiteRtCreateCompiledModel": (_P, _P, _P, _PP),
    "LiteRtDestroyCompiledModel": (_P,),
    "LiteRtGetModelSignature": (_P, _SIZE, _PP),
    "LiteRtGetNumSignatureInputs": (_P, ctypes.POINTER(_SIZE)),
    "LiteRtGetNumSignatureOutputs": (_P, ctypes.POINTER(_SIZE)),
    "LiteRtGetSignatureInputName": (_P, _SIZE, ctypes.POINTER(ctypes.c_char_p)),
    "LiteRtGetSignatureInputTensorByIndex": (_P, _SIZE, _PP),
    "LiteRtGetSignatureOutputTensorByIndex": (_P, _SIZE, _PP),
    "LiteRtGetRankedTensorType": (_P, ctypes.POINTER(_RankedTensorType)),
    "LiteRtCompiledModelResizeInputTensor": (_P, _SIZE, _SIZE,
                                             ctypes.POINTER(ctypes.c_int), _SIZE),
    "LiteRtGetCompiledModelInputBufferRequirements": (_P, _SIZE, _SIZE, _PP),
    "LiteRtGetCompiledModelOutputBufferRequirements": (_P, _SIZE, _SIZE, _PP),
    "LiteRtCreateManagedTensorBufferFromRequirements": (
        _P, ctypes.POINTER(_RankedTensorType), _P, _PP),
    "LiteRtDestroyTensorBuffer": (_P,),
    "LiteRtGetTensorBufferSize": (_P, ctypes.POINTER(_SIZE)),
    "LiteRtLockTensorBuffer": (_P, _PP, ctypes.c_int),
    "LiteRtUnlockTensorBuffer": (_P,),
    "LiteRtRunCompiledModel": (_P, _SIZE, _SIZE, _PP, _SIZE, _PP),
    "LiteRtCompiledModelGetProfiler": (_P, _PP),
    "LiteRtStartProfiler": (_P,),
    "LiteRtStopProfiler": (_P,),
    "LiteRtResetProfiler": (_P,),
    "LiteRtGetNumProfilerEvents": (_P, ctypes.POINTER(ctypes.c_int)),
    "LiteRtGetProfilerEvents": (_P, ctypes.c_int, ctypes.POINTER(_Event)),
}
_VOID = {"LiteRtDestroyEnvironment", "LiteRtDestroyModel", "LiteRtDestroyOptions",
         "LiteRtDestroyCompiledModel", "LiteRtDestroyTensorBuffer"}
_LIBRARY = None


def _litert():
    """ai-edge-litert's libLiteRt.so with the prototypes of the functions used here."""
    global _LIBRARY
    if _LIBRARY is None:
        import ai_edge_litert

        path = os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")
        if not os.path.exists(path):
            raise RuntimeError(f"no {path}: per-op timing needs ai-edge-litert >= 2.1, "
                               "which ships the LiteRT C API")
        library = ctypes.CDLL(path)
        for name, argtypes in _FUNCTIONS.items():
            function = getattr(library, name)
            function.argtypes = list(argtypes)
            function.restype = None if name in _VOID else ctypes.c_int
        _LIBRARY = library
    return _LIBRARY


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"LiteRT {what} failed (LiteRtStatus {status})")


def _new(function, *args) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    _check(function(*args, ctypes.byref(handle)), function.__name__)
    return handle


class _CompiledModel:
    """A LiteRT CompiledModel on the CPU with the profiler on, its signature-0 buffers
    allocated at batch 1 and its inputs filled. `close()` frees it all."""

    def __init__(self, model_path, kernels: str, num_threads: int) -> None:
        lib = self.lib = _litert()
        self._owned: list[tuple[str, ctypes.c_void_p]] = []
        self._payloads = []
        try:
            self.env = self._own("LiteRtDestroyEnvironment",
                                 _new(lib.LiteRtCreateEnvironment, 0, None))
            self.model = self._own("LiteRtDestroyModel", _new(
                lib.LiteRtCreateModelFromFile, self.env, os.fsencode(model_path)))
            options = self._own("LiteRtDestroyOptions", _new(lib.LiteRtCreateOptions))
            _check(lib.LiteRtSetOptionsHardwareAccelerators(options, _CPU_ACCELERATOR),
                   "LiteRtSetOptionsHardwareAccelerators")
            # The TOML payloads of litert/c/options/litert_{runtime,cpu}_options.cc.
            self._add_options(options, b"runtime_options_string", "enable_profiling = true")
            mode = "delegate" if kernels == "default" else "builtin"
            self._add_options(options, b"xnnpack",
                              f'kernel_mode = "{mode}"\nnum_threads = {num_threads}')
            self.compiled = self._own("LiteRtDestroyCompiledModel", _new(
                lib.LiteRtCreateCompiledModel, self.env, self.model, options))
            self._allocate()
            self.profiler = _new(lib.LiteRtCompiledModelGetProfiler, self.compiled)
        except BaseException:
            self.close()
            raise

    def _own(self, destroy: str, handle: ctypes.c_void_p) -> ctypes.c_void_p:
        self._owned.append((destroy, handle))
        return handle

    def _add_options(self, options, identifier: bytes, toml: str) -> None:
        payload = ctypes.create_string_buffer((toml + "\n").encode())
        self._payloads.append(payload)
        opaque = _new(self.lib.LiteRtCreateOpaqueOptions, identifier,
                      ctypes.cast(payload, ctypes.c_void_p), _KEEP_PAYLOAD)
        _check(self.lib.LiteRtAddOpaqueOptions(options, opaque), "LiteRtAddOpaqueOptions")

    def _tensor_type(self, getter, index: int) -> _RankedTensorType:
        tensor = _new(getter, self.signature, index)
        tensor_type = _RankedTensorType()
        _check(self.lib.LiteRtGetRankedTensorType(tensor, ctypes.byref(tensor_type)),
               "LiteRtGetRankedTensorType")
        layout = tensor_type.layout
        for d in range(layout.rank):
            if layout.dimensions[d] < 0:  # a dynamic batch: profile batch 1
                layout.dimensions[d] = 1
        return tensor_type

    def _allocate(self) -> None:
        lib = self.lib
        self.signature = _new(lib.LiteRtGetModelSignature, self.model, 0)
        counts = []
        for getter in (lib.LiteRtGetNumSignatureInputs, lib.LiteRtGetNumSignatureOutputs):
            count = _SIZE()
            _check(getter(self.signature, ctypes.byref(count)), getter.__name__)
            counts.append(count.value)
        for i in range(counts[0]):
            layout = self._tensor_type(lib.LiteRtGetSignatureInputTensorByIndex, i).layout
            dims = (ctypes.c_int * layout.rank)(*layout.dimensions[:layout.rank])
            _check(lib.LiteRtCompiledModelResizeInputTensor(self.compiled, 0, i, dims,
                                                            layout.rank),
                   "LiteRtCompiledModelResizeInputTensor")
        self.inputs = self._buffers(counts[0], lib.LiteRtGetSignatureInputTensorByIndex,
                                    lib.LiteRtGetCompiledModelInputBufferRequirements)
        self.outputs = self._buffers(counts[1], lib.LiteRtGetSignatureOutputTensorByIndex,
                                     lib.LiteRtGetCompiledModelOutputBufferRequirements)
        for i in range(counts[0]):
            self._fill_input(i)

    def _buffers(self, count: int, tensor_getter, requirements_getter):
        handles = (ctypes.c_void_p * count)()
        for i in range(count):
            tensor_type = self._tensor_type(tensor_getter, i)
            requirements = _new(requirements_getter, self.compiled, 0, i)
            handles[i] = self._own("LiteRtDestroyTensorBuffer", _new(
                self.lib.LiteRtCreateManagedTensorBufferFromRequirements, self.env,
                ctypes.byref(tensor_type), requirements)).value
        return handles

    def _fill_input(self, index: int) -> None:
        lib = self.lib
        name = ctypes.c_char_p()
        _check(lib.LiteRtGetSignatureInputName(self.signature, index, ctypes.byref(name)),
               "LiteRtGetSignatureInputName")
        element_type = self._tensor_type(lib.LiteRtGetSignatureInputTensorByIndex,
                                         index).element_type
        if element_type != _INT32:
            raise ValueError(f"input {name.value.decode()!r} is not int32: only token-id "
                             "models can be profiled")
        buffer = ctypes.c_void_p(self.inputs[index])
        size = _SIZE()
        _check(lib.LiteRtGetTensorBufferSize(buffer, ctypes.byref(size)),
               "LiteRtGetTensorBufferSize")
        address = ctypes.c_void_p()
        _check(lib.LiteRtLockTensorBuffer(buffer, ctypes.byref(address), _LOCK_WRITE),
               "LiteRtLockTensorBuffer")
        count = size.value // ctypes.sizeof(ctypes.c_int32)
        values = (ctypes.c_int32 * count).from_address(address.value)
        values[:] = [_fill_value(name.value.decode())] * count
        _check(lib.LiteRtUnlockTensorBuffer(buffer), "LiteRtUnlockTensorBuffer")

    def run(self) -> None:
        _check(self.lib.LiteRtRunCompiledModel(
            self.compiled, 0, len(self.inputs), self.inputs, len(self.outputs),
            self.outputs), "LiteRtRunCompiledModel")

    def profiled_run(self) -> list[tuple[str, int, int, int]]:
        """Run once under the profiler: its events as (tag, type, elapsed us, metadata)."""
        lib = self.lib
        _check(lib.LiteRtResetProfiler(self.profiler), "LiteRtResetProfiler")
        _check(lib.LiteRtStartProfiler(self.profiler), "LiteRtStartProfiler")
        self.run()
        _check(lib.LiteRtStopProfiler(self.profiler), "LiteRtStopProfiler")
        count = ctypes.c_int()
        _check(lib.LiteRtGetNumProfilerEvents(self.profiler, ctypes.byref(count)),
               "LiteRtGetNumProfilerEvents")
        events = (_Event * count.value)()
        _check(lib.LiteRtGetProfilerEvents(self.profiler, count, events),
               "LiteRtGetProfilerEvents")
        return [((e.tag or b"").decode(errors="replace"), e.event_type, e.elapsed_time_us,
                 e.event_metadata1) for e in events]

    def close(self) -> None:
        while self._owned:  # in reverse order of creation
            destroy, handle = self._owned.pop()
            getattr(self.lib, destroy)(handle)
        self._payloads.clear()


# === Per-op timing (LiteRT profiler) ===


def _split_run(events) -> tuple[float, list[tuple[int, str, int]], list[list[tuple[str, int]]]]:
    """One run's events: invoke time (us), builtin ops [(node, type, us)] and partitions
    [[(XNNPACK op, us)], ...], both in execution order."""
    invoke_us, builtin, partitions = 0.0, [], []
    previous = None
    for tag, kind, elapsed, metadata in events:
        if kind == _DEFAULT_EVENT and tag == "Invoke":
            invoke_us = float(elapsed)
        elif kind == _OPERATOR_EVENT:
            builtin.append((int(metadata), tag, elapsed))
        elif kind == _DELEGATE_OPERATOR_EVENT:
            # A partition's operators are reported together, numbered from 0.
            if previous != _DELEGATE_OPERATOR_EVENT or metadata == 0:
                partitions.append([])
            partitions[-1].append((tag, elapsed))
        previous = kind
    return invoke_us, builtin, partitions


def profile_ops(model_path, *, kernels: str = "default", num_threads: int = 1,
                runs: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Mean time per op of the model in LiteRT's profiler, by op and by partition.

    Args:
        model_path: a .tflite token-id model (int32 inputs).
        kernels: str. `default` (XNNPACK) or `builtin`.
        num_threads: int. CPU threads.
        runs, warmup: int. Profiled runs, and runs before them.

    Returns:
        {"runs", "invoke_ms" (mean of the profiler's Invoke event), "ops_ms" (mean sum
        of all op events), "builtin_ms", "xnnpack_ms", "by_type": [{"type", "kernel"
        ("builtin" or "xnnpack"), "ms" (mean per run), "calls" (per run)}] slowest
        first, "builtin_nodes": {node: {"type", "ms"}}, "partitions": [{"xnnpack_ops",
        "ms", "slowest": [XNNPACK op, ms]}] in execution order}.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, found {kernels!r}")
    with quiet_native_stderr():  # and each accelerator it looks for
        model = _CompiledModel(model_path, kernels, num_threads)
    try:
        for _ in range(warmup):
            model.run()
        recorded = [_split_run(model.profiled_run()) for _ in range(runs)]
    finally:
        with quiet_native_stderr():
            model.close()
    shapes = {(len(b), tuple(len(p) for p in parts)) for _, b, parts in recorded}
    if len(shapes) != 1:
        raise RuntimeError(f"the runs executed different plans: {sorted(shapes)}")
    by_type: dict[tuple[str, str], float] = defaultdict(float)
    calls: Counter = Counter()  # per run
    nodes: dict[int, dict[str, Any]] = {}
    partition_us: list[list[float]] = [[0.0] * len(p) for p in recorded[0][2]]
    for r, (_, builtin, partitions) in enumerate(recorded):
        for node, tag, elapsed in builtin:
            by_type[(tag, "builtin")] += elapsed
            calls[(tag, "builtin")] += r == 0
            nodes.setdefault(node, {"type": tag, "us": 0.0})["us"] += elapsed
        for k, ops in enumerate(partitions):
            for j, (tag, elapsed) in enumerate(ops):
                by_type[(tag, "xnnpack")] += elapsed
                calls[(tag, "xnnpack")] += r == 0
                partition_us[k][j] += elapsed

    def ms(us: float) -> float:
        return round(us / runs / 1000, 4)

    rows = [{"type": tag, "kernel": kernel, "ms": ms(total), "calls": calls[(tag, kernel)]}
            for (tag, kernel), total in by_type.items()]
    rows.sort(key=lambda row: -row["ms"])
    builtin_ms = sum(row["ms"] for row in rows if row["kernel"] == "builtin")
    xnnpack_ms = sum(row["ms"] for row in rows if row["kernel"] == "xnnpack")
    partitions = []
    for k, ops in enumerate(recorded[0][2]):
        slowest = max(range(len(ops)), key=lambda j: partition_us[k][j])
        partitions.append({"xnnpack_ops": len(ops), "ms": ms(sum(partition_us[k])),
                           "slowest": [ops[slowest][0], ms(partition_us[k][slowest])]})
    return {
        "runs": runs, "invoke_ms": ms(sum(r[0] for r in recorded)),
        "ops_ms": round(builtin_ms + xnnpack_ms, 4), "builtin_ms": round(builtin_ms, 4),
        "xnnpack_ms": round(xnnpack_ms, 4), "by_type": rows,
        "builtin_nodes": {node: {"type": v["type"], "ms": ms(v["us"])}
                          for node, v in sorted(nodes.items())},
        "partitions": partitions}


def attach_profile(plan: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """Put each profiled partition's time on its delegate node in `plan` ("ms",
    "xnnpack_ops") and each builtin node's signature in `profile`; returns how the
    profiled plan differs from the interpreter's (then nothing is attached).

    The k-th partition that reported events is the k-th delegate node that has XNNPACK
    operators: one of only DEQUANTIZE ops (fp16 weights, folded into XNNPACK's static
    weights) runs none and reports nothing.
    """
    problems = []
    runs_ops = [p for p in plan["partitions"] if set(p["op_types"]) != {"DEQUANTIZE"}]
    if len(runs_ops) != len(profile["partitions"]):
        problems.append(f"{len(runs_ops)} partitions with operators in the interpreter, "
                        f"{len(profile['partitions'])} profiled")
    profiled = set(profile["builtin_nodes"])
    if set(plan["builtin_nodes"]) != profiled:
        problems.append(f"builtin nodes differ: interpreter only "
                        f"{sorted(set(plan['builtin_nodes']) - profiled)[:10]}, profiled "
                        f"only {sorted(profiled - set(plan['builtin_nodes']))[:10]}")
    if problems:
        return problems
    for partition in plan["partitions"]:
        partition.update(ms=0.0, xnnpack_ops=0)
    for partition, timed in zip(runs_ops, profile["partitions"]):
        partition.update(ms=timed["ms"], xnnpack_ops=timed["xnnpack_ops"])
    for node, timed in profile["builtin_nodes"].items():
        timed["signature"] = plan["builtin_nodes"][node]
    return []


__all__ = ["DELEGATE_OP", "attach_profile", "execution_plan", "interpreter_latency_ms",
           "profile_ops"]
