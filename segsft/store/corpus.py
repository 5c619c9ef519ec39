"""Reading a corpus of traces: JSONL or Parquet, field names from config.

Every input row ends up as exactly one `Sample` or one `Reject` (with its reason); a
file problem that concerns every row (missing file, none of the fields) raises at once.
"""

from __future__ import annotations

import hashlib
import logging
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from segsft.errors import PipelineError

log = logging.getLogger(__name__)

REQUIRED = ("question", "solution", "answer")


class CorpusError(PipelineError):
    """The corpus file as a whole cannot be used."""


@dataclass(frozen=True)
class Sample:
    sample_id: str
    question: str
    solution: str
    answer: str
    source: str
    row: int  # 0-based row (JSONL: line index)


@dataclass(frozen=True)
class Reject:
    sample_id: str
    reason: str
    source: str
    row: int


def _derived_id(*parts: str) -> str:
    h = hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"h{h[:16]}"


#: Suffixes of formats we do not read, and what to do instead.
_UNSUPPORTED = {".csv": "use JSONL or Parquet", ".tsv": "use JSONL or Parquet", ".xlsx": "use JSONL or Parquet",
                ".gz": "decompress it first (gunzip)", ".bz2": "decompress it first", ".xz": "decompress it first",
                ".zst": "decompress it first", ".zip": "unzip it first", ".tar": "unpack it first"}
#: Magic bytes of compressed files, whatever their name.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


def format_problem(path: str | Path, key: str = "data.path") -> str | None:
    """Why `path` is in a format no reader here takes (CSV, a compressed file), or None."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return None
    fix = _UNSUPPORTED.get(path.suffix.lower())
    if fix:
        return f"{key}={path}: format {path.suffix} not supported: {fix}, then give a JSONL or Parquet file"
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    kind = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
    if kind:
        return f"{key}={path} is {kind}-compressed: format not supported: decompress it first, then give the JSONL file"
    return None


def nested_column_problem(path: str | Path, columns: Any, key: str = "data.path") -> str | None:
    """A Parquet file whose text column (`columns`) holds lists, structs or maps: refused, not stringified."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError):
        return None  # the reader says it is unreadable
    for c in columns:
        if c in schema.names:
            t = schema.field(c).type
            if pa.types.is_nested(t):
                return (f"{key}={path}: column '{c}' holds {t}, not text or numbers: write one value per row "
                        f"(e.g. the first element), or map {key.split('.')[0]}.fields to another column")
    return None


def nested_value_problem(name: str, v: Any) -> str | None:
    """A JSON row's list or object where text is due (never graded or trained as its repr)."""
    if isinstance(v, (list, dict)):
        return f"field '{name}' is a {'list' if isinstance(v, list) else 'JSON object'}, not text"
    if isinstance(v, (bytes, bytearray)):
        return f"field '{name}' is binary and not UTF-8 text: write it as UTF-8 text"
    return None


