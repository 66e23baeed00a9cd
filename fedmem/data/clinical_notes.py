"""Whole synthetic clinical notes: admission notes (history and physical) and discharge
summaries, the long canaries of `canaries.kind = "note"`.

A note is drawn from the same resources as the short records (a seeded Faker instance and
the disease table of `fedmem/data/resources`): one patient, one stay, a principal diagnosis
and comorbidities with their ICD-10 codes, medications with doses from the table's dose
ladders. Sections (chief complaint, history of present illness, past medical history,
medications, allergies, social history, vitals and examination, labs with units and dates,
assessment and plan, hospital course, follow-up, signature) are written in one of several
layouts and phrasings, and every section carries sensitive values (names, record number,
SSN, dates, addresses, phone numbers, physicians, diagnoses and codes, doses), so whatever
follows a split point holds some.

`draft_note` draws a note's content from an rng; `fit_note` picks, with a tokenizer, how
much of it to keep so the note has between `min_tokens` and `max_tokens` tokens, and where
to split it: at the first sentence or line end after `split_tokens` tokens. The data layer
never imports the models layer: the tokenizer is passed in by the caller.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faker import Faker
from faker.providers.person.en_US import Provider as PersonProvider

from fedmem.data.resources.diseases import Disease, load_diseases

NOTE_KINDS = ("admission", "discharge")

_BIRTH_RANGE = (dt.date(1935, 1, 1), dt.date(2004, 12, 31))
_ADMIT_RANGE = (dt.date(2019, 1, 1), dt.date(2025, 6, 30))
_GENERIC_STRENGTHS = ("5 mg", "10 mg", "20 mg", "25 mg", "40 mg", "50 mg", "100 mg", "250 mg")
_GENERIC_ROUTES = ("oral", "oral", "oral", "subcutaneous", "topical", "inhaled")
_GENERIC_FREQUENCIES = (
    "once daily",
    "twice daily",
    "three times daily",
    "every 8 hours",
    "at bedtime",
    "as needed",
    "every morning",
    "every 12 hours",
)


def _cumulative(weights: dict[str, float]) -> tuple[list[str], list[float]]:
    return list(weights), list(itertools.accumulate(weights.values()))


_NAMES = {
    "female": _cumulative(PersonProvider.first_names_female),
    "male": _cumulative(PersonProvider.first_names_male),
    "last": _cumulative(PersonProvider.last_names),
}
# (relation to the patient, whether that relative is a woman; None: either)
_RELATIONS = (
    ("wife", True),
    ("husband", False),
    ("daughter", True),
    ("son", False),
    ("sister", True),
    ("brother", False),
    ("partner", None),
    ("niece", True),
    ("nephew", False),
    ("friend", None),
)
_ROUTE_ABBREVIATIONS = {"oral": "PO", "subcutaneous": "SC", "intravenous": "IV", "inhaled": "INH"}


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class ClinicalNote:
    text: str
    kind: str  # one of NOTE_KINDS
    # Offsets where a sentence or a line ends: text[:b] is a note cut after a whole sentence.
    boundaries: tuple[int, ...]
    # (field, value) of every sensitive value written in the note, e.g. ("ssn", "123-45-6789").
    sensitive: tuple[tuple[str, str], ...]


@dataclass
class _Unit:
    text: str
    optional: bool
    sensitive: list[tuple[str, str]]


@dataclass
class _Section:
    heading: str  # "" for the header block
    units: list[_Unit] = field(default_factory=list)
    prose: bool = False  # units are sentences of one paragraph, else lines
    bullet: str = ""  # prefix of each line, e.g. "- "


@dataclass
class _Draft:
    kind: str
    sections: list[_Section]

    def units(self) -> list[_Unit]:
        return [u for s in self.sections for u in s.units]


# --------------------------------------------------------------------------- rendering


def render(draft: _Draft, keep: Callable[[int], bool] = lambda i: True) -> ClinicalNote:
    """The note with the units `keep(index)` accepts (mandatory units are always kept);
    indices run over `draft.units()`."""
    return _layout(draft, keep)[0]


def _layout(
    draft: _Draft, keep: Callable[[int], bool]
) -> tuple[ClinicalNote, dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """The note, and the character spans of each kept unit (separator included) and of
    each written section's heading (by unit index and section index)."""
    pieces: list[str] = []
    boundaries: list[int] = []
    sensitive: list[tuple[str, str]] = []
    unit_spans: dict[int, tuple[int, int]] = {}
    heading_spans: dict[int, tuple[int, int]] = {}
    size = 0
    index = 0

    def put(text: str) -> None:
        nonlocal size
        pieces.append(text)
        size += len(text)

    for number, section in enumerate(draft.sections):
        units = []
        for unit in section.units:
            if not unit.optional or keep(index):
                units.append((index, unit))
            index += 1
        if not units:
            continue
        start = size
        if pieces:
            put("\n\n")
        if section.heading:
            put(section.heading + "\n")
        heading_spans[number] = (start, size)
        for j, (i, unit) in enumerate(units):
            start = size
            if j:
                put(" " if section.prose else "\n")
            put(("" if section.prose else section.bullet) + unit.text)
            unit_spans[i] = (start, size)
            boundaries.append(size)
            sensitive += unit.sensitive
    note = ClinicalNote("".join(pieces), draft.kind, tuple(boundaries), tuple(sensitive))
    return note, unit_spans, heading_spans


# --------------------------------------------------------------------------- patient


@dataclass
class _Person:
    first: str
    last: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class _Med:
    drug: str
    strength: str
    route: str
    frequency: str

    def line(self, rng: random.Random) -> str:
        route = (
            _ROUTE_ABBREVIATIONS.get(self.route, self.route) if rng.random() < 0.5 else self.route
        )
        return rng.choice(
            (
                f"{self.drug} {self.strength} {route} {self.frequency}",
                f"{self.drug} {self.strength}, {route}, {self.frequency}",
                f"{self.drug} {self.strength} ({route}) {self.frequency}",
                f"{self.drug}: {self.strength} {self.frequency}, {route}",
            )
        )


