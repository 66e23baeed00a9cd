"""Hostile input, generated: whatever a config or a QA file holds, `fedmem run` either
accepts it or ends with exit code 2 and one line naming the key or `file:line`, with no
traceback and nothing written (validation comes before any run folder exists)."""

from __future__ import annotations

import itertools
import json
import math
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmem.config import flat_hints
from fedmem.drivers.cli import main
from tests.support.files import write_toml

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
KNOWN_KEYS = sorted(flat_hints())
SECTIONS = sorted({k.split(".")[0] for k in KNOWN_KEYS if "." in k})
PRINTABLE = st.characters(blacklist_categories=("Cs", "Cc"))


@pytest.fixture
def harness(tiny_raw, tmp_path, monkeypatch, capsys):
    """Runs `fedmem run` with training replaced by a recorder; checks the outcome."""
    started = []
    monkeypatch.setattr(
        "fedmem.drivers.cli.run", lambda config, verbose=False, resume=False: started.append(config)
    )
    output = tmp_path / "runs"
    counter = itertools.count()

    def run(args: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        started.clear()
        code = main(["run", *args])
        err = capsys.readouterr().err
        assert code in (0, 2)
        assert not output.exists(), "a rejected or validated config wrote a run folder"
        if code == 2:
            assert err.startswith("fedmem: error: ") and err.count("\n") == 1, err
            assert not started
        else:
            assert err == "" and len(started) == 1
        return code, err

    def config_file(raw: dict | None = None, text: bytes | None = None):
        path = tmp_path / f"c{next(counter)}.toml"
        if text is not None:
            path.write_bytes(text)
        else:
            write_toml(path, raw if raw is not None else {**tiny_raw})
        return path

    return run, config_file, output


def _toml_literal(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(PRINTABLE, max_size=12),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(KNOWN_KEYS).map(lambda k: k + ".deeper"),
    st.tuples(st.sampled_from(SECTIONS), st.text(PRINTABLE, min_size=1, max_size=8)).map(".".join),
    st.text(PRINTABLE, min_size=1, max_size=15).filter(lambda k: "=" not in k),
)
override_texts = st.one_of(
    values.map(_toml_literal), st.text(PRINTABLE, max_size=20), st.just("[1, 2")
)


def _names_the_key(err: str, key: str) -> bool:
    """The message names the key or a section on its dotted path."""
    parts = key.strip().split(".")
    return any(".".join(parts[:i]) in err for i in range(1, len(parts) + 1))


@SETTINGS
@given(overrides=st.lists(st.tuples(keys, override_texts), min_size=1, max_size=3))
def test_any_override_is_accepted_or_rejected_in_one_line_naming_its_key(harness, overrides):
    run, config_file, _ = harness
    args = [str(config_file())]
    for key, text in overrides:
        # One token: argparse reads a separate value that starts with "-" (a key "-") as
        # an option, as for any option; users write such a value as --set=KEY=VALUE.
        args.append(f"--set={key}={text}")
    code, err = run(args)
    if code == 2:
        assert any(_names_the_key(err, key) for key, _ in overrides), err


tables = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_KEYS).map(lambda k: k.split(".")[-1]), st.text(PRINTABLE)),
    values,
    max_size=4,
)


@SETTINGS
@given(
    document=st.dictionaries(
        st.one_of(st.sampled_from(SECTIONS), st.text(PRINTABLE, min_size=1, max_size=8)),
        st.one_of(tables, values),
        max_size=4,
    )
)
def test_any_toml_document_is_accepted_or_rejected_naming_a_key(harness, tiny_raw, document):
    run, config_file, _ = harness
    lines = []
    for key, value in document.items():
        if not isinstance(value, dict):
            lines.append(f"{json.dumps(key, ensure_ascii=False)} = {_toml_literal(value)}")
    for section, table in document.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(section, ensure_ascii=False)}]")
            lines += [
                f"{json.dumps(k, ensure_ascii=False)} = {_toml_literal(v)}"
                for k, v in table.items()
            ]
    path = config_file(text="\n".join(lines).encode())
    code, err = run([str(path), "--set", f"output.dir={json.dumps(str(harness[2]))}"])
    if code == 2:
        named = list(document) + [
            f"{s}.{k}" for s, t in document.items() if isinstance(t, dict) for k in t
        ]
        assert str(path) in err or any(_names_the_key(err, k) for k in named), err