def limit_problem(key: str, limit: Any) -> str | None:
    """`data.limit` / `*.limit`: null (every row) or at least 1 (0 would read nothing)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        return f"{key}={limit!r}: use null (every row) or an integer >= 1"
    return None


def _no_json(path: Path, rows: int, first_bad: tuple[int, str] | None, key: str) -> CorpusError:
    n, why = first_bad or (0, "")
    return CorpusError(f"{key}={path}: no line is a valid JSON object (first bad line {n + 1}: {why}): give a JSONL file "
                       "(one JSON object per line) or a Parquet file")


def raw_rows(path: Path, key: str = "data.path") -> Iterator[tuple[int, Mapping[str, Any] | None, str]]:
    """(row index, record or None when unparsable, parse error or raw line); `key` is the setting
    that named the file (for the message when it is not readable at all)."""
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise CorpusError(f"{key}={path} is not a readable Parquet file ({str(e).splitlines()[0]}): "
                              f"point {key} to a readable Parquet or JSONL (.jsonl) file") from None
        for i, rec in enumerate(table.to_pylist()):
            decode_binary(rec)
            yield i, rec, ""
        return
    with path.open("rb") as fh:
        for i, raw in enumerate(fh):
            try:
                # A byte-order mark at the start of the file is not part of the first row.
                line = raw.decode("utf-8-sig" if i == 0 else "utf-8")
            except UnicodeDecodeError as e:
                # Never repair text silently: the trace would no longer be the one given.
                yield i, None, f"invalid UTF-8 at byte {e.start} of the line|{raw!r}"
                continue
            if not line.strip():
                yield i, None, "empty line"
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                # Line and column as an editor counts them (1-based, in characters, not bytes).
                yield i, None, f"invalid JSON at line {i + 1}, column {e.colno} ({e.msg})|{line}"
                continue
            if not isinstance(rec, dict):
                yield i, None, f"a JSON {type(rec).__name__}, not an object|{line}"
                continue
            yield i, rec, ""


def decode_binary(rec: dict[str, Any]) -> None:
    """A binary column's values (Parquet, datasets) as the text they hold, in place, so text is
    graded and trained as text, never as its b'...' repr. A value that is not UTF-8 stays bytes:
    a column no reader uses (an image) costs nothing, and a text column refuses it by row
    (`nested_value_problem`, the corpus's own check)."""
    for k, v in rec.items():
        if isinstance(v, (bytes, bytearray)):
            try:
                rec[k] = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                pass


class FileRows:
    """The one reader of a corpus's or a problem set's file rows: `for i, rec, bad in FileRows(...)`
    gives every row up to `limit` in order, `rec` its record, or `bad` its Reject when the line
    is unreadable (so one bad line never stops a run). Afterwards `check()` refuses, in one line,
    what no row could carry: an empty file, or a file with no valid JSON line; `fields` holds
    every field name seen."""

    def __init__(self, path: Path, limit: int | None, key: str, empty: str):
        self.path, self.limit, self.key, self.empty = path, limit, key, empty
        self.rows = self.parsed = 0
        self.first_bad: tuple[int, str] | None = None
        self.fields: set[str] = set()

    def __iter__(self) -> Iterator[tuple[int, Mapping[str, Any] | None, Reject | None]]:
        for i, rec, err in raw_rows(self.path, self.key):
            self.rows += 1
            if self.limit is not None and i >= self.limit:
                break
            if rec is None:
                reason, _, raw = err.partition("|")
                self.first_bad = self.first_bad or (i, reason)
                # From content and row number, never the path as typed: a rerun spelling the same
                # file another way must find the same reject.
                yield i, None, Reject(_derived_id(str(i), raw), f"row {i}: {reason}", str(self.path), i)
                continue
            self.parsed += 1
            self.fields.update(rec)
            yield i, rec, None

    def check(self) -> None:
        if self.rows == 0:
            raise CorpusError(self.empty)
        if not self.parsed and self.first_bad is not None:
            raise _no_json(self.path, self.rows, self.first_bad, self.key)


def corpus_path_problem(path: str | Path, key: str = "data.path") -> str | None:
    """Why `path` cannot be read as a corpus (checked before anything loads; no network), or None."""
    from segsft.store import hub

    if hub.is_dataset(path):
        return hub.spec_problem(path, key)
    path = Path(path)
    if not path.is_file():
        return (f"corpus file {path} does not exist: set {key} to a JSONL or Parquet file, a dataset directory "
                "(save_to_disk or the hub's layout) or hub:<dataset id>")
    return format_problem(path, key)


def corpus_identity(path: str | Path) -> dict[str, Any] | str:
    """What a corpus's rows depend on: a file's SHA-256, or a dataset's id, revision and
    `datasets` fingerprint (segsft.store.hub.identity)."""
    from segsft.store import hub
    from segsft.store.io import file_sha256

    return hub.identity(path) if hub.is_dataset(path) else file_sha256(path)


def _check_row(i: int, rec: Mapping[str, Any], names: Mapping[str, str], sid: str, src: str,
               counts: dict[str, int], id_field: str | None = None) -> Sample | Reject:
    """The row as a Sample, or a Reject with every problem it has."""
    values = {k: rec.get(n) for k, n in names.items()}
    problems = []
    id_problem = nested_value_problem(id_field, rec.get(id_field)) if id_field else None
    if id_problem:  # a list, an object, or bytes that are not UTF-8: as the other readers refuse it
        problems.append(id_problem)
    for k, n in names.items():
        v = values[k]
        if v is None:
            problems.append(f"missing field '{n}'" if n not in rec else f"null field '{n}'")
        elif isinstance(v, float) and k == "answer" and v != v:
            problems.append(f"field '{n}' is NaN")
        elif isinstance(v, float) and k == "answer" and v.is_integer():
            values[k] = str(int(v))  # a Parquet float column: 204.0 is the answer 204
            counts["floats_made_ints"] += 1
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k == "answer":
            values[k] = str(v)
        elif isinstance(v, (bytes, bytearray)):
            problems.append(nested_value_problem(n, v))
        elif not isinstance(v, str):
            problems.append(f"field '{n}' is a {type(v).__name__}, not a string")
        elif not v.strip():
            problems.append(f"empty field '{n}'")
    if problems:
        return Reject(sid, f"row {i}: " + "; ".join(problems), src, i)
    return Sample(sid, values["question"], values["solution"], values["answer"], src, i)


def id_text(rid: Any) -> str:
    """A row's id as text. Bytes left by `decode_binary` are not UTF-8: their row is rejected
    (`nested_value_problem`) under this stable id, never under the b'...' repr."""
    return "hex:" + bytes(rid).hex() if isinstance(rid, (bytes, bytearray)) else str(rid)


def _row_id(rec: Mapping[str, Any], id_field: str | None, names: Mapping[str, str]) -> str:
    rid = rec.get(id_field) if id_field else None
    return id_text(rid) if rid not in (None, "") else _derived_id(*(str(rec.get(names[k])) for k in REQUIRED))


def read_corpus(path: str | Path, fields: Mapping[str, str], limit: int | None = None, adapter: str | None = None,
                rank: int = 0, world: int = 1) -> tuple[list[Sample], list[Reject]]:
    """Read every row of `path` (or its first `limit` rows: an explicit choice, for quick
    looks) that `rank` of `world` owns (every world-th row from row `rank`); `fields` maps
    `id`, `question`, `solution`, `answer` to the corpus's column names (`id` may be empty or
    absent: ids are then derived). A dataset (segsft.store.hub) is read shard first: a rank
    decodes only its own rows; `adapter` names how its columns become these fields."""
    from segsft.store import hub

    why = corpus_path_problem(path)
    if why:
        raise CorpusError(why)
    names = {k: fields.get(k) or k for k in REQUIRED}
    if hub.is_dataset(path):
        return _read_dataset(str(path), names, fields.get("id"), limit, adapter, rank, world)
    path = Path(path)
    id_field = fields.get("id")
    nested = nested_column_problem(path, names.values())
    if nested:
        raise CorpusError(nested)
    out: list[Sample | Reject] = []
    seen_ids: set[str] = set()
    kept_ids: set[str] = set()
    src = str(path)
    counts = {"floats_made_ints": 0}
    rows = FileRows(path, limit, "data.path", f"data.path={path} is empty: it has no rows; give a corpus file with "
                    "question, solution and answer rows")
    for i, rec, bad in rows:
        if bad is not None:
            out.append(bad)
            continue
        sid = orig = _row_id(rec, id_field, names)
        dup = sid in seen_ids and sid in kept_ids
        if sid in seen_ids:
            # A later copy of an id gets its own id in either table, so no id is in both tables
            # and a reject never stands for the kept row on resume. It is a duplicate only when
            # the first copy was kept.
            sid = f"{sid}#row{i}"
        seen_ids.add(sid)
        item = _check_row(i, rec, names, sid, src, counts, id_field)
        if dup:
            reason = f"duplicate sample_id {orig!r} (an earlier row has it)"
            item = Reject(sid, item.reason + "; " + reason if isinstance(item, Reject) else f"row {i}: {reason}", src, i)
        if isinstance(item, Sample):
            kept_ids.add(sid)
        out.append(item)
    rows.check()
    if counts["floats_made_ints"]:
        log.info("%s: %d answer(s) given as integral floats (e.g. 204.0) were read as integers", path,
                 counts["floats_made_ints"])
    missing = [n for n in names.values() if n not in rows.fields]
    if missing:
        # A field absent from every row is a configuration problem, not a bad row.
        raise CorpusError(
            f"{path} has no field {missing} in any row (configured: {sorted(names.values())}); "
            f"its rows have {sorted(rows.fields) or 'nothing readable'}. Set data.fields.question / "
            "data.fields.solution / data.fields.answer to its column names"
        )
    mine = [r for r in out if r.row % world == rank]
    return [r for r in mine if isinstance(r, Sample)], [r for r in mine if isinstance(r, Reject)]


def _dataset_ids(path: str, names: Mapping[str, str], id_field: str | None, limit: int | None,
                 adapter: str | None) -> list[str]:
    """Every row's sample id, in row order: one pass over the id column (or, to derive ids, the
    content columns), batch by batch, so every rank names every row as one process would."""
    from segsft.store import hub

    raw = hub.ADAPTER_ID_COLUMN.get(adapter or "") if id_field == "id" else None
    if raw:  # the adapter's id is one column: read that one, not the traces
        ids = [rec.get(raw) for _, rec in hub.rows(path, [raw], limit)]
        if all(i not in (None, "") for i in ids):
            return [str(i) for i in ids]
    cols = [id_field] if id_field else [names[k] for k in REQUIRED]
    return [_row_id(rec, id_field, names) for _, rec in hub.rows(path, cols, limit, adapter=adapter)]


def _read_dataset(path: str, names: Mapping[str, str], id_field: str | None, limit: int | None,
                  adapter: str | None, rank: int, world: int) -> tuple[list[Sample], list[Reject]]:
    """read_corpus of a dataset. A later copy of an id is `<id>#row<i>` and a reject (duplicate),
    whichever rank reads it."""
    from segsft.store import hub

    have = hub.column_names(path, adapter)
    id_field = id_field if id_field in have else None  # as in a file without it: ids are derived
    missing = [(k, n) for k, n in names.items() if n not in have]
    if missing:
        via = f" (data.adapter={adapter})" if adapter else ""
        raise CorpusError(f"dataset {path}{via} has no field {[n for _, n in missing]} (its columns: {have}): set "
                          + " / ".join(f"data.fields.{k}" for k, _ in missing) + " to its column names, or "
                          f"data.adapter to one of {sorted(hub.ADAPTERS)} for a known layout")
    ids = _dataset_ids(path, names, id_field, limit, adapter)
    if not ids:
        raise CorpusError(f"dataset {path} is empty: it has no rows; give a dataset (or split) with rows")
    first: dict[str, int] = {}
    for i, sid in enumerate(ids):
        first.setdefault(sid, i)
    samples: list[Sample] = []
    rejects: list[Reject] = []
    counts = {"floats_made_ints": 0}
    for i, rec in hub.rows(path, [*names.values(), *([id_field] if id_field else [])], limit, rank, world, adapter):
        sid = ids[i] if first[ids[i]] == i else f"{ids[i]}#row{i}"
        item = _check_row(i, rec, names, sid, path, counts, id_field)
        if first[ids[i]] != i:
            reason = f"duplicate sample_id {ids[i]!r} (an earlier row has it)"
            item = Reject(sid, item.reason + "; " + reason if isinstance(item, Reject) else f"row {i}: {reason}", path, i)
        (samples if isinstance(item, Sample) else rejects).append(item)
    return samples, rejects


@dataclass(frozen=True)
class ProblemRow:
    problem_id: str
    question: str
    answer: str
    choices: tuple[str, ...] | None
    row: int


def read_problems(path: str | Path, fields: Mapping[str, str], limit: int | None = None,
                  key: str = "data", default_split: str = "train") -> tuple[list[ProblemRow], list[Reject]]:
    """Problems (`id`, `question`, `answer`, optional `choices`) of a JSONL or Parquet file or a
    dataset (segsft.store.hub; its split `default_split` unless the spec names one): each row a
    problem or a reject with its reason. `key` names the config key in messages
    (evaluate.benchmarks, generate.problems)."""
    from segsft.store import hub

    names = {k: fields.get(k) or k for k in ("question", "answer")}
    id_field = fields.get("id")
    if hub.is_dataset(path):
        why = hub.spec_problem(path, key)
        if why:
            raise CorpusError(why)
        have = hub.column_names(path, default_split=default_split)
        missing = [n for n in names.values() if n not in have]
        if missing:
            raise CorpusError(f"{key}: dataset {path} has no field {missing} (its columns: {have}): map the columns "
                              f"with {key.split('.')[0]}.fields.question / .answer")
        cols = [*names.values(), *([id_field] if id_field else []), "choices"]
        records: Iterable[tuple[int, Mapping[str, Any] | None, Reject | None]] = (
            (i, rec, None) for i, rec in hub.rows(path, cols, limit, default_split=default_split))
        rows = None
    else:
        path = Path(path)
        if path.is_dir():
            raise CorpusError(f"{key}: {path} is a directory, not a file: give a JSONL or Parquet file of problems")
        if not path.is_file():
            raise CorpusError(f"{key}: problems file {path} does not exist: give a JSONL or Parquet file (id, question, "
                              "answer), a dataset directory or hub:<dataset id>")
        bad_format = format_problem(path, key) or nested_column_problem(path, names.values(), key)
        if bad_format:
            raise CorpusError(bad_format)
        records = rows = FileRows(path, limit, key, f"{key}: problems file {path} is empty: it has no rows; give one with question and answer rows")
    out: list[ProblemRow] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    seen_fields: set[str] = set()
    for i, rec, bad in records:
        if bad is not None:
            rejects.append(bad)
            continue
        seen_fields.update(rec)
        q, a = rec.get(names["question"]), rec.get(names["answer"])
        rid = rec.get(id_field) if id_field else None
        pid = id_text(rid) if rid not in (None, "") else _derived_id(str(q), str(a))
        if pid in seen:
            # Scored as a problem of its own: say so, as the corpus reader does for its duplicates.
            log.warning("%s: row %d repeats problem id %r: it is scored as a separate problem %r", path, i, pid,
                        f"{pid}#row{i}")
            pid = f"{pid}#row{i}"
        seen.add(pid)
        problems = [f"missing or empty field '{n}'" for k, n in names.items()
                    if rec.get(n) is None or (isinstance(rec.get(n), str) and not rec.get(n).strip())]
        text_fields = (*names.values(), *([id_field] if id_field else []))
        problems += [p for p in (nested_value_problem(n, rec.get(n)) for n in text_fields) if p]
        if isinstance(a, float) and a == a and a.is_integer():
            a = int(a)
        if isinstance(a, float) and a != a:
            problems.append(f"field '{names['answer']}' is NaN")
        if problems:
            rejects.append(Reject(pid, f"row {i}: " + "; ".join(problems), str(path), i))
            continue
        choices = rec.get("choices")
        out.append(ProblemRow(pid, str(q), str(a), tuple(str(c) for c in choices) if choices else None, i))
    if rows is not None:
        rows.check()
    elif not out and not rejects:
        raise CorpusError(f"{key}: problems file {path} is empty: it has no rows; give one with question and answer rows")
    missing = [n for n in names.values() if n not in seen_fields]
    if missing:
        raise CorpusError(f"{key}: {path} has no field {missing} in any row (its rows have {sorted(seen_fields)}): "
                          f"problems need a question and an answer; map the columns with {key.split('.')[0]}.fields")
    return out, rejects


def reject_row(r: Reject) -> dict:
    """A row of a rejects table (schemas.REJECTS_SCHEMA)."""
    return {"sample_id": r.sample_id, "reason": r.reason, "source": r.source, "row": r.row}
