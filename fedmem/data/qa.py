"""Medical question-answer data: generation, loading from JSONL, and prompt formatting.

Generated questions come from two tables: the disease table in ``fedmem.data.resources``
(symptoms, medications, ICD-10 code and specialty of 158 diseases) and the ICD-10-CM code
list (about 47k codes with descriptions and chapters). Each relation has several phrasings,
and each question has one of four styles, which is its ``source``:

- ``open``: free-text answer from the disease table;
- ``mcq``: four options, the answer is the letter of the correct one;
- ``yesno``: a statement that is true or false with equal probability, answered Yes/No;
- ``icd``: ICD-10-CM lookups (code to description, description to code, code to chapter).

Every pair is rendered by ``format_qa`` in its ``prompt_format``: fedmem's own
``Question: ... Answer: ...`` for generated and JSONL data, or one of the reference study's
formats for the published datasets (``fedmem.data.medical``): ``open`` (Medical Meadow
flashcards), ``mcq`` (MedMCQA) and ``closed`` (PubMedQA).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fedmem.data.resources.diseases import Disease, load_diseases
from fedmem.data.resources.icd10 import IcdCode, load_icd10_codes
from fedmem.files import DataError, jsonl_objects

SOURCES = ("open", "mcq", "yesno", "icd")
OPTION_LETTERS = string.ascii_uppercase
MCQ_OPTIONS = 4

# Seed salts that keep the public corpus disjoint from data drawn with the experiment seed.
PUBLIC_QA_SALT = 0x5EED
PUBLIC_RECORD_SALT = 0xC0DE
# generate_qa gives up on distinct questions after this many draws per requested pair.
_DRAWS_PER_PAIR = 50


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    source: str  # question style, one of SOURCES for generated data; used by partition_by_source
    topic: str  # specialty or ICD-10-CM chapter; the label for Dirichlet partitioning
    options: tuple[str, ...] = ()  # multiple choice only; then answer is a letter "A".."D"
    context: str = ""  # text the question is about (PubMedQA abstracts), shown before it
    prompt_format: str = "qa"  # one of PROMPT_FORMATS


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tables:
    diseases: tuple[Disease, ...]
    codes: tuple[IcdCode, ...]
    disease_names: tuple[str, ...]
    disease_codes: tuple[str, ...]
    dosed_diseases: tuple[Disease, ...]  # those with a dose ladder for some medication
    symptoms: tuple[str, ...]
    medications: tuple[str, ...]
    specialties: tuple[str, ...]
    descriptions_by_chapter: dict[str, tuple[str, ...]]

    def treated_by(self, medication: str) -> tuple[Disease, ...]:
        return tuple(d for d in self.diseases if medication in d.medications)


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    diseases = load_diseases()
    codes = load_icd10_codes()
    by_chapter: dict[str, list[str]] = {}
    for code in codes:
        by_chapter.setdefault(code.chapter, []).append(code.description)
    return _Tables(
        diseases=diseases,
        codes=codes,
        disease_names=tuple(d.name for d in diseases),
        disease_codes=tuple(sorted({d.icd10 for d in diseases})),
        dosed_diseases=tuple(d for d in diseases if d.dosing),
        symptoms=tuple(sorted({s for d in diseases for s in d.symptoms})),
        medications=tuple(sorted({m for d in diseases for m in d.medications})),
        specialties=tuple(sorted({d.specialty for d in diseases})),
        descriptions_by_chapter={ch: tuple(ds) for ch, ds in by_chapter.items()},
    )


def _join(items: Sequence[str], conjunction: str = "and") -> str:
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _lower(items: Sequence[str]) -> list[str]:
    return [item.lower() for item in items]


def _other(rng: random.Random, pool: Sequence[str], exclude: Sequence[str], k: int) -> list[str]:
    """``k`` distinct items of ``pool`` not in ``exclude``; ``pool`` may hold duplicates.

    Drawn by rejection because pools such as an ICD-10-CM chapter hold thousands of items
    and only a handful are wanted; the caller ensures that enough distinct items exist.
    """
    chosen: list[str] = []
    while len(chosen) < k:
        item = rng.choice(pool)
        if item not in exclude and item not in chosen:
            chosen.append(item)
    return chosen


def _symptom_sample(rng: random.Random, disease: Disease) -> list[str]:
    k = min(len(disease.symptoms), rng.choice((3, 3, 4)))
    return _lower(rng.sample(disease.symptoms, k))


def _patient(rng: random.Random) -> str:
    return f"{rng.randint(18, 90)}-year-old {rng.choice(('man', 'woman', 'patient'))}"


def _mcq(
    rng: random.Random, question: str, correct: str, distractors: list[str], topic: str
) -> QAPair:
    options = [correct, *distractors]
    rng.shuffle(options)
    letter = OPTION_LETTERS[options.index(correct)]
    return QAPair(question, letter, "mcq", topic, tuple(options))


def _yesno(question: str, truth: bool, topic: str) -> QAPair:
    return QAPair(question, "Yes" if truth else "No", "yesno", topic)


# --------------------------------------------------------------------------------------
# Open questions (disease table)
# --------------------------------------------------------------------------------------

_SYMPTOMS_TO_DISEASE = (
    "A {patient} presents with {symptoms}. What is the most likely diagnosis?",
    "Which condition typically causes {symptoms}?",
    "A {patient} reports {symptoms}. Which disease should be suspected?",
    "Symptoms: {symptoms}. Which diagnosis fits best?",
    "Given {symptoms}, what is the likely underlying disease?",
    "What disease commonly presents with {symptoms}?",
)
_DISEASE_TO_MEDICATIONS = (
    "Which medications are used to treat {disease}?",
    "What drugs are commonly prescribed for {disease}?",
    "List the usual pharmacological treatments for {disease}.",
    "How is {disease} treated with medication?",
    "Name the medications typically given to a patient with {disease}.",
)
_DISEASE_TO_SYMPTOMS = (
    "What are the common symptoms of {disease}?",
    "Which symptoms are typical of {disease}?",
    "How does {disease} usually present?",
    "What complaints would a patient with {disease} typically have?",
    "List the characteristic symptoms of {disease}.",
)
_DISEASE_TO_CODE = (
    "What is the ICD-10 code for {disease}?",
    "Which ICD-10 code is used to record {disease}?",
    "How is {disease} coded in ICD-10?",
    "Give the ICD-10 diagnosis code for {disease}.",
    "Under which ICD-10 code is {disease} classified?",
)
_DISEASE_TO_SPECIALTY = (
    "Which medical specialty primarily manages {disease}?",
    "A patient with {disease} should be referred to which specialty?",
    "What kind of specialist usually treats {disease}?",
    "Which department is responsible for the care of {disease}?",
    "{disease} falls under which medical specialty?",
)
_MEDICATION_TO_DOSE = (
    "What is the usual adult dose of {medication}?",
    "How is {medication} dosed in adults?",
    "What strength and schedule is {medication} typically prescribed at?",
    "Give the typical adult dosing of {medication}.",
    "How much {medication} is usually prescribed, and how often?",
)


def _open_symptoms(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_SYMPTOMS_TO_DISEASE).format(
        patient=_patient(rng), symptoms=_join(_symptom_sample(rng, d))
    )
    return QAPair(q, d.name, "open", d.specialty)


def _open_medications(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_DISEASE_TO_MEDICATIONS).format(disease=d.name)
    return QAPair(q, _join(d.medications), "open", d.specialty)


def _open_disease_symptoms(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_DISEASE_TO_SYMPTOMS).format(disease=d.name)
    return QAPair(q, _join(_lower(d.symptoms)).capitalize(), "open", d.specialty)


def _open_code(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_DISEASE_TO_CODE).format(disease=d.name)
    return QAPair(q, d.icd10, "open", d.specialty)


def _open_specialty(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_DISEASE_TO_SPECIALTY).format(disease=d.name)
    return QAPair(q, d.specialty, "open", d.specialty)


def _open_dose(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.dosed_diseases)
    dosing = rng.choice(d.dosing)
    q = rng.choice(_MEDICATION_TO_DOSE).format(medication=dosing.medication)
    strengths, frequencies = _join(dosing.strengths(), "or"), _join(dosing.frequencies, "or")
    answer = f"{strengths} {dosing.route}, {frequencies}"
    return QAPair(q, answer, "open", d.specialty)


# --------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------

_MCQ_MEDICATION = (
    "Which of the following is used to treat {disease}?",
    "Which drug is commonly prescribed for {disease}?",
    "A patient with {disease} is most likely to receive which medication?",
    "Which medication is part of the usual treatment of {disease}?",
    "Which of these drugs is indicated for {disease}?",
)
_MCQ_MEDICATION_TO_DISEASE = (
    "{medication} is commonly prescribed for which condition?",
    "Which of the following conditions is treated with {medication}?",
    "A patient has been started on {medication}. Which diagnosis is most consistent?",
    "For which disease is {medication} a usual treatment?",
    "{medication} is indicated for which of these conditions?",
)
_MCQ_ICD_DESCRIPTION = (
    "Which description matches ICD-10-CM code {code}?",
    "ICD-10-CM code {code} stands for which of the following?",
    "What does ICD-10-CM code {code} denote?",
    "Select the condition recorded by ICD-10-CM code {code}.",
    "Which of these is classified as {code} in ICD-10-CM?",
)


def _mcq_symptoms(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_SYMPTOMS_TO_DISEASE).format(
        patient=_patient(rng), symptoms=_join(_symptom_sample(rng, d))
    )
    distractors = _other(rng, t.disease_names, [d.name], MCQ_OPTIONS - 1)
    return _mcq(rng, q, d.name, distractors, d.specialty)


def _mcq_medication(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_MCQ_MEDICATION).format(disease=d.name)
    distractors = _other(rng, t.medications, d.medications, MCQ_OPTIONS - 1)
    return _mcq(rng, q, rng.choice(d.medications), distractors, d.specialty)


def _mcq_medication_to_disease(rng: random.Random, t: _Tables) -> QAPair:
    medication = rng.choice(t.medications)
    treated = t.treated_by(medication)
    d = rng.choice(treated)
    q = rng.choice(_MCQ_MEDICATION_TO_DISEASE).format(medication=medication)
    distractors = _other(rng, t.disease_names, [x.name for x in treated], MCQ_OPTIONS - 1)
    return _mcq(rng, q, d.name, distractors, d.specialty)


def _mcq_code(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_DISEASE_TO_CODE).format(disease=d.name)
    distractors = _other(rng, t.disease_codes, [d.icd10], MCQ_OPTIONS - 1)
    return _mcq(rng, q, d.icd10, distractors, d.specialty)


def _mcq_specialty(rng: random.Random, t: _Tables) -> QAPair:
    d = rng.choice(t.diseases)
    q = rng.choice(_DISEASE_TO_SPECIALTY).format(disease=d.name)
    distractors = _other(rng, t.specialties, [d.specialty], MCQ_OPTIONS - 1)
    return _mcq(rng, q, d.specialty, distractors, d.specialty)


def _mcq_icd(rng: random.Random, t: _Tables) -> QAPair:
    c = rng.choice(t.codes)
    q = rng.choice(_MCQ_ICD_DESCRIPTION).format(code=c.code)
    same_chapter = t.descriptions_by_chapter[c.chapter]
    distractors = _other(rng, same_chapter, [c.description], MCQ_OPTIONS - 1)
    return _mcq(rng, q, c.description, distractors, c.chapter)


# --------------------------------------------------------------------------------------
# Yes / no
# --------------------------------------------------------------------------------------

_YESNO_SYMPTOM = (
    "Is {symptom} a typical symptom of {disease}?",
    "Does {disease} commonly cause {symptom}?",
    "Would you expect {symptom} in a patient with {disease}?",
    "Is {symptom} part of the usual presentation of {disease}?",
    "Can {disease} present with {symptom}?",
)
_YESNO_MEDICATION = (
    "Is {medication} used to treat {disease}?",
    "Is {medication} a usual treatment for {disease}?",
    "Would {medication} typically be prescribed for {disease}?",
    "Is {disease} commonly treated with {medication}?",
    "Does the standard treatment of {disease} include {medication}?",
)
_YESNO_CODE = (
    "Is {disease} coded as {code} in ICD-10?",
    "Is {code} the ICD-10 code for {disease}?",
    "Does ICD-10 code {code} correspond to {disease}?",
    "Is {disease} recorded under ICD-10 code {code}?",
    "Would {disease} be classified as {code} in ICD-10?",
)
_YESNO_SPECIALTY = (
    "Is {disease} primarily managed by {specialty}?",
    "Should a patient with {disease} usually be referred to {specialty}?",
    "Does {disease} fall under {specialty}?",
    "Is {specialty} the main specialty for {disease}?",
    "Is {disease} usually treated within {specialty}?",
)
_YESNO_ICD = (
    "Does ICD-10-CM code {code} stand for {description}?",
    "Is {description} classified as {code} in ICD-10-CM?",
    "Is the ICD-10-CM code for {description} {code}?",
    "Does {code} in ICD-10-CM denote {description}?",
    "Is {code} the ICD-10-CM code recorded for {description}?",
)


def _pick(rng: random.Random, truth: bool, own: Sequence[str], pool: Sequence[str]) -> str:
    return rng.choice(own) if truth else _other(rng, pool, own, 1)[0]


def _yesno_symptom(rng: random.Random, t: _Tables) -> QAPair:
    d, truth = rng.choice(t.diseases), rng.random() < 0.5
    symptom = _pick(rng, truth, d.symptoms, t.symptoms).lower()
    q = rng.choice(_YESNO_SYMPTOM).format(symptom=symptom, disease=d.name)
    return _yesno(q, truth, d.specialty)


def _yesno_medication(rng: random.Random, t: _Tables) -> QAPair:
    d, truth = rng.choice(t.diseases), rng.random() < 0.5
    medication = _pick(rng, truth, d.medications, t.medications)
    q = rng.choice(_YESNO_MEDICATION).format(medication=medication, disease=d.name)
    return _yesno(q, truth, d.specialty)


def _yesno_code(rng: random.Random, t: _Tables) -> QAPair:
    d, truth = rng.choice(t.diseases), rng.random() < 0.5
    code = _pick(rng, truth, [d.icd10], t.disease_codes)
    q = rng.choice(_YESNO_CODE).format(code=code, disease=d.name)
    return _yesno(q, truth, d.specialty)


def _yesno_specialty(rng: random.Random, t: _Tables) -> QAPair:
    d, truth = rng.choice(t.diseases), rng.random() < 0.5
    specialty = _pick(rng, truth, [d.specialty], t.specialties)
    q = rng.choice(_YESNO_SPECIALTY).format(specialty=specialty, disease=d.name)
    return _yesno(q, truth, d.specialty)


def _yesno_icd(rng: random.Random, t: _Tables) -> QAPair:
    c, truth = rng.choice(t.codes), rng.random() < 0.5
    same_chapter = t.descriptions_by_chapter[c.chapter]
    description = _pick(rng, truth, [c.description], same_chapter)
    q = rng.choice(_YESNO_ICD).format(code=c.code, description=description.lower())
    return _yesno(q, truth, c.chapter)


# --------------------------------------------------------------------------------------
# ICD-10-CM lookups
# --------------------------------------------------------------------------------------

_ICD_CODE_TO_DESCRIPTION = (
    "What does ICD-10-CM code {code} describe?",
    "What condition is recorded by ICD-10-CM code {code}?",
    "Give the description of ICD-10-CM code {code}.",
    "What is the meaning of the diagnosis code {code} in ICD-10-CM?",
    "Look up ICD-10-CM code {code}: what does it denote?",
)
_ICD_DESCRIPTION_TO_CODE = (
    "What is the ICD-10-CM code for {description}?",
    "Which ICD-10-CM code is used for {description}?",
    "How is {description} coded in ICD-10-CM?",
    "Give the ICD-10-CM code that records {description}.",
    "Under which ICD-10-CM code is {description} classified?",
)
_ICD_CODE_TO_CHAPTER = (
    "Which ICD-10-CM chapter contains code {code}?",
    "In which chapter of ICD-10-CM is code {code} found?",
    "ICD-10-CM code {code} belongs to which chapter?",
    "Name the ICD-10-CM chapter that includes {code}.",
    "Which part of ICD-10-CM does code {code} fall under?",
)


def _icd_description(rng: random.Random, t: _Tables) -> QAPair:
    c = rng.choice(t.codes)
    q = rng.choice(_ICD_CODE_TO_DESCRIPTION).format(code=c.code)
    return QAPair(q, c.description, "icd", c.chapter)


def _icd_code(rng: random.Random, t: _Tables) -> QAPair:
    c = rng.choice(t.codes)
    q = rng.choice(_ICD_DESCRIPTION_TO_CODE).format(description=c.description.lower())
    return QAPair(q, c.code, "icd", c.chapter)


def _icd_chapter(rng: random.Random, t: _Tables) -> QAPair:
    c = rng.choice(t.codes)
    q = rng.choice(_ICD_CODE_TO_CHAPTER).format(code=c.code)
    return QAPair(q, c.chapter, "icd", c.chapter)


_Generator = Callable[[random.Random, _Tables], QAPair]
_GENERATORS: dict[str, tuple[_Generator, ...]] = {
    "open": (
        _open_symptoms,
        _open_medications,
        _open_disease_symptoms,
        _open_code,
        _open_specialty,
        _open_dose,
    ),
    "mcq": (
        _mcq_symptoms,
        _mcq_medication,
        _mcq_medication_to_disease,
        _mcq_code,
        _mcq_specialty,
        _mcq_icd,
    ),
    "yesno": (_yesno_symptom, _yesno_medication, _yesno_code, _yesno_specialty, _yesno_icd),
    "icd": (_icd_description, _icd_code, _icd_chapter),
}


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def generate_qa(n: int, seed: int) -> list[QAPair]:
    """``n`` medical QA pairs with distinct questions, styles drawn uniformly from SOURCES.

    Deterministic in ``seed``. Questions repeat only if ``n`` nears the number of distinct
    questions the templates can produce (far above 100k), rather than looping forever.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    tables = _tables()
    pairs: list[QAPair] = []
    seen: set[str] = set()
    draws = 0
    while len(pairs) < n:
        pair = rng.choice(_GENERATORS[rng.choice(SOURCES)])(rng, tables)
        draws += 1
        if pair.question in seen and draws < _DRAWS_PER_PAIR * n:
            continue
        seen.add(pair.question)
        pairs.append(pair)
    return pairs


