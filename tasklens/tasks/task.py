"""`Task`: the plain-data description of one task (prompts, answers, extras)."""

from __future__ import annotations

import codecs
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tasklens.errors import TasklensError, check_seed


@dataclass(frozen=True)
class Task:
    """One task: prompts and the answers a model should continue them with.

    Attributes:
        name: short identifier, e.g. ``"capital_of"``.
        prompts: the prompts, one string each.
        answers: the expected continuation of each prompt (any number of tokens).
            Answers are appended to the prompt as-is, so include a leading space
            where the tokenizer expects one (``" Paris"``).
        corrupted_prompts: optional counterfactual prompts, one per prompt, for
            patching methods; ideally the same length in tokens as the clean one.
        markers: prompt-format marker strings (e.g. ``"[INST]"``, ``"Q:"``) whose
            tokens CGVST scores.
        language: ISO 639-1 code of the prompts' language.
        split: which part of the data this is (``"detection"``, ``"evaluation"``...).
        subjects: optional subject of each prompt (the entity asked about), used to
            keep splits free of shared subjects.
        templates: optional id of the template each prompt was made from.
        meta: free-form task-level information (source package, relation, ...).
    """

    name: str
    prompts: Sequence[str]
    answers: Sequence[str]
    corrupted_prompts: Sequence[str] | None = None
    markers: Sequence[str] = ()
    language: str = "en"
    split: str = "all"
    subjects: Sequence[str] | None = None
    templates: Sequence[int] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompts", "answers", "corrupted_prompts", "markers", "subjects", "templates"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                if isinstance(value, str):
                    raise TasklensError(
                        f"Task {self.name!r}: {name} must be a sequence of strings, not one "
                        f"string; wrap it in a list: [{value!r}]"
                    )
                _check_sequence(self.name, name, value)
                object.__setattr__(self, name, tuple(value))
        self._validate()
        _warn_duplicates(self)

    def _validate(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise TasklensError("A Task needs a non-empty string name, e.g. Task('capital_of', ...)")
        n = len(self.prompts)
        if n == 0:
            raise TasklensError(f"Task {self.name!r} has no prompts; give at least one prompt and its answer")
        if len(self.answers) != n:
            raise TasklensError(
                f"Task {self.name!r} has {n} prompts but {len(self.answers)} answers; "
                "give exactly one answer per prompt"
            )
        for kind, values in (("prompt", self.prompts), ("answer", self.answers)):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise TasklensError(
                        f"Task {self.name!r}: {kind} {i} is {type(value).__name__}, not a string"
                    )
                if not value.strip():
                    raise TasklensError(
                        f"Task {self.name!r}: {kind} {i} is empty; every {kind} needs text "
                        f"(prompt {i}: {self.prompts[i]!r})"
                    )
        for name in ("corrupted_prompts", "subjects", "templates"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise TasklensError(
                    f"Task {self.name!r} has {n} prompts but {len(values)} {name}; give one per prompt"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        """One line: name, size, split and the first prompt with its answer (not the data)."""
        first = f"{self.prompts[0]!r} -> {self.answers[0]!r}"
        if len(first) > 70:
            first = first[:67] + "..."
        prompts = "1 prompt" if len(self) == 1 else f"{len(self)} prompts"
        return f"Task({self.name!r}, {prompts}, split={self.split!r}, e.g. {first})"

    # --- construction -----------------------------------------------------------
    @classmethod
    def from_lists(cls, name: str, prompts: Iterable[str], answers: Iterable[str], **extras: Any) -> Task:
        """Build a task from Python lists of prompts and answers (extras as keywords); a pandas
        column is a list too, a whole DataFrame goes to `from_dataset`."""
        _check_sequence(name, "prompts", prompts)
        _check_sequence(name, "answers", answers)
        return cls(name=name, prompts=tuple(prompts), answers=tuple(answers), **extras)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        name: str,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        corrupted_column: str | None = None,
        subject_column: str | None = None,
        **extras: Any,
    ) -> Task:
        """Build a task from a Hugging Face ``datasets.Dataset`` or a pandas ``DataFrame``, naming
        its columns (only those columns are read; each value must be text)."""
        source = extras.pop("source", f"Dataset for task {name!r}")
        dataset = _by_column(dataset)
        columns = list(dataset.column_names)
        wanted = {"prompt_column": prompt_column, "answer_column": answer_column}
        if corrupted_column:
            wanted["corrupted_column"] = corrupted_column
        if subject_column:
            wanted["subject_column"] = subject_column
        for arg, column in wanted.items():
            if column not in columns:
                raise TasklensError(
                    f"{source} has no column {column!r} (columns: {columns}); "
                    f"pass {arg}= with the right column name"
                )

        def column(key: str, what: str) -> tuple[str, ...]:
            return tuple(_text(value, row, key, what, source) for row, value in enumerate(dataset[key], 1))

        return cls(
            name=name,
            prompts=column(prompt_column, "prompt"),
            answers=column(answer_column, "answer"),
            corrupted_prompts=column(corrupted_column, "corrupted prompt") if corrupted_column else None,
            subjects=column(subject_column, "subject") if subject_column else None,
            **extras,
        )

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None, **columns: Any) -> Task:
        """Build a task from a local JSONL (one JSON object per line), JSON (an array of
        objects, or an object holding one) or CSV file.

        The file needs a ``prompt`` and an ``answer`` column (rename with
        ``prompt_column=`` / ``answer_column=``); other columns are ignored. Values are
        the text written in the file: a JSON number ``4.50`` is the text ``"4.50"``, and
        other non-strings (``true``, lists) are refused. The task is named after the file
        unless ``name`` is given. The file is read anew on every call (no cache).
        """
        path = Path(path)
        check_task_path(path)
        return cls.from_dataset(
            _Records(read_rows(path)), name=name or path.stem, source=f"Task file {str(path)!r}", **columns
        )

    # --- derived ------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """How the task appears in an artifact's provenance: name, data hash, size."""
        return {"task": self.name, "task_hash": self.data_hash(), "n_prompts": len(self)}

    def data_hash(self) -> str:
        """SHA-256 of the prompts, answers and corrupted prompts: the provenance key."""
        payload = json.dumps(
            [self.prompts, self.answers, self.corrupted_prompts], ensure_ascii=False
        ).encode()
        return hashlib.sha256(payload).hexdigest()

    def subset(self, indices: Iterable[int], split: str | None = None) -> Task:
        """The task restricted to the given prompt indices."""
        idx = list(indices)

        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[i] for i in idx)

        return replace(
            self,
            prompts=pick(self.prompts),
            answers=pick(self.answers),
            corrupted_prompts=pick(self.corrupted_prompts),
            subjects=pick(self.subjects),
            templates=pick(self.templates),
            split=split or self.split,
        )

    def marked(self, markers: Sequence[str]) -> Task:
        """The prompts containing at least one of ``markers``, with ``markers`` set (for CGVST)."""
        keep = [i for i, p in enumerate(self.prompts) if any(m in p for m in markers)]
        if not keep:
            raise TasklensError(f"Task {self.name!r}: no prompt contains any of the markers {list(markers)}")
        return replace(self.subset(keep), markers=tuple(markers))

    def __add__(self, other: Task) -> Task:
        """The prompts of both parts of one task (e.g. its detection and evaluation splits)."""
        if not isinstance(other, Task):
            return NotImplemented
        if (other.name, tuple(other.markers), other.language) != (
            self.name,
            tuple(self.markers),
            self.language,
        ):
            raise TasklensError(
                f"Only parts of one task can be added: {self.name!r} ({self.language}, markers "
                f"{list(self.markers)}) and {other.name!r} ({other.language}, markers {list(other.markers)})"
            )

        def join(a: Sequence | None, b: Sequence | None) -> tuple | None:
            return None if a is None or b is None else (*a, *b)

        return replace(
            self,
            prompts=(*self.prompts, *other.prompts),
            answers=(*self.answers, *other.answers),
            corrupted_prompts=join(self.corrupted_prompts, other.corrupted_prompts),
            subjects=join(self.subjects, other.subjects),
            templates=join(self.templates, other.templates),
            split=self.split if self.split == other.split else f"{self.split}+{other.split}",
        )

    def sample(self, n: int, seed: int = 0) -> Task:
        """A deterministic sample of at most ``n`` prompts, in task order (all when ``n`` is larger)."""
        import random

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TasklensError(f"Cannot sample {n!r} prompts from task {self.name!r}; ask for at least 1")
        seed = check_seed(seed)
        if len(self) <= n:
            return self
        return self.subset(sorted(random.Random(seed).sample(range(len(self)), n)))

    def head(self, n: int) -> Task:
        """The first ``n`` prompts (all of them when ``n`` is larger)."""
        return self.subset(range(min(n, len(self))))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        data = asdict(self)
        data["meta"] = dict(self.meta)
        return data