@SETTINGS
@given(content=st.binary(max_size=60))
def test_a_config_file_of_random_bytes_never_crashes(harness, content):
    run, config_file, _ = harness
    path = config_file(text=content)
    code, err = run([str(path), "--set", f"output.dir={json.dumps(str(harness[2]))}"])
    try:
        tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        assert code == 2 and str(path) in err


# ---------------------------------------------------------------- QA files (data.path)

texts = st.text(PRINTABLE, min_size=1, max_size=30).filter(lambda t: t.strip())
valid_lines = st.builds(
    lambda q, a: json.dumps({"question": q, "answer": a}, ensure_ascii=False), texts, texts
)


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _broken(pair: dict, how: str) -> dict:
    pair = dict(pair)
    match how:
        case "no question":
            del pair["question"]
        case "no answer":
            del pair["answer"]
        case "question not a string":
            pair["question"] = 3
        case "blank answer":
            pair["answer"] = "  "
        case "one option":
            pair["options"] = ["only"]
        case "options not a list":
            pair["options"] = "A or B"
        case "answer not an option letter":
            pair["options"], pair["answer"] = ["x", "y"], "C"
    return pair


garbage_lines = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1)
    .filter(lambda t: t.strip() and not _is_object(t))
    .map(str.encode),
    st.builds(
        lambda q, a, how: json.dumps(_broken({"question": q, "answer": a}, how)).encode(),
        texts,
        texts,
        st.sampled_from(
            [
                "no question",
                "no answer",
                "question not a string",
                "blank answer",
                "one option",
                "options not a list",
                "answer not an option letter",
            ]
        ),
    ),
    st.binary(min_size=1, max_size=10).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
)


@SETTINGS
@given(
    before=st.lists(st.one_of(valid_lines.map(str.encode), st.just(b"")), max_size=6),
    bad=garbage_lines,
    after=st.lists(st.one_of(valid_lines.map(str.encode), garbage_lines), max_size=4),
)
def test_a_qa_file_with_garbage_fails_naming_file_and_first_bad_line(
    harness, tiny_raw, tmp_path, monkeypatch, before, bad, after
):
    run, config_file, _ = harness
    monkeypatch.undo()  # the real `run` this time: it reads the data before writing anything

    def no_training(*args, **kwargs):
        raise AssertionError("a file with a bad line reached training")

    monkeypatch.setattr("fedmem.drivers.simulation.run_federated", no_training)
    data = tmp_path / f"qa-{len(list(tmp_path.glob('qa-*')))}.jsonl"
    data.write_bytes(b"\n".join([*before, bad, *after]) + b"\n")
    raw = {**tiny_raw, "data": {"source": "jsonl", "path": str(data)}}
    code, err = run([str(config_file(raw))])
    assert code == 2
    assert f"{data}:{len(before) + 1}: " in err, err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lr=nan", "training.lr = nan: expected a finite number"),
        ("attack.prefix_tokens=inf", "attack.prefix_tokens = inf: expected an integer"),
        ("weight_noise.sigma=-inf", "weight_noise.sigma = -inf: expected a finite number"),
        ('name="a\\u0000b"', "name = 'a\\x00b': contains a NUL character"),
        (f"name={'n' * 256}", "must be a plain folder name"),
        (
            "federation.rounds=2\nseed = 5",
            "federation.rounds = '2\\nseed = 5': expected an integer",
        ),
    ],
)
def test_values_no_run_could_use_are_rejected(harness, override, message):
    run, config_file, _ = harness
    code, err = run([str(config_file()), "--set", override])
    assert code == 2 and message in err, err


def test_a_config_that_is_not_utf8_names_the_file_and_byte(harness):
    run, config_file, _ = harness
    path = config_file(text=b'name = "caf\xe9"\n')
    code, err = run([str(path)])
    assert code == 2 and f"{path}: not valid UTF-8 (byte 11)" in err
