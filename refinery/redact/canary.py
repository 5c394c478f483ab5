"""Canary corpus: synthetic support queries with planted PII, to measure the redactor's recall.

Every query is built here from templates and random values (nothing is drawn from a dataset),
so each planted value (a canary) and its kind are known exactly, and so is the text the
redactor should produce. Some queries also carry negatives: order numbers that fail Luhn,
version numbers, dates, prices, times, which must come out unchanged.

Deterministic for a given (n, seed). Owns nothing else; used by tests and `bench/`.
"""

from __future__ import annotations

import ipaddress
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from refinery.redact.redactor import CARD, EMAIL, IBAN, IP, PHONE, iban_valid, luhn_valid

KINDS: tuple[str, ...] = (EMAIL, PHONE, CARD, IBAN, IP)


@dataclass(frozen=True)
class Canary:
    kind: str
    value: str


@dataclass(frozen=True)
class CanaryCase:
    text: str
    canaries: tuple[Canary, ...]
    negatives: tuple[str, ...]  # substrings of `text` that must survive redaction
    expected: str  # `text` with each canary replaced by its placeholder


def generate_canary_corpus(n: int, seed: int) -> list[CanaryCase]:
    """`n` queries, each with 1-3 canaries (kinds drawn uniformly) and, in about a third of
    them, one or two negatives. The same (n, seed) gives the same corpus."""
    rng = random.Random(seed)
    return [_case(rng) for _ in range(n)]


def generate_value(kind: str, rng: random.Random) -> str:
    """One random, valid value of `kind` in one of its common written formats."""
    return _VALUE_MAKERS[kind](rng)


# --- values -------------------------------------------------------------------------------


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


# (brand, prefixes, lengths)
_CARD_BRANDS: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("visa", ("4",), (16, 16, 16, 13, 19)),
    ("mastercard", ("51", "52", "53", "54", "55", "2221", "2500", "2720"), (16,)),
    ("amex", ("34", "37"), (15,)),
    ("discover", ("6011", "644", "65"), (16, 19)),
    ("jcb", ("3528", "3550", "3589"), (16,)),
    ("diners", ("36", "300", "305", "38"), (14,)),
    ("unionpay", ("62",), (16, 17, 18, 19)),
    ("maestro", ("5018", "6759", "6304"), (16, 19)),
)


def _group(number: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, i = [], 0
    for size in sizes:
        parts.append(number[i : i + size])
        i += size
    if i < len(number):
        parts.append(number[i:])
    return sep.join(parts)


def _card(rng: random.Random) -> str:
    _, prefixes, lengths = rng.choice(_CARD_BRANDS)
    length = rng.choice(lengths)
    number = _luhn_complete(rng.choice(prefixes), length, rng)
    style = rng.random()
    if style < 0.3:
        return number
    sep = " " if style < 0.75 else "-"
    if length == 15:
        return _group(number, (4, 6, 5), sep)
    if length == 14:
        return _group(number, (4, 6, 4), sep)
    return _group(number, (4, 4, 4, 4), sep)  # 13: 4-4-5, 17-19: 4-4-4-4-rest


# Country -> BBAN layout: runs of (class, count), n digits, a upper letters, c alphanumerics.
_IBAN_LAYOUTS: dict[str, tuple[tuple[str, int], ...]] = {
    "DE": (("n", 18),),
    "GB": (("a", 4), ("n", 14)),
    "IE": (("a", 4), ("n", 14)),
    "FR": (("n", 10), ("c", 11), ("n", 2)),
    "NL": (("a", 4), ("n", 10)),
    "ES": (("n", 20),),
    "IT": (("a", 1), ("n", 10), ("c", 12)),
    "BE": (("n", 12),),
    "CH": (("n", 5), ("c", 12)),
    "AT": (("n", 16),),
    "PL": (("n", 24),),
    "NO": (("n", 11),),
    "SE": (("n", 20),),
    "PT": (("n", 21),),
    "DK": (("n", 14),),
}
_CLASSES = {
    "n": string.digits,
    "a": string.ascii_uppercase,
    "c": string.digits + string.ascii_uppercase,
}


def _iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_LAYOUTS))
    bban = "".join(
        rng.choice(_CLASSES[cls]) for cls, count in _IBAN_LAYOUTS[country] for _ in range(count)
    )
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    assert iban_valid(iban)
    if rng.random() < 0.35:
        return iban
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