class _Writer:
    """One note's patient, stay and phrasing choices, and the sections written from them."""

    def __init__(self, rng: random.Random, fake: Faker, mrn: str, ssn: str, kind: str) -> None:
        self.rng, self.fake, self.kind = rng, fake, kind
        self.female = rng.random() < 0.5
        self.patient = self.person(female=self.female)
        self.title = rng.choice(("Ms.", "Mrs.")) if self.female else "Mr."
        self.she, self.her, self.her_obj = (
            ("she", "her", "her") if self.female else ("he", "his", "him")
        )
        self.mrn, self.ssn = mrn, ssn
        self.admit = fake.date_between(*_ADMIT_RANGE)
        earliest = dt.date(self.admit.year - 90, 1, 1)
        latest = dt.date(self.admit.year - 19, 12, 31)
        self.dob = fake.date_between(max(earliest, _BIRTH_RANGE[0]), min(latest, _BIRTH_RANGE[1]))
        self.age = (self.admit - self.dob).days // 365
        self.stay = rng.randint(2, 12)
        self.discharge = self.admit + dt.timedelta(days=self.stay)
        self.street = fake.street_address()
        self.city, self.state, self.zip = fake.city(), fake.state_abbr(), fake.zipcode()
        self.phone = fake.phone_number()
        self.facility = self._facility()
        self.attending = self.person()
        self.pcp = self.person()
        self.relation, female = rng.choice(_RELATIONS)
        self.contact = self.person(
            last=self.patient.last if rng.random() < 0.6 else None,
            female=rng.random() < 0.5 if female is None else female,
        )
        self.contact_phone = fake.phone_number()
        diseases = load_diseases()
        picked = rng.sample(diseases, rng.randint(3, 5))
        self.primary, self.comorbid = picked[0], picked[1:]
        self.years = {
            d.name: rng.randint(max(self.dob.year + 5, 1990), self.admit.year) for d in picked
        }
        self.meds = [self.med(d) for d in picked for _ in range(rng.randint(1, 2))]
        self.meds = list({m.drug: m for m in self.meds}.values())
        self.new_meds = [self.med(self.primary) for _ in range(rng.randint(1, 3))]
        self.consultants = [(self.person(), d.specialty) for d in picked[: rng.randint(1, 3)]]
        self.date_style = rng.randrange(4)
        self.bullet = rng.choice(("", "- ", "* ", "  "))
        self.heading_style = rng.randrange(4)

    # -------------------------------------------------------------- small draws

    def person(self, last: str | None = None, female: bool | None = None) -> _Person:
        """A name from Faker's en_US name lists, drawn with their frequencies (here rather
        than through Faker, which rebuilds the weights on every call: 20x slower)."""
        female = self.rng.random() < 0.5 if female is None else female
        names, weights = _NAMES["female" if female else "male"]
        first = self.rng.choices(names, cum_weights=weights)[0]
        if last is None:
            names, weights = _NAMES["last"]
            last = self.rng.choices(names, cum_weights=weights)[0]
        return _Person(first, last)

    def _facility(self) -> str:
        place = self.fake.city() if self.rng.random() < 0.6 else self.person().last
        kind = self.rng.choice(
            (
                "Medical Center",
                "General Hospital",
                "Regional Hospital",
                "Community Hospital",
                "University Hospital",
                "Memorial Hospital",
                "Health System",
            )
        )
        return f"{place} {kind}"

    def med(self, disease: Disease) -> _Med:
        rng = self.rng
        dosed = [d.medication for d in disease.dosing]
        drug = rng.choice(dosed or list(disease.medications))
        dosing = disease.dosing_for(drug)
        if dosing is None:
            return _Med(
                drug,
                rng.choice(_GENERIC_STRENGTHS),
                rng.choice(_GENERIC_ROUTES),
                rng.choice(_GENERIC_FREQUENCIES),
            )
        return _Med(
            drug, rng.choice(dosing.strengths()), dosing.route, rng.choice(dosing.frequencies)
        )

    def date(self, when: dt.date) -> str:
        match self.date_style:
            case 0:
                return when.isoformat()
            case 1:
                return f"{when.month:02d}/{when.day:02d}/{when.year}"
            case 2:
                return f"{when:%B} {when.day}, {when.year}"
        return f"{when.day} {when:%b} {when.year}"

    def time(self) -> str:
        return f"{self.rng.randint(0, 23):02d}:{self.rng.choice(range(0, 60, 5)):02d}"

    def during(self) -> dt.date:
        return self.admit + dt.timedelta(days=self.rng.randint(0, self.stay))

    def before(self, lo: int, hi: int) -> dt.date:
        return self.admit - dt.timedelta(days=self.rng.randint(lo, hi))

    def after(self, lo: int, hi: int) -> dt.date:
        return self.discharge + dt.timedelta(days=self.rng.randint(lo, hi))

    def heading(self, *names: str) -> str:
        name = self.rng.choice(names)
        match self.heading_style:
            case 0:
                return name.upper() + ":"
            case 1:
                return name + ":"
            case 2:
                return f"--- {name} ---"
        return f"[{name}]"

    def symptoms(self, disease: Disease, k: int) -> list[str]:
        return [s.lower() for s in self.rng.sample(disease.symptoms, min(k, len(disease.symptoms)))]

    # -------------------------------------------------------------- units

    def unit(self, template: str, optional: bool = True, **values: tuple[str, str] | str) -> _Unit:
        """A unit from `template`; values given as (field, value) are sensitive, and listed
        as such when the template writes them."""
        used = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        sensitive = [values[name] for name in used if isinstance(values[name], tuple)]
        text = template.format(
            **{k: v[1] if isinstance(v, tuple) else v for k, v in values.items()}
        )
        return _Unit(text, optional, sensitive)

    def pick(self, *templates: str, optional: bool = True, **values) -> _Unit:
        return self.unit(self.rng.choice(templates), optional, **values)


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# --------------------------------------------------------------------------- sections