# prompt format -> (heading of the question, cue the answer follows). "qa" is fedmem's own;
# the others are the reference study's per dataset (see docs/study.md).
PROMPT_FORMATS = {
    "qa": ("Question:", "Answer:"),
    "open": ("Open Question:", "The answer is:"),
    "mcq": ("MCQ:", "The answer is:"),
    "closed": ("Closed Question:", "The answer is:"),
}


def prompt_parts(pair: QAPair) -> tuple[str, str]:
    """(body, cue): the question with its heading, context and lettered options one per
    line, and the cue the answer follows (``"Answer:"`` or ``"The answer is:"``)."""
    heading, cue = PROMPT_FORMATS[pair.prompt_format]
    about = f"{pair.context}\n" if pair.context else ""
    lines = [f"{heading} {about}{pair.question}"]
    lines += [f"{OPTION_LETTERS[i]}. {option}" for i, option in enumerate(pair.options)]
    return "\n".join(lines), cue


def format_question(pair: QAPair) -> str:
    """The prompt up to and including the answer cue, options lettered one per line."""
    body, cue = prompt_parts(pair)
    return f"{body}\n{cue}"


def format_qa(pair: QAPair) -> str:
    """The training text: ``format_question(pair) + " " + pair.answer``."""
    return f"{format_question(pair)} {pair.answer}"