def check_task(value: Any) -> Task:
    """``value`` if it is a `Task`; otherwise a clear error saying how to make one."""
    if isinstance(value, Task):
        return value
    hint = ""
    if isinstance(value, str):
        hint = (
            f" (for the built-in task, load_builtin({value!r}, 'detection'); for a file, Task.from_file(...))"
        )
    raise TasklensError(f"Expected a tasklens Task, got {type(value).__name__} {value!r:.60}{hint}")


def _check_sequence(task: str, field_name: str, value: Any) -> None:
    """Refuse a container whose iteration is not its values: a DataFrame (its column names), a dict
    (its keys), a set (no order)."""
    kind = type(value).__name__
    if kind == "DataFrame":
        raise TasklensError(
            f"Task {task!r}: {field_name} is a DataFrame (iterating it gives its column names); pass one "
            "column (frame['prompt']) or build the task with Task.from_dataset(frame, name)"
        )
    if isinstance(value, Mapping):
        raise TasklensError(
            f"Task {task!r}: {field_name} is a {kind} (iterating it gives its keys); pass a list of strings, "
            "or build the task with Task.from_dataset(...)"
        )
    if isinstance(value, set | frozenset):
        raise TasklensError(f"Task {task!r}: {field_name} is a {kind}, which has no order; pass a list")
    if not isinstance(value, Iterable):
        raise TasklensError(
            f"Task {task!r}: {field_name} must be a list of strings, got {kind} {value!r:.40}"
        )


