"""The published medical QA datasets of the reference study, read in their own layouts.

- **MedMCQA** (Pal et al. 2022): ``question``, four options ``opa``..``opd`` and the correct
  option ``cop``; the original release (JSON Lines, often named ``train.json``) numbers
  ``cop`` 1-4, the Hugging Face export (Parquet, hub) 0-3. The numbering is read from the
  values (a 0 means 0-based, a 4 means 1-based), else from the format. Rows without four
  non-empty options are skipped, as the study kept "all rows with 4 options".
- **PubMedQA** (Jin et al. 2019): ``question``, ``context`` and ``final_decision``
  (yes/no/maybe). Both layouts: the original JSON object keyed by PMID (``QUESTION``,
  ``CONTEXTS``, ``final_decision``; ``ori_pqal.json`` and ``ori_pqaa.json``) and the hub's
  ``pqa_labeled`` / ``pqa_artificial`` rows (``question``, ``context.contexts``,
  ``final_decision``).
- **Medical Meadow flashcards** (Han et al. 2023): ``input`` (question) and ``output``
  (answer); rows with an empty one are skipped.

Local files: ``.jsonl``; ``.json`` (an array of rows, an object of rows keyed by id, or JSON
Lines); ``.parquet`` (pandas/pyarrow). Hub ids are read through the optional ``datasets``
package (``pip install 'fedmem[hub]'``). A malformed row fails with ``file:line`` (``file:row
N`` for Parquet and the hub) and the field at fault.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedmem.config import DatasetConfig
from fedmem.data.qa import OPTION_LETTERS, QAPair
from fedmem.files import DataError

# dataset -> (hub id, hub subset) used when data.<name>.hub_id / hub_subset are empty.
HUB_DEFAULTS = {
    "flashcards": ("medalpaca/medical_meadow_medical_flashcards", ""),
    "medmcqa": ("openlifescienceai/medmcqa", ""),
    "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled"),
}
PUBMEDQA_DECISIONS = ("yes", "no", "maybe")
MEDMCQA_OPTIONS = ("opa", "opb", "opc", "opd")

# (where, row): where is "file:line" or "file:row N", for error messages.
Located = tuple[str, Mapping[str, Any]]


# ----------------------------------------------------------------------------- reading


def read_rows(path: str | Path) -> Iterator[Located]:
    """Rows of a local file in a published format, each with its location."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: unknown format {suffix!r}; expected .json, .jsonl or .parquet")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8") from None
    if suffix == ".jsonl" or _holds_several_values(text):
        yield from _jsonl_rows(path, text)
    else:
        yield from _json_document_rows(path, text)


def _jsonl_rows(path: Path, text: str) -> Iterator[Located]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})"
            ) from None
        yield f"{path}:{lineno}", _as_row(f"{path}:{lineno}", row)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _holds_several_values(text: str) -> bool:
    """True for JSON Lines stored in a .json file (as MedMCQA's release is)."""
    pos = _skip_space(text, 0)
    try:
        _, end = json.JSONDecoder().raw_decode(text, pos)
    except json.JSONDecodeError:
        return False  # the document reader reports where
    return _skip_space(text, end) < len(text)


class _Lines:
    """Line numbers of character positions, for positions visited in increasing order."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _json_document_rows(path: Path, text: str) -> Iterator[Located]:
    """An array of rows, an object of rows keyed by id (the key becomes ``id``), or one row;
    each row located at the line where it starts."""
    decoder, lines = json.JSONDecoder(), _Lines(text)

    def decode(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None

    def expect(pos: int, chars: str) -> int:
        pos = _skip_space(text, pos)
        if pos >= len(text) or text[pos] not in chars:
            raise DataError(
                f"{path}:{lines.at(min(pos, len(text)))}: invalid JSON: expected {chars!r}"
            )
        return pos

    pos = _skip_space(text, 0)
    if text.startswith("[", pos):
        pos = _skip_space(text, pos + 1)
        while not text.startswith("]", pos):
            row, end = decode(pos)
            where = f"{path}:{lines.at(pos)}"
            yield where, _as_row(where, row)
            pos = expect(end, ",]")
            pos = _skip_space(text, pos + 1) if text[pos] == "," else pos
        return
    whole, _ = decode(pos)
    if not (isinstance(whole, dict) and whole and all(isinstance(v, dict) for v in whole.values())):
        yield f"{path}:{lines.at(pos)}", _as_row(f"{path}:{lines.at(pos)}", whole)
        return
    pos = _skip_space(text, pos + 1)
    while not text.startswith("}", pos):
        key, end = decode(pos)
        value_pos = _skip_space(text, expect(end, ":") + 1)
        row, end = decode(value_pos)
        where = f"{path}:{lines.at(value_pos)}"
        yield where, {"id": key, **row}
        pos = expect(end, ",}")
        pos = _skip_space(text, pos + 1) if text[pos] == "," else pos


def _parquet_rows(path: Path) -> Iterator[Located]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read Parquet: {str(err).splitlines()[0]}") from None
    for i, row in enumerate(frame.to_dict(orient="records"), start=1):
        yield f"{path}:row {i}", row


def hub_rows(name: str, cfg: DatasetConfig) -> Iterator[Located]:
    """Rows of the dataset's hub id through `datasets` (imported only here)."""
    hub_id = cfg.hub_id or HUB_DEFAULTS[name][0]
    subset = cfg.hub_subset or (HUB_DEFAULTS[name][1] if not cfg.hub_id else "")
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.{name}: reading {hub_id!r} from the hub needs the `datasets` package: "
            f"pip install 'fedmem[hub]' (or give a local file in data.{name}.path)"
        ) from None
    try:
        table = datasets.load_dataset(hub_id, subset or None, split=cfg.split)
    except (OSError, ValueError, ConnectionError) as err:
        raise DataError(
            f"data.{name}: cannot load {hub_id!r} from the hub: {str(err).splitlines()[0]}"
        ) from None
    for i, row in enumerate(table, start=1):
        yield f"{hub_id}:row {i}", row