# fmt: off
_FIRST = ("anna", "john", "maria", "li", "omar", "sofia", "lukas", "chloe", "raj", "emma", "noah",
          "fatima", "pierre", "yuki", "carlos", "ingrid", "kwame", "olga", "tom", "zoe")
_LAST = ("smith", "mueller", "garcia", "nguyen", "kowalski", "rossi", "dubois", "tanaka", "okafor",
         "johansson", "patel", "silva", "obrien", "novak", "haddad", "lee")
_ORG = ("example", "acme-corp", "northwind", "globex", "initech", "umbrella-labs", "contoso",
        "fabrikam", "tailspin", "wideworld", "blueyonder", "litware", "proseware", "adventure")
# fmt: on
_SUB = ("mail", "eu", "support", "corp.mail", "dept.finance", "students", "staff.us")
_TLD = ("com", "org", "net", "io", "co.uk", "de", "fr", "com.au", "dev", "ch", "nl", "info")


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice(
        (
            f"{first}.{last}",
            f"{first}{last}",
            f"{first[0]}.{last}",
            f"{first}_{last}{rng.randrange(1, 99)}",
            f"{first}+{rng.choice(('orders', 'news', 'support', 'x7'))}",
            f"{first}.{last}+{rng.choice(('billing', 'test', '2024'))}",
            f"{last}.{first[0]}{rng.randrange(1970, 2005)}",
        )
    )
    domain = f"{rng.choice(_ORG)}.{rng.choice(_TLD)}"
    if rng.random() < 0.35:
        domain = f"{rng.choice(_SUB)}.{domain}"
    email = f"{local}@{domain}"
    return email.title() if rng.random() < 0.08 else email


def _nanp(rng: random.Random) -> tuple[str, str, str]:
    area = str(rng.randrange(2, 10)) + _digits(rng, 2)
    exchange = str(rng.randrange(2, 10)) + _digits(rng, 2)
    return area, exchange, _digits(rng, 4)