def _warn_duplicates(task: Task) -> None:
    """Name, once per task's data, prompt-answer pairs given more than once (each would count as
    another prompt in every interval and test) and prompts given different answers."""
    import warnings
    from collections import Counter

    from tasklens.errors import TasklensWarning

    pairs = Counter(zip(task.prompts, task.answers, strict=True))
    repeated = [p for p, n in pairs.items() if n > 1]
    answers: dict[str, set[str]] = {}
    for prompt, answer in pairs:
        answers.setdefault(prompt, set()).add(answer)
    ambiguous = [p for p, a in answers.items() if len(a) > 1]
    if not (repeated or ambiguous):
        return
    key = (task.name, task.data_hash())
    if key in _WARNED:
        return
    _WARNED.add(key)
    if repeated:
        extra = sum(pairs[p] - 1 for p in repeated)
        warnings.warn(
            f"Task {task.name!r} repeats {extra} prompt-answer pair(s) (first: {repeated[0][0]!r}); each "
            "copy counts as another prompt in intervals and tests, which overstates their precision: drop "
            "the copies unless they are meant",
            TasklensWarning,
            stacklevel=4,
        )
    if ambiguous:
        warnings.warn(
            f"Task {task.name!r} gives {len(ambiguous)} prompt(s) different answers (first: "
            f"{ambiguous[0]!r}: {sorted(answers[ambiguous[0]])}); a model can answer only one of them right",
            TasklensWarning,
            stacklevel=4,
        )


_WARNED: set[tuple[str, str]] = set()


def _by_column(dataset: Any):
    """``dataset`` read by column (``column_names``, ``dataset[column]``): a ``datasets.Dataset`` as
    it is, a pandas DataFrame through its columns; anything else is refused."""
    if type(dataset).__name__ == "DataFrame" and hasattr(dataset, "columns"):
        columns = [str(c) for c in dataset.columns]
        rows = [dict(zip(columns, row, strict=True)) for row in dataset.itertuples(index=False)]
        return _Records(rows, columns)
    if isinstance(dataset, _Records) or (
        hasattr(dataset, "column_names") and hasattr(dataset, "__getitem__")
    ):
        return dataset
    raise TasklensError(
        f"Task.from_dataset takes a pandas DataFrame or a datasets.Dataset with named columns, got "
        f"{type(dataset).__name__} {dataset!r:.60}; for lists use Task.from_lists, for a file Task.from_file"
    )