def _as_row(where: str, row: Any) -> Mapping[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


# ----------------------------------------------------------------------------- fields


def _get(where: str, row: Mapping[str, Any], *names: str) -> Any:
    """The first of `names` present in the row (a layout's spellings of one field)."""
    for name in names:
        if name in row:
            return row[name]
    raise DataError(f"{where}: missing field {names[0]!r}")


def _text(where: str, row: Mapping[str, Any], *names: str) -> str:
    value = _get(where, row, *names)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {names[0]!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _strings(where: str, name: str, value: Any) -> list[str]:
    """A string or a list of strings (a numpy array from Parquet) as a list."""
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field {name!r} must be a string or a list of strings")
    return list(value)


# ----------------------------------------------------------------------------- datasets


def parse_flashcards(rows: Iterable[Located], origin: str) -> list[QAPair]:
    pairs = []
    for where, row in rows:
        question, answer = _text(where, row, "input"), _text(where, row, "output")
        if question and answer:
            pairs.append(QAPair(question, answer, "flashcards", "flashcards", prompt_format="open"))
    return pairs


def parse_pubmedqa(rows: Iterable[Located], origin: str) -> list[QAPair]:
    pairs = []
    for where, row in rows:
        question = _text(where, row, "question", "QUESTION")
        if not question:
            raise DataError(f"{where}: field 'question' is empty")
        context = _get(where, row, "context", "CONTEXTS", "contexts")
        if isinstance(context, Mapping):
            context = _get(where, context, "contexts")
        contexts = _strings(where, "context", context)
        decision = _text(where, row, "final_decision").lower()
        if decision not in PUBMEDQA_DECISIONS:
            raise DataError(
                f"{where}: field 'final_decision' must be yes, no or maybe, got {decision!r}"
            )
        pairs.append(
            QAPair(
                question,
                decision,
                "pubmedqa",
                "pubmedqa",
                context=" ".join(c.strip() for c in contexts if c.strip()),
                prompt_format="closed",
            )
        )
    return pairs


def parse_medmcqa(rows: Iterable[Located], origin: str) -> list[QAPair]:
    """`origin` ("json", "parquet" or "hub") decides how `cop` is numbered when no value
    gives it away (1-4 in the original JSON release, 0-3 in the Hugging Face export)."""
    kept: list[tuple[str, str, tuple[str, ...], int, str]] = []
    for where, row in rows:
        question = _text(where, row, "question")
        options = tuple(_text(where, row, key) for key in MEDMCQA_OPTIONS)
        cop = _get(where, row, "cop")
        if cop is None or (isinstance(cop, float) and math.isnan(cop)):
            raise DataError(f"{where}: field 'cop' is null")
        if isinstance(cop, float) and cop.is_integer():  # Parquet int columns with nulls
            cop = int(cop)
        if isinstance(cop, bool) or not isinstance(cop, numbers.Integral):
            raise DataError(f"{where}: field 'cop' must be an integer, got {cop!r}")
        if not question or not all(options):
            continue
        topic = row.get("subject_name") or "medmcqa"
        kept.append((where, question, options, int(cop), str(topic)))
    cops = {cop for *_, cop, _ in kept}
    if 0 in cops and 4 in cops:
        raise DataError(f"{kept[0][0].rsplit(':', 1)[0]}: field 'cop' holds both 0 and 4")
    one_based = 4 in cops or (0 not in cops and origin == "json")
    pairs = []
    for where, question, options, cop, topic in kept:
        index = cop - 1 if one_based else cop
        if not 0 <= index < len(options):
            numbering = "1-4" if one_based else "0-3"
            raise DataError(f"{where}: field 'cop' = {cop} is outside {numbering}")
        pairs.append(
            QAPair(question, OPTION_LETTERS[index], "medmcqa", topic, options, prompt_format="mcq")
        )
    return pairs


PARSERS: dict[str, Callable[[Iterable[Located], str], list[QAPair]]] = {
    "flashcards": parse_flashcards,
    "medmcqa": parse_medmcqa,
    "pubmedqa": parse_pubmedqa,
}


def load_medical(name: str, cfg: DatasetConfig) -> list[QAPair]:
    """The first `cfg.size` usable examples (all when 0) of dataset `name`, from
    `cfg.path` when given, else from the hub."""
    if cfg.path:
        origin = "parquet" if cfg.path.lower().endswith(".parquet") else "json"
        pairs = PARSERS[name](read_rows(cfg.path), origin)
        where = cfg.path
    else:
        pairs = PARSERS[name](hub_rows(name, cfg), "hub")
        where = cfg.hub_id or HUB_DEFAULTS[name][0]
    if not pairs:
        raise DataError(f"{where}: no usable {name} examples")
    return pairs[: cfg.size] if cfg.size else pairs