def _phone(rng: random.Random) -> str:
    d = lambda n: _digits(rng, n)  # noqa: E731
    a, e, line = _nanp(rng)
    formats: tuple[Callable[[], str], ...] = (
        # North America
        lambda: f"+1 {a}-{e}-{line}",
        lambda: f"({a}) {e}-{line}",
        lambda: f"{a}-{e}-{line}",
        lambda: f"{a}.{e}.{line}",
        lambda: f"+1 ({a}) {e}-{line}",
        lambda: f"1-800-{e}-{line}",
        lambda: f"+1{a}{e}{line}",
        # United Kingdom
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"020 {d(4)} {d(4)}",
        lambda: f"01{d(2)} {d(3)} {d(4)}",
        lambda: f"07{d(3)} {d(6)}",
        lambda: f"+44 7{d(3)} {d(6)}",
        lambda: f"+44 (0)20 {d(4)} {d(4)}",
        # Germany
        lambda: f"+49 30 {d(rng.randrange(6, 9))}",
        lambda: f"030 {d(rng.randrange(6, 9))}",
        lambda: f"+49 171 {d(7)}",
        lambda: f"0171 {d(7)}",
        lambda: f"089/{d(7)}",
        # France
        lambda: f"+33 {rng.randrange(1, 10)} {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"0{rng.randrange(1, 10)} {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"0{rng.randrange(1, 10)}.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
        # Australia, Japan, India, Brazil, Netherlands, Spain, China
        lambda: f"+61 2 {d(4)} {d(4)}",
        lambda: f"(02) {d(4)} {d(4)}",
        lambda: f"04{d(2)} {d(3)} {d(3)}",
        lambda: f"+81 3-{d(4)}-{d(4)}",
        lambda: f"03-{d(4)}-{d(4)}",
        lambda: f"+91 {rng.randrange(6, 10)}{d(4)} {d(5)}",
        lambda: f"+55 11 9{d(4)}-{d(4)}",
        lambda: f"+31 6 {d(8)}",
        lambda: f"06-{d(8)}",
        lambda: f"+34 6{d(2)} {d(3)} {d(3)}",
        lambda: f"+86 138 {d(4)} {d(4)}",
        lambda: f"0044 20 {d(4)} {d(4)}",
    )
    return rng.choice(formats)()


def _ip(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.55:
        first = rng.choice((10, 172, 192, rng.randrange(1, 224)))
        return ".".join(str(o) for o in (first, *(rng.randrange(0, 256) for _ in range(3))))
    groups = [rng.randrange(0, 0x10000) for _ in range(8)]
    if style < 0.7:
        return ":".join(f"{g:x}" for g in groups)  # full form
    if style < 0.85:
        zero_from = rng.randrange(2, 6)  # a run of zeros, written as "::"
        for i in range(zero_from, zero_from + rng.randrange(2, 4)):
            groups[i] = 0
        return ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)).compressed
    if style < 0.93:
        return f"fe80::{groups[4]:x}:{groups[5]:x}:{groups[6]:x}:{groups[7]:x}"
    v4 = (rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))
    return "::ffff:" + ".".join(map(str, v4))


_VALUE_MAKERS: dict[str, Callable[[random.Random], str]] = {
    EMAIL: _email,
    PHONE: _phone,
    CARD: _card,
    IBAN: _iban,
    IP: _ip,
}


# --- negatives ----------------------------------------------------------------------------


def _order_number(rng: random.Random) -> str:
    while True:
        number = str(rng.randrange(1, 10)) + _digits(rng, rng.randrange(12, 19))
        if not luhn_valid(number):
            break
    if len(number) == 16 and rng.random() < 0.3:
        return _group(number, (4, 4, 4, 4), "-")
    return number


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip


