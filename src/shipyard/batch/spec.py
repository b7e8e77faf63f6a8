"""What a batch run does (:class:`BatchSpec`) and its static rules (:func:`spec_problems`).

The CLI (``shipyard batch``), a BatchJob document and the SDK all build a BatchSpec and share
these rules; problems come back as ``(field, message)`` with the BatchSpec attribute name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

#: File formats read and written, by canonical name.
FORMATS = ("parquet", "csv", "jsonl")
#: Other spellings accepted for a format.
FORMAT_ALIASES = {"pq": "parquet", "ndjson": "jsonl", "json": "jsonl", "jsonlines": "jsonl"}
#: File name suffixes that say a file's format.
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl"}
#: The suffix written for each format (parts of a folder output, temporary files).
SUFFIX_OF = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
#: Keys of an errors-file line that carried columns do not overwrite.
ERROR_KEYS = ("row", "reason")


@dataclass
class BatchSpec:
    """One batch prediction: a model, an input, an output and how to run it."""

    #: A package folder or artifact path, a deployed InferenceService name, or an http(s)://host:port
    #: server URL (then ``model_name`` names the model).
    model: str
    #: Any fsspec URL or local path, or dataset://NAME/path: a file, a folder of files or a glob.
    input: str
    #: A file (written atomically at the end), or a folder of parts when it ends with '/'.
    output: str
    #: parquet | csv | jsonl; default: from the input's suffix (a folder: from its files).
    input_format: str | None = None
    #: Default: from the output's suffix, else the input's format.
    output_format: str | None = None
    #: Columns fed to the model (default: the model's declared columns, else every column but ``carry``).
    columns: list[str] | None = None
    #: Columns copied to the output unchanged (an id column).
    carry: list[str] = field(default_factory=list)
    #: Rows per chunk: the unit of progress, of resume and of one predict call.
    batch_size: int = 10_000
    #: In-process runs: worker processes, each loading the model once.
    workers: int = 1
    #: Only the first N rows (trying it out).
    limit: int | None = None
    #: Errors file URL (default: <output>.errors.jsonl).
    errors: str | None = None
    #: Fail the run when more rows failed than this: a count, or a fraction (< 1) of the rows read.
    max_errors: float | None = None
    #: Endpoint runs: the model's name on the server (default: the service name).
    model_name: str | None = None
    #: The InferenceService's namespace (a service name, or a gateway URL).
    namespace: str = "default"
    #: Endpoint runs: requests in flight.
    concurrency: int = 4
    #: Endpoint runs: rows per V2 request.
    request_rows: int = 256
    #: Endpoint runs: retries of a request that could not connect or got 502/503/504/429.
    retries: int = 3
    #: Endpoint runs: seconds one request may take.
    timeout_s: float = 60.0
    #: Model output (or expanded output column, e.g. predict_proba_1) -> output column name.
    output_columns: dict[str, str] | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [item.name for item in fields(cls)]


def normalise_format(name: str) -> str | None:
    """The canonical format name, or None when unknown."""
    key = name.strip().lower().lstrip(".")
    key = FORMAT_ALIASES.get(key, key)
    return key if key in FORMATS else None


def format_from_name(path: str) -> str | None:
    """The format a file name's suffix says, if any (``x.csv.gz`` is not read: compression is not supported)."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return SUFFIXES.get(name[dot:]) if dot > 0 else None


def is_url(text: str) -> bool:
    """An http(s) server URL (an endpoint model)."""
    return text.startswith(("http://", "https://"))


def is_folder_output(output: str) -> bool:
    return output.endswith("/")


def default_errors(output: str) -> str:
    """``<output>.errors.jsonl`` (a folder output: next to the folder)."""
    return output.rstrip("/") + ".errors.jsonl"