def _header(w: _Writer) -> _Section:
    rng = w.rng
    title = rng.choice(
        (
            "ADMISSION HISTORY AND PHYSICAL",
            "Admission Note",
            "History and Physical",
            "Internal Medicine Admission H&P",
            "Hospital Admission Record",
        )
        if w.kind == "admission"
        else (
            "DISCHARGE SUMMARY",
            "Discharge Summary",
            "Hospital Discharge Summary",
            "Inpatient Discharge Note",
            "Summary of Hospitalization",
        )
    )
    address = f"{w.street}, {w.city}, {w.state} {w.zip}"
    lines = [
        w.pick(
            "Patient: {v}",
            "Patient name: {v}",
            "Name: {v}",
            "PATIENT: {v}",
            optional=False,
            v=("name", w.patient.name),
        ),
        w.pick(
            "MRN: {v}",
            "Medical record no.: {v}",
            "Record #{v}",
            "Hospital number {v}",
            optional=False,
            v=("mrn", w.mrn),
        ),
        w.pick(
            "DOB: {v} (age {a})",
            "Date of birth: {v}",
            "Born {v}; {a} years old",
            optional=False,
            v=("dob", w.date(w.dob)),
            a=str(w.age),
        ),
        w.pick(
            "SSN: {v}",
            "Social security no.: {v}",
            "SSN {v} (on file)",
            optional=False,
            v=("ssn", w.ssn),
        ),
        w.pick("Address: {v}", "Home address: {v}", "Residence: {v}", v=("address", address)),
        w.pick("Phone: {v}", "Tel: {v}", "Contact number: {v}", v=("phone", w.phone)),
        w.pick(
            "Admission date: {v}",
            "Date of admission: {v}",
            "Admitted: {v}",
            optional=False,
            v=("date", w.date(w.admit)),
        ),
        w.pick(
            "Attending: Dr. {v}",
            "Attending physician: {v}, MD",
            "Attending of record: Dr. {v}",
            v=("physician", w.attending.name),
        ),
        w.pick(
            "PCP: Dr. {v}",
            "Primary care physician: {v}, MD",
            "Primary care: Dr. {v}",
            v=("physician", w.pcp.name),
        ),
    ]
    if w.kind == "discharge":
        lines.insert(
            7,
            w.pick(
                "Discharge date: {v}",
                "Date of discharge: {v}",
                "Discharged: {v}",
                optional=False,
                v=("date", w.date(w.discharge)),
            ),
        )
    head = lines[:3]
    rest = lines[3:]
    rng.shuffle(rest)
    return _Section(
        "",
        [
            _Unit(w.facility, False, [("facility", w.facility)]),
            _Unit(title, False, []),
            *head,
            *rest,
        ],
    )


def _chief_complaint(w: _Writer) -> _Section:
    s = w.symptoms(w.primary, 2)
    days = w.rng.randint(1, 21)
    unit = w.pick(
        "{a} and {b} for {n} days.",
        "Worsening {a} x {n} days, now with {b}.",
        '"{A}" since {d}, with {b}.',
        "{A}, {b} ({n} days).",
        optional=False,
        a=s[0],
        A=s[0].capitalize(),
        b=s[-1],
        n=str(days),
        d=("date", w.date(w.admit - dt.timedelta(days=days))),
    )
    unit.text = unit.text[0].upper() + unit.text[1:]
    return _Section(
        w.heading(
            "Chief Complaint", "Reason for Admission", "Presenting Complaint", "Reason for Visit"
        ),
        [unit],
        prose=True,
    )


def _hpi(w: _Writer) -> _Section:
    rng = w.rng
    p = w.primary
    s = w.symptoms(p, 3)
    hx = _join([d.name.lower() for d in w.comorbid])
    onset = w.before(1, 20)
    sex = (
        rng.choice(("woman", "female", "lady"))
        if w.female
        else rng.choice(("man", "male", "gentleman"))
    )
    name = ("name", f"{w.title} {w.patient.last}")
    she, her = w.she, w.her
    units = [
        w.pick(
            "{name} is a {age}-year-old {sex} with a history of {hx} who presents with {s} "
            "that began on {onset}.",
            "{name}, {age}, {sex}, with {hx}, was admitted on {admit} after {s} starting "
            "around {onset}.",
            "This is a {age}-year-old {sex} ({name}) known for {hx}, seen for {s} since {onset}.",
            optional=False,
            name=name,
            age=str(w.age),
            sex=sex,
            hx=("diagnosis", hx),
            s=_join(s),
            onset=("date", w.date(onset)),
            admit=("date", w.date(w.admit)),
        )
    ]
    m = rng.choice(w.meds)
    units += [
        w.pick(
            "{She} saw Dr. {pcp} on {d}, who started {drug} {dose} {freq}.",
            "Dr. {pcp} (primary care) prescribed {drug} {dose} {freq} on {d} without relief.",
            "An outpatient visit with Dr. {pcp} on {d} led to a trial of {drug} {dose} {freq}.",
            She=she.capitalize(),
            pcp=("physician", w.pcp.name),
            d=("date", w.date(w.before(2, 30))),
            drug=("medication", m.drug),
            dose=("dose", m.strength),
            freq=m.frequency,
        ),
        w.pick(
            "{Her} {rel} {c} ({ph}) brought {obj} to the emergency department at {t}.",
            "Collateral history was obtained from {her} {rel}, {c}, reachable at {ph}.",
            "{c}, {her} {rel}, called {ph2} at {t} and then drove {obj} in; callback number {ph}.",
            Her=her.capitalize(),
            her=her,
            rel=w.relation,
            c=("contact", w.contact.name),
            ph=("phone", w.contact_phone),
            obj=w.her_obj,
            t=w.time(),
            ph2=rng.choice(("911", "the on-call line", "the clinic")),
        ),
        w.pick(
            "In the ED, blood pressure was {bp} mmHg, heart rate {hr} and temperature {temp} C.",
            "Triage vitals at {t}: BP {bp}, pulse {hr}, T {temp} C, SpO2 {sat}%.",
            "On arrival {she} was {adj}, with a pulse of {hr} and a pressure of {bp}.",
            bp=f"{rng.randint(92, 178)}/{rng.randint(50, 104)}",
            hr=str(rng.randint(54, 128)),
            temp=f"{rng.uniform(36.1, 39.6):.1f}",
            sat=str(rng.randint(86, 100)),
            t=w.time(),
            she=she,
            adj=rng.choice(("afebrile", "febrile", "tachycardic", "hypotensive", "comfortable")),
        ),
        w.pick(
            "{She} reports {sym} rated {n}/10, worse at {when}.",
            "{sym_c} is {adj} and rated {n} of 10; it is worse {when2}.",
            "{She} describes the {sym} as {adj}, {n}/10 at its worst.",
            She=she.capitalize(),
            sym=s[-1],
            sym_c=s[-1].capitalize(),
            n=str(rng.randint(3, 10)),
            when=rng.choice(("night", "rest", "exertion", "meals")),
            when2=rng.choice(("lying flat", "after meals", "with activity", "in the morning")),
            adj=rng.choice(
                ("constant", "intermittent", "sharp", "dull", "progressive", "episodic")
            ),
        ),
        w.pick(
            "Of note, {she} had a similar episode in {my} treated at {fac}.",
            "A comparable presentation in {my} was managed at {fac} without admission.",
            "Records from {fac} document an episode of {dx} in {my}.",
            she=she,
            my=f"{w.before(120, 1500):%B %Y}",
            fac=("facility", w._facility()),
            dx=("diagnosis", p.name.lower()),
        ),
        w.pick(
            "Last dose of {drug} was taken on {d} at {t}.",
            "{She} ran out of {drug} about {n} days ago and did not refill it.",
            "Adherence to {drug} {dose} has been {adj} per pharmacy fill dates (last fill {d}).",
            drug=("medication", m.drug),
            dose=("dose", m.strength),
            t=w.time(),
            She=she.capitalize(),
            d=("date", w.date(w.before(0, 10))),
            n=str(rng.randint(2, 14)),
            adj=rng.choice(("poor", "inconsistent", "good", "fair")),
        ),
        w.pick(
            "{She} denies {neg}.",
            "No {neg} reported.",
            "Pertinent negatives include {neg}.",
            She=she.capitalize(),
            neg=_join(w.symptoms(rng.choice(load_diseases()), 2)),
        ),
        w.pick(
            "Dr. {doc} from {spec} reviewed {her} chart on {d} and suspected {dx}.",
            "{spec} (Dr. {doc}) was paged on {d} for concern of {dx}.",
            "The case was discussed with Dr. {doc}, {spec}, on {d}; working diagnosis {dx}.",
            doc=("physician", w.consultants[0][0].name),
            spec=w.consultants[0][1],
            her=her,
            d=("date", w.date(w.admit)),
            dx=("diagnosis", p.name.lower()),
        ),
        w.pick(
            "{She} lives at {addr} and was last seen well on {d}.",
            "At home on {street} {she} had been {adj} until {d}.",
            She=she.capitalize(),
            she=she,
            addr=("address", f"{w.street}, {w.city}"),
            street=("address", w.street),
            d=("date", w.date(onset)),
            adj=rng.choice(("independent", "walking with a cane", "managing alone", "working")),
        ),
    ]
    rest = units[1:]
    rng.shuffle(rest)
    return _Section(
        w.heading(
            "History of Present Illness",
            "HPI",
            "Present Illness",
            "History of Present Illness and ED Course",
        ),
        [units[0], *rest],
        prose=True,
    )


