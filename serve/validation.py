"""What a request may hold, checked the same way whichever API it came by (REST's JSON in
`serve.rest`, gRPC's protos in `serve.grpc_api`): the signature, the number of instances,
each text and each token-id instance. A check that fails raises `ApiError` saying what is
wrong and where (`where` names the field in the client's own terms), before any instance
reaches the model.

Example:
    >>> limits = Limits(("serving_default",), max_instances=256, max_seq_length=128,
    ...                 vocab_size=30522)
    >>> check_text(b"caf\\xe9", "inputs['text'][0]")
    ApiError: inputs['text'][0]: text is not valid UTF-8 (unexpected end of data: byte 0xE9
    at position 3)
"""

from __future__ import annotations

from dataclasses import dataclass

from data.features import INPUT_NAMES
from export.predictor import invalid_unicode
from serve.model import TEXT_SIGNATURE, TokenIds


class ApiError(Exception):
    """A request the server refuses: HTTP `status` (gRPC maps it to its status code) and
    the message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Limits:
    """What a request may hold.

    Attributes:
        signatures: the signature names served.
        max_instances: most instances (examples) per request.
        max_seq_length: longest token-id instance.
        vocab_size: `input_ids` must be below it.
    """

    signatures: tuple[str, ...]
    max_instances: int
    max_seq_length: int
    vocab_size: int


def check_signature(name: str, limits: Limits) -> str:
    """The signature `name` asks for (empty: `serving_default`), if served."""
    name = name or TEXT_SIGNATURE
    if name not in limits.signatures:
        raise ApiError(400, f'Serving signature name: "{name}" not found in signature def '
                            f"(this model has {', '.join(limits.signatures)})")
    return name


def check_count(count: int, where: str, limits: Limits) -> None:
    """A request's number of instances (in its field `where`): at least one, at most
    `max_instances`."""
    if count == 0:
        raise ApiError(400, f"{where} is empty: nothing to predict")
    if count > limits.max_instances:
        raise ApiError(400, f"{where}: {count} instances in one request; at most "
                            f"{limits.max_instances} (the server's --max-instances)")


def check_text(text: str | bytes, where: str) -> str:
    """`text` as a str, unless it is not valid Unicode: a str holding a lone surrogate
    (JSON's `"\\ud800"` spells one) or bytes that are not UTF-8 (a DT_STRING tensor).
    Its request is refused here rather than failing in the model, with the other requests
    of its batch; replacing the bad part instead would classify a text the client did not
    send."""
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ApiError(400, f"{where}: text is not valid UTF-8 ({err.reason}: byte "
                                f"0x{text[err.start]:02X} at position {err.start})") from None
    if problem := invalid_unicode(text):
        raise ApiError(400, f"{where}: text is not valid Unicode ({problem})")
    return text


def check_token_ids(rows: dict[str, list], where: str, limits: Limits) -> TokenIds:
    """One token-id instance ({input_ids, input_mask, segment_ids: lists of ints}): ids
    below the vocabulary size, mask and segment 0 or 1 (BERT's two), 1 to
    `max_seq_length` of each, equal lengths, at least one token marked 1."""
    checked = []
    for name, upper in zip(INPUT_NAMES, (limits.vocab_size, 2, 2)):
        row = rows[name]
        if not isinstance(row, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < upper
                for v in row):
            raise ApiError(400, f"{where}.{name}: expected a list of integers in "
                                f"[0, {upper})")
        if not 1 <= len(row) <= limits.max_seq_length:
            raise ApiError(400, f"{where}.{name}: {len(row)} ids; expected 1 to "
                                f"{limits.max_seq_length} (the model's sequence length)")
        checked.append(row)
    if len({len(row) for row in checked}) > 1:
        raise ApiError(400, f"{where}: input_ids, input_mask and segment_ids differ in length")
    if not any(checked[1]):
        raise ApiError(400, f"{where}.input_mask: no token is marked 1")
    return checked[0], checked[1], checked[2]


__all__ = ["ApiError", "Limits", "check_count", "check_signature", "check_text",
           "check_token_ids"]