def _string_field(obj: dict, key: str, default: str | None = None) -> str:
    if key not in obj:
        if default is None:
            raise DataError(f"missing key {key!r}")
        return default
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"key {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"key {key!r} is empty")
    return value


def _options_field(obj: dict) -> tuple[str, ...]:
    options = obj.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataError("key 'options' must be a list of strings")
    if len(options) == 1 or len(options) > len(OPTION_LETTERS):
        raise DataError(f"key 'options' must hold 2 to 26 entries, got {len(options)}")
    return tuple(options)


def _qa_pair(obj: dict) -> QAPair:
    options = _options_field(obj)
    pair = QAPair(
        question=_string_field(obj, "question"),
        answer=_string_field(obj, "answer"),
        source=_string_field(obj, "source", "open"),
        topic=_string_field(obj, "topic", "general"),
        options=options,
    )
    if options and pair.answer not in OPTION_LETTERS[: len(options)]:
        last = OPTION_LETTERS[len(options) - 1]
        raise DataError(f"with options, 'answer' must be a letter A-{last}, got {pair.answer!r}")
    return pair


def load_qa_jsonl(path: str | Path) -> list[QAPair]:
    """Read one QA pair per line; blank lines are skipped.

    Keys: ``question`` and ``answer`` (required strings), ``source`` (default ``"open"``),
    ``topic`` (default ``"general"``), ``options`` (list of strings; then ``answer`` is
    the letter of the correct option). Other keys are ignored.
    """
    pairs: list[QAPair] = []
    for lineno, obj in jsonl_objects(path, "QA file"):
        try:
            pairs.append(_qa_pair(obj))
        except DataError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
    return pairs


def public_corpus(seed: int, n_qa: int, *, n_icd: int = 20_000, n_records: int = 500) -> list[str]:
    """Canary-free public text for tokenizer training and warm-starting a tiny model.

    Holds, shuffled: ``n_icd`` ICD-10-CM codes sampled as ``"CODE: description"`` lines,
    ``n_qa`` formatted QA pairs from ``generate_qa(n_qa, seed ^ PUBLIC_QA_SALT)``, and
    ``n_records`` clinical-note-shaped records from
    ``canaries.generate_records(n_records, seed ^ PUBLIC_RECORD_SALT)``. The salts give
    seed streams apart from the client data and canaries drawn with ``seed`` itself, so the
    model learns the record format but never sees a canary's contents.
    """
    from fedmem.data.canaries import generate_records

    rng = random.Random(seed)
    codes = load_icd10_codes()
    sampled = rng.sample(codes, min(n_icd, len(codes)))
    texts = [f"{c.code}: {c.description}" for c in sampled]
    texts += [format_qa(p) for p in generate_qa(n_qa, seed ^ PUBLIC_QA_SALT)]
    texts += [text for text, _ in generate_records(n_records, seed ^ PUBLIC_RECORD_SALT)]
    rng.shuffle(texts)
    return texts