_PROCEDURES = (
    "appendectomy",
    "laparoscopic cholecystectomy",
    "right total knee arthroplasty",
    "left inguinal hernia repair",
    "cesarean section",
    "coronary stent placement",
    "tonsillectomy",
    "cataract extraction, left eye",
    "lumbar laminectomy",
    "carpal tunnel release",
    "colonoscopy with polypectomy",
    "open reduction of wrist fracture",
)


def _history(w: _Writer) -> list[_Section]:
    rng = w.rng
    pmh = [
        w.pick(
            "{dx} ({icd}), diagnosed {y}",
            "{dx}, ICD-10 {icd}, since {y}",
            "{dx} [{icd}] - followed by Dr. {doc}",
            "{y}: {dx} ({icd})",
            optional=True,
            dx=("diagnosis", d.name),
            icd=("icd10", d.icd10),
            y=str(w.years[d.name]),
            doc=("physician", w.person().name),
        )
        for i, d in enumerate(w.comorbid)
    ]
    psh = [
        w.pick(
            "{p} ({y})",
            "{P}, {y}, at {fac}",
            "{y} - {p}, Dr. {doc}",
            p=proc,
            P=proc.capitalize(),
            y=str(rng.randint(1980, w.admit.year)),
            fac=("facility", w._facility()),
            doc=("physician", w.person().name),
        )
        for proc in rng.sample(_PROCEDURES, rng.randint(1, 3))
    ]
    meds = [
        w.unit(
            "{m}" + rng.choice(("", "; last filled {d}", " (prescriber Dr. {doc})", "")),
            optional=True,
            m=("medication", m.line(rng)),
            d=("date", w.date(w.before(3, 60))),
            doc=("physician", w.person().name),
        )
        for i, m in enumerate(w.meds)
    ]
    allergies = rng.choice(
        (
            [w.unit(rng.choice(("NKDA", "No known drug allergies", "None known")), optional=True)],
            [
                w.pick(
                    "{drug}: {rx}",
                    "{drug} ({rx})",
                    "{drug} - {rx}, documented {y}",
                    optional=True,
                    drug=("medication", drug),
                    rx=rx,
                    y=str(rng.randint(1995, 2024)),
                )
                for drug, rx in zip(
                    rng.sample(
                        (
                            "Penicillin",
                            "Sulfa drugs",
                            "Codeine",
                            "Iodinated contrast",
                            "Latex",
                            "Amoxicillin",
                            "Aspirin",
                            "Morphine",
                        ),
                        2,
                    ),
                    rng.sample(
                        ("rash", "hives", "anaphylaxis", "nausea", "angioedema", "itching"), 2
                    ),
                    strict=True,
                )
            ],
        )
    )
    sections = [
        _Section(
            w.heading("Past Medical History", "PMH", "Medical History", "Active Problems"),
            pmh,
            bullet=w.bullet,
        ),
        _Section(
            w.heading("Past Surgical History", "Surgical History", "Prior Procedures"),
            psh,
            bullet=w.bullet,
        ),
        _Section(
            w.heading(
                "Medications", "Home Medications", "Medications on Admission", "Current Medications"
            ),
            meds,
            bullet=w.bullet,
        ),
        _Section(
            w.heading("Allergies", "Drug Allergies", "Allergies and Reactions"),
            allergies,
            bullet=w.bullet,
        ),
    ]
    return sections


