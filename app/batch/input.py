"""The body of `POST /batch` (JSON rows, or a multipart upload with form fields) -> a `PreparedBatch`.

Everything is checked before anything runs: the rows (`ensemble.datasets`, which names the row and
field), their count and lengths, and the members/prompts/decoding/vote (`QAService.resolve`, shared with
/answer) and min_confidence (the request's, else the server's).
A problem is one typed error (`BatchInputError`, or FastAPI's `RequestValidationError` for option fields), so
a bad batch never starts. Reading the bytes off the wire is the route's job; running the batch is
`app.batch.result`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from json import JSONDecodeError
from typing import Any, Literal, TypeVar

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

import bounded_json
from app.schemas import BatchFormRequest, BatchOptionsRequest, BatchRequest
from app.service import QAService, RequestLimitError
from ensemble.batch import BatchOptions
from ensemble.datasets import DataFormatError, QAExample, load_examples, parse_rows

Source = Literal["file", "rows"]
T = TypeVar("T")
_LIST_FIELDS = ("adapters", "prompts")
_JSON_FIELDS = ("decoding", "vote")


class BatchInputError(ValueError):
    """A batch that cannot run as sent; `detail` names the field and, where known, the row (line, id)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 422,
        error_type: str,
        field: str,
        row: int | None = None,
        line: int | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.detail: dict[str, object] = {"field": field, "row": row}
        if line is not None:
            self.detail["line"] = line
        if id is not None:
            self.detail["id"] = id


@dataclass(frozen=True)
class PreparedBatch:
    """A validated batch, ready to run now or as a job."""

    examples: list[QAExample]
    options: BatchOptions
    explain: bool
    lengths: tuple[int, ...] | None = None
    """Per row, tokens of its context and question (counted by the checks): what its chunks are cut by."""


@dataclass(frozen=True)
class ReceivedBatch:
    """A `/batch` body as read off the wire, not yet checked: JSON rows, or one uploaded file and its options.

    Reading it needs no model; `prepare` (the rows, their lengths in tokens, the members) needs the service.
    The Ray Serve ingress (`deploy`) reads it and hands it to a model replica, which prepares it.
    """

    json_body: bytes | None = None
    """The JSON body, when the request was application/json."""
    upload: bytes | None = None
    """The uploaded file's bytes, when the request was multipart/form-data."""
    filename: str | None = None
    form: BatchFormRequest | None = None
    """The form's options beside the upload."""

    def prepare(self, service: QAService) -> PreparedBatch:
        if self.json_body is not None:
            return from_json(self.json_body, service)
        if self.upload is None or self.form is None:
            raise ValueError("a ReceivedBatch holds a JSON body or an upload with its form")
        return from_upload(self.upload, self.filename, self.form, service)

    @property
    def adapters(self) -> list[str] | None:
        """The members the batch names, read without validating anything (None: the default, or unreadable).

        Only a routing hint for the Ray Serve ingress: `prepare` checks the real thing.
        """
        if self.form is not None:
            return self.form.adapters
        try:
            document = bounded_json.loads(self.json_body or b"")
        except ValueError:  # not UTF-8, not JSON, or past its bounds
            return None
        names = document.get("adapters") if isinstance(document, dict) else None
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return names
        return None


def from_json(body: bytes, service: QAService) -> PreparedBatch:
    """`{"rows": [...], "adapters"?, "prompts"?, "decoding"?, "vote"?, "min_confidence"?, "strategies"?,
    "explain"?, "metric"?}`."""
    try:
        document = bounded_json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HTTPException(400) from exc  # the same "not UTF-8 JSON" error /answer gives
    except JSONDecodeError as exc:  # malformed, or nested too deep / an integer too long (JSONLimitError)
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}]) from exc
    request = _validated(BatchRequest.model_validate, document)
    _check_count(len(request.rows), "rows", service)  # before validating thousands of rows
    try:
        examples = parse_rows(request.rows)
    except DataFormatError as exc:
        raise _invalid_data(exc, "rows") from exc
    return prepare(service, examples, request, source="rows")


