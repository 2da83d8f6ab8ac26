"""TF Serving's REST request and response bodies for slimbert's two signatures.

Predict (`POST /v1/models/<name>:predict`), row format:

    {"signature_name": "serving_default", "instances": ["a fine film", {"text": "dull"}]}
    -> {"predictions": [{"probabilities": [0.07, 0.93], "label": "fresh", "label_id": 1,
                         "classes": ["rotten", "fresh"]}, ...]}
    {"signature_name": "token_ids",
     "instances": [{"input_ids": [101, 2307, 102], "input_mask": [1, 1, 1],
                    "segment_ids": [0, 0, 0]}]}

columnar format: `{"inputs": ["a fine film"]}` or `{"inputs": {"text": [...]}}`
(`token_ids`: `{"inputs": {"input_ids": [[...]], "input_mask": ..., "segment_ids": ...}}`)
-> `{"outputs": {"probabilities": [[...]], "label": [...], "label_id": [...],
"classes": [[...]]}}`.

Classify (`POST /v1/models/<name>:classify`), raw text only:

    {"examples": [{"text": "a fine film"}], "context": {}}
    -> {"results": [[["rotten", 0.07], ["fresh", 0.93]]]}

Anything else is an `ApiError` (status 400) saying what is wrong and where, found while
parsing, before any instance reaches the model: among them a text holding a lone
surrogate (`"\\ud800"` is valid JSON but not Unicode). The checks of signatures, counts,
texts and token ids are `serve.validation`'s, which the gRPC API shares. Texts longer
than the model's sequence length are truncated by the tokenizer, as in training; token
ids longer than it are an error (cutting them would drop `[SEP]`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from data.features import INPUT_NAMES
from serve.model import TEXT_SIGNATURE, TokenIds
from serve.validation import (
    ApiError,
    Limits,
    check_count,
    check_signature,
    check_text,
    check_token_ids,
)

PREDICT_KEYS = ("signature_name", "instances", "inputs")
CLASSIFY_KEYS = ("signature_name", "examples", "context")


@dataclass(frozen=True)
class PredictRequest:
    signature: str
    instances: list[str] | list[TokenIds]
    columnar: bool


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        raise ApiError(400, f"JSON Parse error: {err}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"the request body must be a JSON object, found {_kind(payload)}")
    return payload


def _check_keys(payload: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = [key for key in payload if key not in allowed]
    if unknown:
        raise ApiError(400, f"unknown key {unknown[0]!r} in the request; expected "
                            f"{', '.join(repr(k) for k in allowed)}")


def _signature(payload: dict[str, Any], limits: Limits) -> str:
    name = payload.get("signature_name") or TEXT_SIGNATURE
    if not isinstance(name, str):
        raise ApiError(400, f"'signature_name' must be a string, found {_kind(name)}")
    return check_signature(name, limits)


def _batch(value: Any, where: str, limits: Limits) -> list:
    if not isinstance(value, list):
        raise ApiError(400, f"{where!r} must be a list, found {_kind(value)}")
    check_count(len(value), repr(where), limits)
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, dict) and list(value) == ["text"]:
        value = value["text"]
    if not isinstance(value, str):
        raise ApiError(400, f'{where}: expected a string or {{"text": string}}, found '
                            f"{_kind(value)}")
    return check_text(value, where)


def _token_ids(value: Any, where: str, limits: Limits) -> TokenIds:
    if not isinstance(value, dict) or sorted(value) != sorted(INPUT_NAMES):
        found = sorted(value) if isinstance(value, dict) else _kind(value)
        raise ApiError(400, f"{where}: expected an object with {', '.join(INPUT_NAMES)}, "
                            f"found {found}")
    return check_token_ids(value, where, limits)


def _columns(inputs: Any, signature: str) -> list:
    """Columnar `inputs` as a list of row-format instances."""
    if signature == TEXT_SIGNATURE:
        if isinstance(inputs, dict) and list(inputs) == ["text"]:
            return inputs["text"] if isinstance(inputs["text"], list) else inputs
        return inputs
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(INPUT_NAMES):
        found = sorted(inputs) if isinstance(inputs, dict) else _kind(inputs)
        raise ApiError(400, f"'inputs': expected an object with {', '.join(INPUT_NAMES)}, "
                            f"found {found}")
    columns = [inputs[name] for name in INPUT_NAMES]
    if not all(isinstance(column, list) for column in columns) \
            or len({len(column) for column in columns}) > 1:
        raise ApiError(400, "'inputs': input_ids, input_mask and segment_ids must be lists "
                            "of the same number of rows")
    return [dict(zip(INPUT_NAMES, row)) for row in zip(*columns)]


def parse_predict(payload: dict[str, Any], limits: Limits) -> PredictRequest:
    """A predict request body (row or columnar format) as validated instances."""
    _check_keys(payload, PREDICT_KEYS)
    signature = _signature(payload, limits)
    if ("instances" in payload) == ("inputs" in payload):
        raise ApiError(400, "Missing 'inputs' or 'instances' key" if "inputs" not in payload
                       else "Not formatted correctly expecting only one of 'inputs' or "
                            "'instances' keys exists")
    columnar = "inputs" in payload
    where = "inputs" if columnar else "instances"
    values = _columns(payload["inputs"], signature) if columnar else payload["instances"]
    values = _batch(values, where, limits)
    if signature == TEXT_SIGNATURE:
        instances = [_text(v, f"{where}[{i}]") for i, v in enumerate(values)]
    else:
        instances = [_token_ids(v, f"{where}[{i}]", limits) for i, v in enumerate(values)]
    return PredictRequest(signature, instances, columnar)


def parse_classify(payload: dict[str, Any], limits: Limits) -> list[str]:
    """The texts of a classify request's examples (each `{"text": ...}`, with `context`
    features added to every example)."""
    _check_keys(payload, CLASSIFY_KEYS)
    if _signature(payload, limits) != TEXT_SIGNATURE:
        raise ApiError(400, f"classify takes raw text: use the {TEXT_SIGNATURE!r} signature")
    context = payload.get("context", {})
    if not isinstance(context, dict):
        raise ApiError(400, f"'context' must be an object, found {_kind(context)}")
    if "examples" not in payload:
        raise ApiError(400, "Missing 'examples' key")
    texts = []
    for i, example in enumerate(_batch(payload["examples"], "examples", limits)):
        if not isinstance(example, dict):
            raise ApiError(400, f"examples[{i}]: expected an object, found {_kind(example)}")
        features = {**context, **example}
        value = features.get("text")
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if sorted(features) != ["text"] or not isinstance(value, str):
            raise ApiError(400, f'examples[{i}]: expected {{"text": string}}, found features '
                                f"{sorted(features)}")
        texts.append(check_text(value, f"examples[{i}]"))
    return texts


def _floats(values: np.ndarray) -> list[float]:
    """float32 values as their shortest decimal form (as TF Serving writes them)."""
    return [float(str(v)) for v in values.astype(np.float32)]


def predict_response(request: PredictRequest, probabilities: np.ndarray,
                     labels: list[str]) -> dict[str, Any]:
    """`{"predictions": [...]}` (row format) or `{"outputs": {...}}` (columnar)."""
    ids = probabilities.argmax(axis=-1).tolist()
    rows = [{"probabilities": _floats(p), "label": labels[i], "label_id": i,
             "classes": list(labels)} for p, i in zip(probabilities, ids)]
    if not request.columnar:
        return {"predictions": rows}
    return {"outputs": {key: [row[key] for row in rows] for key in rows[0]}}


def classify_response(probabilities: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """`{"results": [[[label, score], ...] per example]}` in the order of `labels`."""
    return {"results": [[[label, score] for label, score in zip(labels, _floats(p))]
                        for p in probabilities]}


__all__ = ["ApiError", "Limits", "PredictRequest", "classify_response", "parse_classify",
           "parse_json", "parse_predict", "predict_response"]