def _social(w: _Writer) -> list[_Section]:
    rng = w.rng
    she = w.she.capitalize()
    social = [
        w.pick(
            "Lives with {her} {rel} {c} in {city}.",
            "{She} shares a home in {city} with {her} {rel}, {c}.",
            "Resides in {city}; {her} {rel} {c} is the main support.",
            her=w.her,
            She=she,
            rel=w.relation,
            c=("contact", w.contact.name),
            city=("address", f"{w.city}, {w.state}"),
            optional=True,
        ),
        w.pick(
            "Works as a {job} at {co}.",
            "Occupation: {job} ({co}).",
            "Retired {job}, formerly with {co}.",
            job=w.fake.job().lower(),
            co=("employer", w.fake.company()),
        ),
        w.pick(
            "Tobacco: {n} pack-years, quit in {y}.",
            "Smokes {k} cigarettes a day.",
            "Never smoker.",
            "Former smoker ({n} pack-years).",
            n=str(rng.randint(2, 60)),
            y=str(rng.randint(1990, 2024)),
            k=str(rng.randint(3, 30)),
        ),
        w.pick(
            "Alcohol: {n} drinks per week.",
            "Drinks {n} beers on weekends.",
            "Denies alcohol and drug use.",
            "Occasional wine, about {n} glasses a month.",
            n=str(rng.randint(1, 20)),
        ),
        w.pick(
            "Emergency contact: {c} ({rel}), {ph}.",
            "In an emergency call {c} at {ph}.",
            c=("contact", w.contact.name),
            rel=w.relation,
            ph=("phone", w.contact_phone),
        ),
        w.pick(
            "Insurance member ID {v}.",
            "Insured through {co}, policy {v}.",
            v=("insurance_id", f"{w.fake.bothify('??#######').upper()}"),
            co=w.fake.company(),
        ),
    ]
    relatives = rng.sample(
        ("Mother", "Father", "Sister", "Brother", "Maternal grandmother", "Paternal uncle"), 2
    )
    family = [
        w.pick(
            "{r}: {dx}, {st}",
            "{r} with {dx} ({st})",
            "{r} - {dx}; {st}",
            optional=True,
            r=r,
            dx=("family_history", rng.choice(load_diseases()).name.lower()),
            st=rng.choice(
                (
                    f"deceased at {rng.randint(45, 95)}",
                    f"alive at {rng.randint(40, 95)}",
                    f"diagnosed at {rng.randint(30, 80)}",
                )
            ),
        )
        for i, r in enumerate(relatives)
    ]
    return [
        _Section(
            w.heading("Social History", "Social", "Social and Functional History"),
            social,
            prose=True,
        ),
        _Section(
            w.heading("Family History", "FHx", "Family Medical History"), family, bullet=w.bullet
        ),
    ]


_EXAM = (
    (
        "General",
        (
            "alert and oriented",
            "in no acute distress",
            "ill-appearing",
            "diaphoretic",
            "comfortable at rest",
            "pale",
            "anxious",
        ),
    ),
    ("HEENT", ("moist mucous membranes", "anicteric sclerae", "dry oral mucosa", "no JVD")),
    (
        "Lungs",
        (
            "clear bilaterally",
            "bibasilar crackles",
            "scattered wheezes",
            "decreased breath sounds at the {side} base",
            "good air entry",
        ),
    ),
    (
        "Heart",
        (
            "regular rhythm",
            "tachycardic",
            "{grade}/6 systolic murmur",
            "no rubs",
            "irregularly irregular",
        ),
    ),
    (
        "Abdomen",
        (
            "soft",
            "tender in the {quad}",
            "non-distended",
            "normal bowel sounds",
            "guarding in the {quad}",
        ),
    ),
    (
        "Extremities",
        (
            "no edema",
            "{grade}+ pitting edema",
            "warm and well perfused",
            "calf tenderness on the {side}",
        ),
    ),
    (
        "Neuro",
        (
            "nonfocal",
            "strength {grade}/5 in all limbs",
            "CN II-XII intact",
            "mild {side} pronator drift",
        ),
    ),
)


def _exam(w: _Writer) -> _Section:
    rng = w.rng
    vitals = w.pick(
        "Vitals ({d} {t}): BP {bp}, HR {hr}, RR {rr}, T {temp} C, SpO2 {sat}% on {o2}, "
        "weight {kg} kg.",
        "{d} at {t} - temperature {temp} C, pulse {hr}, blood pressure {bp}, respirations {rr}, "
        "saturation {sat}% ({o2}), {kg} kg.",
        "BP {bp} | HR {hr} | RR {rr} | Temp {temp} | SpO2 {sat}% {o2} | Wt {kg} kg "
        "(recorded {d} {t})",
        optional=True,
        d=("date", w.date(w.admit)),
        t=w.time(),
        bp=f"{rng.randint(92, 178)}/{rng.randint(50, 104)}",
        hr=str(rng.randint(54, 128)),
        rr=str(rng.randint(12, 30)),
        temp=f"{rng.uniform(36.0, 39.5):.1f}",
        sat=str(rng.randint(86, 100)),
        o2=rng.choice(("room air", f"{rng.randint(1, 6)} L NC")),
        kg=f"{rng.uniform(45, 140):.1f}",
    )
    lines = [vitals]
    for system, findings in rng.sample(_EXAM, rng.randint(3, len(_EXAM))):
        chosen = rng.sample(findings, min(len(findings), rng.randint(1, 2)))
        text = ", ".join(
            f.format(
                side=rng.choice(("left", "right")),
                grade=rng.randint(1, 4),
                quad=rng.choice(
                    (
                        "right upper quadrant",
                        "left lower quadrant",
                        "epigastrium",
                        "right lower quadrant",
                    )
                ),
            )
            for f in chosen
        )
        lines.append(w.unit(f"{system}: {text}."))
    return _Section(
        w.heading("Physical Examination", "Exam on Admission", "Vital Signs and Exam", "Objective"),
        lines,
        bullet=w.bullet,
    )