def form_options(form: FormData) -> tuple[BatchFormRequest, UploadFile]:
    """The options among the form fields (lists comma-separated, decoding and vote as JSON) and the one
    upload."""
    uploads = form.getlist("file")
    if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
        raise BatchInputError(
            "file: send exactly one uploaded file in the form field 'file'",
            error_type="invalid_file",
            field="file",
        )
    fields: dict[str, object] = {}
    for key in dict.fromkeys(form.keys()):
        values = form.getlist(key)
        if key == "file":
            continue
        if len(values) != 1 or not isinstance(values[0], str):
            error = {
                "type": "value_error",
                "loc": ("body", key),
                "msg": "give it once, as text",
                "input": None,
            }
            raise RequestValidationError([error])
        text = values[0].strip()
        if not text:
            continue  # an empty field means the default, as HTML forms send unset fields
        if key in _LIST_FIELDS:
            fields[key] = [name.strip() for name in text.split(",")]
        elif key in _JSON_FIELDS:
            fields[key] = _json_or_text(text)
        else:
            fields[key] = text
    return _validated(BatchFormRequest.model_validate, fields), uploads[0]


def from_upload(
    data: bytes, filename: str | None, options: BatchFormRequest, service: QAService
) -> PreparedBatch:
    """An uploaded file; its name only picks the format (by extension) and is never opened as a path."""
    try:
        examples = load_examples(data, format=options.format, filename=filename)
    except DataFormatError as exc:
        raise _invalid_data(exc, "file") from exc
    return prepare(service, examples, options, source="file")


def prepare(
    service: QAService, examples: list[QAExample], request: BatchOptionsRequest, *, source: Source
) -> PreparedBatch:
    """Check the row count and lengths, resolve members/prompts/decoding; raises before anything runs."""
    _check_count(len(examples), source, service)
    lengths = []
    for n, ex in enumerate(examples, start=1):
        _check_text(ex, n, source)
        try:
            lengths.append(service.check_lengths(ex.context, ex.question))
        except RequestLimitError as exc:
            raise BatchInputError(
                f"{source}: question {n} (id {ex.id!r}), field '{exc.field}': {str(exc).split(': ', 1)[1]}",
                status=413,
                error_type="payload_too_large",
                field=exc.field,
                row=n,
                id=ex.id,
            ) from exc
    plan = service.resolve(request.adapters, request.prompts, request.decoding, request.vote)
    strategies = request.strategies
    if strategies is None:
        strategies = all(ex.answers for ex in examples)
    options = BatchOptions(
        members=plan.members,
        prompts=plan.prompts,
        decoding=plan.decoding,
        strategies=strategies,
        chunks=service.chunk_limits(),
        metric=request.metric,
        vote=plan.vote,
        min_confidence=service.min_confidence(request.min_confidence),
    )
    return PreparedBatch(examples=examples, options=options, explain=request.explain, lengths=tuple(lengths))


def _check_text(ex: QAExample, n: int, source: Source) -> None:
    # JSON escapes can smuggle lone surrogates into strings: not text, and not encodable in the answer either.
    for name, text in (
        ("id", ex.id),
        ("context", ex.context),
        ("question", ex.question),
        ("answers", ex.answers),
    ):
        for value in [text] if isinstance(text, str) else list(text):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BatchInputError(
                    f"{source}: question {n}, field '{name}': not valid Unicode text (a lone surrogate)",
                    error_type=f"invalid_{source}",
                    field=name,
                    row=n,
                ) from None


def _check_count(count: int, source: Source, service: QAService) -> None:
    limit = service.settings.batch_max_rows
    if count == 0:
        raise BatchInputError(f"{source}: no rows to answer", error_type=f"invalid_{source}", field=source)
    if count > limit:
        raise BatchInputError(
            f"{source}: {count} rows, more than the limit of {limit}",
            status=413,
            error_type="payload_too_large",
            field=source,
        )


def _invalid_data(exc: DataFormatError, source: Source) -> BatchInputError:
    # File-level problems (not UTF-8, malformed JSON, an empty file) have no column: name the upload itself.
    return BatchInputError(
        f"{source}: {exc}",
        error_type=f"invalid_{source}",
        field=exc.field or source,
        row=exc.row,
        line=exc.line,
    )


def _validated(validate: Callable[[Any], T], value: object) -> T:
    try:
        return validate(value)
    except ValidationError as exc:  # reported like FastAPI's own body errors: 422 naming each field
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


def _json_or_text(text: str) -> object:
    try:
        return bounded_json.loads(text)
    except JSONDecodeError:  # malformed or past its bounds (`bounded_json.JSONLimitError`)
        return text  # pydantic then says the field must be an object, naming it