def parse_max_errors(text: str) -> float | int:
    """'100' -> 100, '0.05' -> 0.05, '5%' -> 0.05; ValueError with what is accepted."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            value: float | int = float(raw[:-1]) / 100
        elif raw.lstrip("+").isdigit():
            value = int(raw)
        else:
            value = float(raw)
    except ValueError:
        raise ValueError(f"'{text}' is not a count or a fraction; e.g. 100 (rows), 0.01 or 1%") from None
    if isinstance(value, float) and value.is_integer() and value >= 1:
        value = int(value)
    return value


def error_budget(max_errors: float | None, rows: int) -> float:
    """How many failed rows are allowed out of ``rows`` (infinity without a limit)."""
    if max_errors is None:
        return float("inf")
    if isinstance(max_errors, float) and max_errors < 1:
        return max_errors * rows
    return float(max_errors)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(problems: list[tuple[str, str]], key: str, value: Any, allow_none: bool) -> None:
    if value is None:
        if not allow_none:
            problems.append((key, "must be a list of column names"))
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        problems.append((key, f"must be a list of column names (non-empty strings), got {value!r}"))
        return
    if allow_none and not value:
        problems.append((key, "names no column; leave it out to use the default"))
    repeated = sorted({item for item in value if list(value).count(item) > 1})
    if repeated:
        problems.append((key, f"names column '{repeated[0]}' twice"))


def spec_problems(spec: BatchSpec) -> list[tuple[str, str]]:
    """Everything wrong with ``spec`` that can be told without reading anything: (field, message)."""
    problems: list[tuple[str, str]] = []
    for key in ("model", "input", "output"):
        value = getattr(spec, key)
        if not isinstance(value, str) or not value.strip():
            what = "a model path, service name or URL" if key == "model" else "a file, folder or URL"
            problems.append((key, f"is required ({what})" + (f", got {value!r}" if value else "")))
    if isinstance(spec.input, str) and isinstance(spec.output, str) and spec.input.strip() and \
            spec.input.rstrip("/") == spec.output.rstrip("/"):
        problems.append(("output", "is the input; write the predictions somewhere else"))
    for key in ("input_format", "output_format"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, str) or normalise_format(value) is None):
            problems.append((key, f"unknown format {value!r}; expected one of: {', '.join(FORMATS)}"))
    if spec.output_format is None and isinstance(spec.output, str) and spec.output.strip() and \
            not is_folder_output(spec.output) and format_from_name(spec.output) is None:
        problems.append(("output_format", f"cannot tell the output format from '{spec.output}'; end it in "
                                          ".parquet, .csv or .jsonl, or give the format"))
    _names(problems, "columns", spec.columns, allow_none=True)
    _names(problems, "carry", spec.carry, allow_none=False)
    for key, minimum in (("batch_size", 1), ("workers", 1), ("concurrency", 1), ("request_rows", 1),
                         ("retries", 0)):
        value = getattr(spec, key)
        if not _is_int(value) or value < minimum:
            problems.append((key, f"must be an integer of at least {minimum}, got {value!r}"))
    if spec.limit is not None and (not _is_int(spec.limit) or spec.limit < 1):
        problems.append(("limit", f"must be a number of rows of at least 1, got {spec.limit!r}"))
    if spec.max_errors is not None:
        value = spec.max_errors
        if not _is_number(value) or value < 0 or (isinstance(value, float) and value >= 1 and not value.is_integer()):
            problems.append(("max_errors", f"must be a count of rows (0 or more) or a fraction below 1, got {value!r}"))
    if not _is_number(spec.timeout_s) or spec.timeout_s <= 0:
        problems.append(("timeout_s", f"must be a number of seconds above 0, got {spec.timeout_s!r}"))
    if spec.errors is not None and (not isinstance(spec.errors, str) or not spec.errors.strip()):
        problems.append(("errors", f"must be a file or URL, got {spec.errors!r}"))
    if spec.model_name is not None and (not isinstance(spec.model_name, str) or not spec.model_name.strip()):
        problems.append(("model_name", f"must be a model name, got {spec.model_name!r}"))
    if not isinstance(spec.namespace, str) or not spec.namespace.strip():
        problems.append(("namespace", f"must be a namespace name, got {spec.namespace!r}"))
    if spec.output_columns is not None:
        mapping = spec.output_columns
        if not isinstance(mapping, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                    for k, v in mapping.items()):
            problems.append(("output_columns", f"must map output names to column names (strings), got {mapping!r}"))
        else:
            targets = list(mapping.values())
            twice = sorted({name for name in targets if targets.count(name) > 1})
            if twice:
                problems.append(("output_columns", f"two outputs would be written as column '{twice[0]}'"))
            clash = sorted(set(targets) & set(spec.carry or [])) if isinstance(spec.carry, list) else []
            if clash:
                problems.append(("output_columns", f"'{clash[0]}' is a carried column already"))
    return problems