# (name, unit, low, high, decimals)
_LABS = (
    ("Sodium", "mmol/L", 124, 148, 0),
    ("Potassium", "mmol/L", 2.9, 6.1, 1),
    ("Chloride", "mmol/L", 92, 112, 0),
    ("Bicarbonate", "mmol/L", 14, 32, 0),
    ("BUN", "mg/dL", 6, 68, 0),
    ("Creatinine", "mg/dL", 0.5, 4.8, 2),
    ("Glucose", "mg/dL", 62, 420, 0),
    ("Calcium", "mg/dL", 7.6, 11.2, 1),
    ("Magnesium", "mg/dL", 1.3, 2.8, 1),
    ("WBC", "x10^9/L", 2.1, 24.5, 1),
    ("Hemoglobin", "g/dL", 6.8, 17.2, 1),
    ("Platelets", "x10^9/L", 48, 520, 0),
    ("INR", "", 0.9, 3.8, 1),
    ("ALT", "U/L", 8, 310, 0),
    ("AST", "U/L", 10, 280, 0),
    ("Total bilirubin", "mg/dL", 0.2, 6.5, 1),
    ("Albumin", "g/dL", 2.1, 4.9, 1),
    ("Lactate", "mmol/L", 0.6, 6.2, 1),
    ("Troponin I", "ng/mL", 0.0, 2.4, 2),
    ("BNP", "pg/mL", 20, 2400, 0),
    ("CRP", "mg/L", 1, 260, 0),
    ("HbA1c", "%", 4.8, 12.5, 1),
    ("TSH", "mIU/L", 0.1, 9.5, 2),
    ("Lipase", "U/L", 12, 900, 0),
)


def _lab_value(rng: random.Random, lab: tuple) -> str:
    name, unit, lo, hi, decimals = lab
    value = f"{rng.uniform(lo, hi):.{decimals}f}"
    return f"{name} {value}{' ' + unit if unit else ''}"


def _labs(w: _Writer) -> _Section:
    rng = w.rng
    days = sorted({w.during() for _ in range(rng.randint(3, 6))} | {w.admit})
    lines = []
    for day in days:
        tests = rng.sample(_LABS, rng.randint(5, 9))
        values = ", ".join(_lab_value(rng, lab) for lab in tests)
        lines.append(
            w.pick(
                "{d} {t}: {v}",
                "{d} ({t}) - {v}",
                "[{d} {t}] {v}",
                d=("date", w.date(day)),
                t=w.time(),
                v=values,
            )
        )
    studies = (
        (
            "Chest X-ray",
            (
                "no acute cardiopulmonary process",
                "{side} lower lobe opacity",
                "small {side} pleural effusion",
                "mild pulmonary vascular congestion",
            ),
        ),
        (
            "CT abdomen/pelvis",
            (
                "no acute findings",
                "wall thickening of the {organ}",
                "fluid collection near the {organ}",
            ),
        ),
        (
            "ECG",
            ("sinus rhythm at {hr}", "atrial fibrillation at {hr}", "sinus tachycardia at {hr}"),
        ),
        ("Ultrasound", ("no deep vein thrombosis", "gallbladder sludge", "{side} hydronephrosis")),
    )
    for study, findings in rng.sample(studies, rng.randint(1, 3)):
        finding = rng.choice(findings).format(
            side=rng.choice(("left", "right")),
            organ=rng.choice(("colon", "pancreas", "bladder")),
            hr=rng.randint(58, 140),
        )
        lines.append(
            w.pick(
                "{s} ({d}): {f}; read by Dr. {doc}.",
                "{s} {d} - {f} (Dr. {doc})",
                s=study,
                d=("date", w.date(w.during())),
                f=finding,
                doc=("physician", w.person().name),
            )
        )
    return _Section(
        w.heading("Laboratory Data", "Labs", "Pertinent Results", "Results"), lines, bullet=w.bullet
    )


def _plan_for(w: _Writer, disease: Disease, first: bool) -> _Unit:
    rng = w.rng
    m = w.new_meds[0] if first else w.med(disease)
    doc, spec = rng.choice(w.consultants)
    return w.pick(
        "{dx} ({icd}): start {drug} {dose} {freq}; {spec} consult with Dr. {doc}.",
        "{dx}, {icd} - continue {drug} {dose} {freq}, recheck labs on {d}.",
        "{dx} [{icd}]. Plan: {drug} {dose} {route} {freq}, follow {sym}; discussed with Dr. {doc}.",
        "{dx} (ICD-10 {icd}) - {drug} {dose} {freq}, reassess on {d}.",
        optional=not first,
        dx=("diagnosis", disease.name),
        icd=("icd10", disease.icd10),
        drug=("medication", m.drug),
        dose=("dose", m.strength),
        freq=m.frequency,
        route=m.route,
        spec=spec,
        doc=("physician", doc.name),
        d=("date", w.date(w.during())),
        sym=rng.choice(disease.symptoms).lower(),
    )


def _assessment(w: _Writer) -> _Section:
    rng = w.rng
    summary = w.pick(
        "{age}-year-old with {hx} admitted for {dx}.",
        "In summary, {name} presents with {dx} on a background of {hx}.",
        "Impression: {dx} in a patient with {hx}.",
        optional=True,
        age=str(w.age),
        hx=("diagnosis", _join([d.name.lower() for d in w.comorbid[:2]])),
        dx=("diagnosis", w.primary.name.lower()),
        name=("name", w.patient.name),
    )
    lines = [summary, _plan_for(w, w.primary, first=True)]
    lines += [_plan_for(w, d, first=False) for d in w.comorbid]
    lines.append(
        w.pick(
            "Code status: {cs}, confirmed with {c} ({rel}).",
            "Code status {cs}; health care proxy {c}, {ph}.",
            cs=rng.choice(("full code", "DNR/DNI", "full")),
            c=("contact", w.contact.name),
            rel=w.relation,
            ph=("phone", w.contact_phone),
        )
    )
    lines.append(
        w.pick(
            "Prophylaxis: {p}.",
            "DVT prophylaxis with {p}.",
            p=rng.choice(
                (
                    "enoxaparin 40 mg SC daily",
                    "heparin 5000 units SC q8h",
                    "sequential compression devices",
                )
            ),
        )
    )
    return _Section(
        w.heading("Assessment and Plan", "Assessment & Plan", "Impression and Plan", "A/P"),
        lines,
        bullet=rng.choice(("", "- ", "# ")),
    )