def _negative(rng: random.Random) -> tuple[str, str]:
    """(clause, the value in it that must survive)."""
    kind = rng.randrange(6)
    if kind == 0:
        value = _order_number(rng)
        clause = rng.choice(("My order #{} still hasn't shipped.", "Reference: {}.",
                             "It's about order number {}."))  # fmt: skip
    elif kind == 1:
        parts = [str(rng.randrange(0, 20)) for _ in range(5)]
        value = rng.choice((".".join(parts), "v" + ".".join(parts[:4]), ".".join(parts[:3])))
        clause = rng.choice(("This started after updating to {}.", "I'm on version {}."))
    elif kind == 2:
        y, m, day = rng.randrange(2019, 2027), rng.randrange(1, 13), rng.randrange(1, 29)
        value = rng.choice(
            (
                f"{y}-{m:02d}-{day:02d}",
                f"{day:02d}/{m:02d}/{y}",
                f"{day:02d}.{m:02d}.{y}",
                f"{_MONTHS[m - 1]} {day}, {y}",
                f"{y}-{m:02d}-{day:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            )
        )
        clause = rng.choice(
            ("It happened on {}.", "Since {} nothing works.", "I was billed on {}.")
        )
    elif kind == 3:
        amount = rng.randrange(1, 5000)
        cents = rng.randrange(100)
        value = rng.choice(
            (
                f"${amount:,}.{cents:02d}",
                f"€{amount}.{cents:02d}",
                f"{amount},{cents:02d} €",
                f"£{amount:,}",
                f"USD {amount:,}.00",
            )
        )
        clause = rng.choice(
            ("I was charged {} twice.", "The plan costs {} per month.", "Refund {} please.")
        )
    elif kind == 4:
        value = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
        clause = "The error appeared at {} today."
    else:
        value = f"{rng.randrange(1, 40)} items"
        clause = "The cart shows {} but I added fewer."
    return clause.format(value), value


# --- queries ------------------------------------------------------------------------------

_GREETINGS = ("", "", "Hi, ", "Hello, ", "Hey there, ", "Good morning, ", "Dear support, ")
_PROBLEMS = (
    "I can't log in to my account",
    "I was charged twice this month",
    "the CSV export keeps failing",
    "my subscription renewal didn't go through",
    "the mobile app crashes on startup",
    "I never received the password reset link",
    "the invoice shows the wrong company name",
    "my refund hasn't arrived yet",
    "two-factor codes are not being sent",
    "the API returns 403 for my key",
    "I want to close my account",
    "the assistant gave me the wrong opening hours",
    "my parcel arrived damaged",
    "the delivery address on my order is wrong",
    "I need to update my billing details",
    "the dashboard shows no data since yesterday",
    "my account got locked after a failed payment",
    "the webhook stopped firing",
)
_CLAUSES: dict[str, tuple[str, ...]] = {
    EMAIL: (
        "My account email is {}.",
        "Please reply to {}, not to my old address.",
        "I signed up with {} last year.",
        "Send the invoice to {}.",
        "You can contact me at {}",
        "The login ({}) no longer works.",
        'It says "{}" is not registered.',
        "Meine E-Mail-Adresse ist {}.",
    ),
    PHONE: (
        "You can call me on {}.",
        "My phone number is {}",
        "Text me at {} please.",
        "The SMS goes to {} but never arrives.",
        "Reach me at {}, any time after lunch.",
        "Mon numéro est le {}.",
        "Phone: {}",
    ),
    CARD: (
        "I paid with card {}.",
        "My card number is {}, expiring next year.",
        "Please charge {} instead.",
        "The payment on {} was declined.",
        "Card: {}",
        "Mi tarjeta es {}.",
    ),
    IBAN: (
        "Please refund to IBAN {}.",
        "My bank account is {}",
        "The direct debit from {} failed.",
        "Wire it to {}, thanks.",
        "IBAN: {}",
    ),
    IP: (
        "I'm connecting from {}.",
        "The login came from {} which isn't me.",
        "Our server at {} is blocked.",
        "My IP is {}",
        "Requests from {} get rate limited.",
    ),
}
_CLOSINGS = ("", "Can you help?", "What should I do?", "Thanks!", "Please advise.",
             "Is this a known issue?", "This is urgent.")  # fmt: skip


def _case(rng: random.Random) -> CanaryCase:
    greeting = rng.choice(_GREETINGS)
    problem = rng.choice(_PROBLEMS)
    opener = f"{greeting}{problem}." if greeting else f"{problem[0].upper()}{problem[1:]}."
    # (text piece, expected piece) pairs, shuffled after the opener
    pieces: list[tuple[str, str]] = []
    canaries: list[Canary] = []
    for _ in range(rng.randrange(1, 4)):
        kind = rng.choice(KINDS)
        value = generate_value(kind, rng)
        clause = rng.choice(_CLAUSES[kind])
        pieces.append((clause.format(value), clause.format(f"<{kind}>")))
        canaries.append(Canary(kind, value))
    negatives: list[str] = []
    if rng.random() < 0.35:
        for _ in range(rng.randrange(1, 3)):
            clause, value = _negative(rng)
            pieces.append((clause, clause))
            negatives.append(value)
    rng.shuffle(pieces)
    closing = rng.choice(_CLOSINGS)
    text_parts = [opener, *(p for p, _ in pieces), closing]
    expected_parts = [opener, *(e for _, e in pieces), closing]
    return CanaryCase(
        text=" ".join(p for p in text_parts if p),
        canaries=tuple(canaries),
        negatives=tuple(negatives),
        expected=" ".join(p for p in expected_parts if p),
    )