class _Records:
    """A task file's rows, read by column like a ``datasets.Dataset`` (a missing key is None)."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
        self.rows = rows
        self.column_names = (
            columns if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
        )

    def __getitem__(self, column: str) -> list[Any]:
        return [row.get(column) for row in self.rows]


class _Number(str):
    """A JSON number as the text written in the file."""


#: `json.loads` keywords that keep numbers as written and turn NaN / Infinity into floats
#: (refused by `_text`, with the row and column)
_AS_WRITTEN = {"parse_int": _Number, "parse_float": _Number, "parse_constant": float}


def _text(value: Any, row: int, column: str, what: str, source: str) -> str:
    """``value`` of ``column`` in ``row`` as text, or an error naming the row, column and fix."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TasklensError(
            f"{source}: row {row} has no {what} (column {column!r} is empty or null); "
            f"every row needs one: fill it in or remove the row"
        )
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):  # a Dataset's integer column
        return str(value)
    where = f"{source}: row {row}, column {column!r}"
    if isinstance(value, float) and not math.isfinite(value):
        raise TasklensError(
            f"{where} is {json.dumps(value)} (a missing value?), not text; fill in the {what} "
            "or remove the row"
        )
    if isinstance(value, bool | float):
        literal = json.dumps(value)
        raise TasklensError(
            f"{where} holds {type(value).__name__} {literal}, not text; write the {what} as a string "
            f"in quotes, e.g. {json.dumps(literal)}"
        )
    raise TasklensError(
        f"{where} holds a {type(value).__name__} ({str(value)[:40]}), not text; give one {what} per row, "
        'as a string in quotes (e.g. " Paris")'
    )


def check_task_path(path: Path) -> None:
    """Refuse a task path that is not an existing file, saying what it is instead."""
    if path.is_dir():
        raise TasklensError(
            f"Task file {str(path)!r} is a folder, not a file; give the path of a .jsonl, .json or .csv "
            "file (inside it, if that is where the task is)"
        )
    if not path.is_file():
        raise TasklensError(f"Task file {str(path)!r} does not exist; check the path")


#: the suffixes of the task files tasklens reads
TASK_FILE_SUFFIXES = (".jsonl", ".json", ".csv")