def _course(w: _Writer) -> list[_Section]:
    rng = w.rng
    diagnoses = [
        w.pick(
            "{dx} ({icd})",
            "{dx}, ICD-10 {icd}",
            "{icd} {dx}",
            optional=True,
            dx=("diagnosis", d.name),
            icd=("icd10", d.icd10),
        )
        for i, d in enumerate([w.primary, *w.comorbid])
    ]
    course = []
    for i, d in enumerate([w.primary, *w.comorbid[:2]]):
        m = w.new_meds[0] if i == 0 else w.med(d)
        doc, spec = rng.choice(w.consultants)
        course.append(
            w.pick(
                "{dx}: treated with {drug} {dose} {freq} from {d1}; {spec} (Dr. {doc}) followed, "
                "and {sym} improved by {d2}.",
                "For {dx} ({icd}) {she} received {drug} {dose} {route} {freq}. Dr. {doc} of "
                "{spec} saw {obj} on {d1}. By {d2} the {sym} had resolved.",
                "{dx} was managed with {drug} {dose} {freq} beginning {d1}, with {spec} input from "
                "Dr. {doc}; {sym} was better on {d2}.",
                optional=i > 0,
                dx=("diagnosis", d.name),
                icd=("icd10", d.icd10),
                drug=("medication", m.drug),
                dose=("dose", m.strength),
                freq=m.frequency,
                route=m.route,
                spec=spec,
                doc=("physician", doc.name),
                she=w.she,
                obj=w.her_obj,
                d1=("date", w.date(w.admit)),
                d2=("date", w.date(w.during())),
                sym=rng.choice(d.symptoms).lower(),
            )
        )
    for _ in range(rng.randint(1, 3)):
        day = w.during()
        course.append(
            w.pick(
                "On {d} {she} {event}.",
                "Hospital day {n} ({d}): {event2}.",
                "{d}: {event2}; Dr. {doc} updated {her} {rel} {c}.",
                d=("date", w.date(day)),
                she=w.she,
                n=str((day - w.admit).days + 1),
                event=rng.choice(
                    (
                        "spiked a fever to 38.9 C",
                        "was transferred to the step-down unit",
                        "developed transient hypotension",
                        "was weaned off oxygen",
                        "tolerated a regular diet",
                        "had a fall without injury",
                    )
                ),
                event2=rng.choice(
                    (
                        "blood cultures drawn",
                        "telemetry discontinued",
                        "PT evaluation",
                        "diuresis continued",
                        "antibiotics narrowed",
                        "central line removed",
                    )
                ),
                doc=("physician", w.attending.name),
                her=w.her,
                rel=w.relation,
                c=("contact", w.contact.name),
            )
        )
    meds = [
        w.unit(
            "{tag} {m}",
            optional=True,
            tag=rng.choice(("START", "NEW:", "Start")),
            m=("medication", m.line(rng)),
        )
        for i, m in enumerate(w.new_meds)
    ]
    meds += [
        w.unit(
            "{tag} {m}",
            tag=rng.choice(("CONTINUE", "Continue", "Unchanged:", "STOP")),
            m=("medication", m.line(rng)),
        )
        for m in w.meds
    ]
    return [
        _Section(
            w.heading("Discharge Diagnoses", "Final Diagnoses", "Diagnoses"),
            diagnoses,
            bullet=w.bullet,
        ),
        _Section(
            w.heading("Hospital Course", "Brief Hospital Course", "Summary of Hospital Course"),
            course,
            prose=rng.random() < 0.5,
            bullet=w.bullet,
        ),
        _Section(
            w.heading(
                "Discharge Medications",
                "Medications at Discharge",
                "Discharge Medication Reconciliation",
            ),
            meds,
            bullet=w.bullet,
        ),
    ]


def _follow_up(w: _Writer) -> _Section:
    rng = w.rng
    lines = [
        w.pick(
            "Dr. {doc} ({spec}) on {d} at {t}, {addr}; phone {ph}.",
            "{spec}: Dr. {doc}, {d} {t}. Clinic: {addr}, {ph}.",
            "See Dr. {doc}, {spec}, within {n} days ({d}); call {ph} to confirm.",
            optional=True,
            doc=("physician", doc.name),
            spec=spec,
            d=("date", w.date(w.after(3, 30))),
            t=w.time(),
            n=str(rng.randint(3, 21)),
            addr=("address", f"{w.fake.street_address()}, {w.fake.city()}"),
            ph=("phone", w.fake.phone_number()),
        )
        for i, (doc, spec) in enumerate([(w.pcp, "Primary care"), *w.consultants])
    ]
    lines.append(
        w.pick(
            "Return or call {ph} for {warn}.",
            "If {warn} occur, call {ph} or 911.",
            "Warning signs ({warn}): contact the team at {ph}.",
            ph=("phone", w.fake.phone_number()),
            warn=_join(w.symptoms(w.primary, 2)),
        )
    )
    lines.append(
        w.pick(
            "Labs to be drawn on {d}: {tests}.",
            "Repeat {tests} on {d}.",
            d=("date", w.date(w.after(2, 10))),
            tests=_join([lab[0] for lab in rng.sample(_LABS, 2)]),
        )
    )
    return _Section(
        w.heading(
            "Follow-up",
            "Follow-up Appointments",
            "Outpatient Follow-up",
            "Disposition and Follow-up",
        ),
        lines,
        bullet=w.bullet,
    )


def _signature(w: _Writer) -> _Section:
    rng = w.rng
    when = w.discharge if w.kind == "discharge" else w.admit
    lines = [
        w.pick(
            "Electronically signed by Dr. {doc}, MD on {d} at {t}.",
            "Signed: {doc}, MD ({d} {t})",
            "Attending attestation: Dr. {doc}, {d}.",
            optional=False,
            doc=("physician", w.attending.name),
            d=("date", w.date(when)),
            t=w.time(),
        ),
        w.pick(
            "cc: Dr. {doc}",
            "Copy to Dr. {doc}, primary care",
            "cc: {doc}, MD; {doc2}, MD",
            doc=("physician", w.pcp.name),
            doc2=("physician", w.consultants[0][0].name),
        ),
        w.pick(
            "Dictated by {res}, {role}; transcribed {d}.",
            "Note prepared by {res} ({role}).",
            res=("physician", w.person().name),
            d=("date", w.date(when)),
            role=rng.choice(("PGY-1", "PGY-2", "NP", "PA-C", "medical student")),
        ),
    ]
    return _Section("", lines)


def draft_note(rng: random.Random, fake: Faker, mrn: str, ssn: str) -> _Draft:
    """One note's whole content; `render` writes it, `fit_note` trims it to a length."""
    kind = rng.choice(NOTE_KINDS)
    w = _Writer(rng, fake, mrn, ssn, kind)
    header = _header(w)
    diagnoses, course, discharge_meds = _course(w) if kind == "discharge" else (None, None, None)
    body = [_chief_complaint(w), _hpi(w), *_history(w), *_social(w), _exam(w), _labs(w)]
    if kind == "admission":
        sections = [header, *body, _assessment(w)]
    else:  # the diagnoses right after the header, the stay after the admission findings
        sections = [header, diagnoses, *body, course, discharge_meds]
    sections += [_follow_up(w), _signature(w)]
    return _Draft(kind, sections)


# --------------------------------------------------------------------------- fitting


def _token_counts(tokenizer: Any, text: str) -> tuple[int, list[int]]:
    """(tokens of `text` with the tokenizer's special tokens, as a training row holds them
    before its end-of-text token; end offsets of its non-special tokens)."""
    enc = tokenizer(text, return_offsets_mapping=True)
    ends = [end for start, end in enc["offset_mapping"] if end > start]
    return len(enc["input_ids"]), ends


def fit_note(
    draft: _Draft,
    rng: random.Random,
    tokenizer: Any,
    min_tokens: int,
    max_tokens: int,
    split_tokens: int,
) -> tuple[ClinicalNote, int] | None:
    """The draft trimmed to a length drawn in [min_tokens, max_tokens] tokens (optional
    sentences and lines kept in a seeded order up to that length), and its split: the first
    sentence or line end with at least `split_tokens` tokens before it. None when the draft
    cannot fit or leaves fewer than `min_tokens - split_tokens` tokens after the split."""
    # Kept first to last: a section's earlier units tend to come before its later ones,
    # so a short note has a little of every section rather than all of a few.
    rank: dict[int, float] = {}
    section_of: dict[int, int] = {}
    for number, section in enumerate(draft.sections):
        position = 0  # among the section's optional units
        for unit in section.units:
            section_of[len(rank)] = number
            rank[len(rank)] = position + 3 * rng.random() if unit.optional else -1
            position += unit.optional
    optional = sorted((i for i, r in rank.items() if r >= 0), key=rank.__getitem__)
    mandatory = [i for i, r in rank.items() if r < 0]
    target = rng.randint(min_tokens, max_tokens)

    # Token counts are close to additive over units (byte-level pre-tokenizers cut at
    # spaces and newlines), so the length of any selection is estimated from one
    # tokenization of the whole draft; the chosen one is then measured exactly.
    whole, unit_spans, heading_spans = _layout(draft, lambda i: True)
    total, ends = _token_counts(tokenizer, whole.text)
    specials = total - len(ends)
    starts = sorted((start, ("u", i)) for i, (start, _) in unit_spans.items())
    starts += sorted((start, ("h", n)) for n, (start, _) in heading_spans.items())
    starts.sort()
    owners = [owner for _, owner in starts]
    positions = [start for start, _ in starts]
    weight: dict[tuple[str, int], int] = dict.fromkeys(owners, 0)
    for end in ends:
        weight[owners[bisect.bisect_left(positions, end) - 1]] += 1

    def estimate(k: int) -> int:
        kept = [*mandatory, *optional[:k]]
        sections = {section_of[i] for i in kept}
        return (
            specials + sum(weight[("u", i)] for i in kept) + sum(weight[("h", n)] for n in sections)
        )

    def exact(k: int) -> tuple[ClinicalNote, int, list[int]]:
        kept = set(optional[:k])
        note = render(draft, kept.__contains__)
        return (note, *_token_counts(tokenizer, note.text))

    lo, hi = 0, len(optional)  # the largest k estimated to fit the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    note, total, ends = exact(lo)
    while total > max_tokens and lo > 0:
        lo -= 1
        note, total, ends = exact(lo)
    while total < min_tokens and lo < len(optional):
        lo += 1
        note, total, ends = exact(lo)
    if not min_tokens <= total <= max_tokens:
        return None
    split = next((b for b in note.boundaries if bisect.bisect_right(ends, b) >= split_tokens), None)
    if split is None or len(ends) - bisect.bisect_right(ends, split) < min_tokens - split_tokens:
        return None
    return note, split


def generate_notes(
    n: int,
    seed: int,
    tokenizer: Any,
    min_tokens: int,
    max_tokens: int,
    split_tokens: int,
) -> list[tuple[ClinicalNote, int]]:
    """``n`` distinct notes as ``(note, split)``, deterministic in seed and tokenizer: each
    has ``min_tokens`` to ``max_tokens`` tokens, ``split_tokens`` or more before the split
    (a sentence or line end) and ``min_tokens - split_tokens`` or more after it. Record
    numbers and SSNs are unique within one call."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 < split_tokens < min_tokens <= max_tokens:
        raise ValueError(
            f"need 0 < split_tokens ({split_tokens}) < min_tokens ({min_tokens}) "
            f"<= max_tokens ({max_tokens})"
        )
    rng = random.Random(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    mrns: set[str] = set()
    ssns: set[str] = set()
    notes: list[tuple[ClinicalNote, int]] = []
    failures = 0
    while len(notes) < n:
        mrn = f"{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
        ssn = fake.ssn()
        if mrn in mrns or ssn in ssns:
            continue
        fitted = fit_note(
            draft_note(rng, fake, mrn, ssn), rng, tokenizer, min_tokens, max_tokens, split_tokens
        )
        if fitted is None:
            failures += 1
            if failures > 20 + 2 * n:
                raise ValueError(
                    f"notes of {min_tokens} to {max_tokens} tokens split after {split_tokens}: "
                    f"{failures} of {failures + len(notes)} drafts did not fit; widen the range"
                )
            continue
        mrns.add(mrn)
        ssns.add(ssn)
        notes.append(fitted)
    return notes