def is_task_file(spec: str) -> bool:
    """Whether a task spec names a file (by its suffix, or because it exists) rather than a
    built-in task."""
    return spec.endswith(TASK_FILE_SUFFIXES) or Path(spec).is_file()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL, JSON or CSV task file, values as written (CSV cells as text,
    JSON numbers as `_Number` text), with errors that name the line."""
    where = f"Task file {str(path)!r}"
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise TasklensError(f"{where} has suffix {path.suffix!r}; use .jsonl, .json or .csv")
    text = _decode(path.read_bytes(), where)
    if not text.strip():
        raise TasklensError(f"{where} is empty; it needs one record per line with 'prompt' and 'answer'")
    if suffix == ".csv":
        return _csv_rows(text, where)
    rows = _json_rows(text, where) if suffix == ".json" else None
    if rows is None:
        rows = _json_lines(text, where)
    for number, row in enumerate(rows, start=1):
        if isinstance(row, list) and suffix == ".jsonl":
            raise TasklensError(_pretty_jsonl(where))
        if not isinstance(row, dict):
            raise TasklensError(
                f"{where}: record {number} is {type(row).__name__}, not an object; "
                'write each record as {"prompt": ..., "answer": ...}'
            )
    return rows


#: byte-order marks and the encodings they announce (UTF-32 first: its little-endian mark
#: begins with UTF-16's)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _decode(data: bytes, where: str) -> str:
    """A task file's text: UTF-8, or the UTF-16 / UTF-32 its byte-order mark announces (as
    Windows editors save "Unicode" text); anything else is refused naming the fix."""
    bom, encoding = next(((b, e) for b, e in _BOMS if data.startswith(b)), (b"", "utf-8"))
    try:
        text = data[len(bom) :].decode(encoding)
    except UnicodeDecodeError as error:
        at = len(bom) + error.start
        what, guess = ("UTF-8", "latin-1 or Windows-1252 text?")
        if bom:
            what, guess = (f"valid {encoding.upper()}", "the file is cut short?")
        raise TasklensError(
            f"{where} is not {what} (byte {at} is {data[at : at + 1]!r}; {guess}); re-save it as UTF-8"
        ) from error
    if encoding == "utf-8" and "\0" in text:
        raise TasklensError(
            f"{where} holds NUL bytes (UTF-16 or UTF-32 text without a byte-order mark?); re-save it as UTF-8"
        )
    return text


def _csv_rows(text: str, where: str) -> list[dict[str, Any]]:
    import csv
    import io

    # csv refuses fields over 131,072 characters (a process-wide limit); no field is longer than the file
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text)))
    try:
        return _csv_records(csv.DictReader(io.StringIO(text, newline="")), where)
    except csv.Error as error:
        raise TasklensError(
            f"{where} is not valid CSV ({error}); fix it there or save the task as JSONL"
        ) from error
    finally:
        csv.field_size_limit(limit)


def _csv_records(reader, where: str) -> list[dict[str, Any]]:
    rows = []
    for row in reader:
        if None in row:  # more fields than the header names
            raise TasklensError(
                f"{where}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields but the "
                f"header has {len(reader.fieldnames)} ({', '.join(reader.fieldnames)}); put text that "
                'holds a comma in double quotes ("Paris, France")'
            )
        rows.append({k: (v if v != "" else None) for k, v in row.items()})
    if not rows:
        raise TasklensError(
            f"{where} has a header ({', '.join(reader.fieldnames or [])}) but no rows; add one row per prompt"
        )
    return rows


def _json_rows(text: str, where: str) -> list[Any] | None:
    """The records of a whole-file JSON value (an array, an object holding one array of
    objects, or one object); None when the file holds several values (JSON lines)."""
    try:
        data = json.loads(text, **_AS_WRITTEN)
    except RecursionError as error:
        raise TasklensError(_too_deep(where)) from error
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return None
        raise TasklensError(
            f"{where} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); fix it "
            'there: the file should hold an array of objects like [{"prompt": ..., "answer": ...}]'
        ) from error
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise TasklensError(
            f"{where} holds a JSON {type(data).__name__}, not records; write an array of objects like "
            '[{"prompt": ..., "answer": ...}]'
        )
    lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    if len(lists) > 1:
        raise TasklensError(
            f"{where} holds several lists of records ({', '.join(lists)}); keep the task's records in "
            "one list, or save each list as its own file"
        )
    return data[lists[0]] if lists else [data]


def _json_lines(text: str, where: str) -> list[Any]:
    rows = []
    # records end at a newline only: JSON strings may hold U+2028, U+0085 and the other line breaks
    # that str.splitlines() would split at (json.dumps(..., ensure_ascii=False) writes them raw);
    # a raw carriage return is never inside a JSON string
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, **_AS_WRITTEN))
        except RecursionError as error:
            raise TasklensError(_too_deep(f"{where}, line {number}")) from error
        except ValueError as error:
            if line.strip() in ("{", "[", "[{"):
                raise TasklensError(_pretty_jsonl(where)) from error
            raise TasklensError(
                f"{where}, line {number}: not valid JSON ({error.msg}): {line[:80]!r}; "
                'each line must be one object like {"prompt": ..., "answer": ...}'
            ) from error
    return rows


def _too_deep(where: str) -> str:
    return (
        f"{where} holds a value nested too deeply to read (lists or objects inside one another "
        "hundreds of levels deep); tasklens reads only the prompt and answer columns: remove or "
        "flatten the nested column"
    )


def _pretty_jsonl(where: str) -> str:
    return (
        f"{where} looks like a JSON array or pretty-printed JSON, but a .jsonl file holds one object per "
        'line; save it as .json, or write each record on one line like {"prompt": ..., "answer": ...}'
    )
