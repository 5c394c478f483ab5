"""Canary corpus: synthetic support queries with planted PII, to measure the redactor's recall.

Every query is built here from templates and random values (nothing is drawn from a dataset),
so each planted value (a canary) and its kind are known exactly, and so is the text the
redactor should produce. Some queries also carry negatives: order numbers that fail Luhn,
version numbers, dates, prices, times, which must come out unchanged.

Deterministic for a given (n, seed). A test fixture, not shipped in the package; used by tests
and `bench/`.
"""

from __future__ import annotations

import ipaddress
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from refinery.redact.redactor import (
    ADDRESS,
    CARD,
    EMAIL,
    IBAN,
    IP,
    NAME,
    PHONE,
    SECRET,
    SSN,
    iban_valid,
    luhn_valid,
)

# Kinds the redactor finds in a value standing alone (what `generate_value` makes may be planted
# anywhere), and every kind the corpus plants: a NAME is found only after "my name is" and the
# like, so its clauses carry that context.
KINDS: tuple[str, ...] = (EMAIL, PHONE, CARD, IBAN, IP, SSN, SECRET, ADDRESS)
CORPUS_KINDS: tuple[str, ...] = (*KINDS, NAME)


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


def _ssn_value(rng: random.Random) -> str:
    area = rng.randrange(1, 900)
    while area == 666:
        area = rng.randrange(1, 900)
    sep = "-" if rng.random() < 0.75 else " "
    return f"{area:03d}{sep}{rng.randrange(1, 100):02d}{sep}{rng.randrange(1, 10_000):04d}"


_B64URL = string.ascii_letters + string.digits + "-_"
_ALNUM = string.ascii_letters + string.digits


def _token(rng: random.Random, n: int, alphabet: str = _ALNUM) -> str:
    """`n` random characters holding at least one digit and one letter."""
    body = [rng.choice(alphabet) for _ in range(n - 2)]
    body += [rng.choice(string.digits), rng.choice(string.ascii_letters)]
    rng.shuffle(body)
    return "".join(body)


def _secret(rng: random.Random) -> str:
    upper = string.ascii_uppercase + string.digits
    makers: tuple[Callable[[], str], ...] = (
        lambda: f"sk-live-{_token(rng, 24)}",
        lambda: f"sk_test_{_token(rng, 24)}",
        lambda: f"sk-proj-{_token(rng, 40, _B64URL)}",
        lambda: f"sk-{_token(rng, 48)}",
        lambda: f"ghp_{_token(rng, 36)}",
        lambda: f"github_pat_{_token(rng, 22)}_{_token(rng, 59)}",
        lambda: rng.choice(("AKIA", "ASIA")) + "".join(rng.choice(upper) for _ in range(16)),
        lambda: f"xoxb-{_digits(rng, 12)}-{_digits(rng, 13)}-{_token(rng, 24)}",
        lambda: (
            f"eyJ{_token(rng, 30, _B64URL)}.eyJ{_token(rng, 60, _B64URL)}."
            f"{_token(rng, 43, _B64URL)}"
        ),
        lambda: "-----BEGIN {}PRIVATE KEY-----\n{}\n{}\n-----END {}PRIVATE KEY-----".format(
            kind := rng.choice(("", "RSA ", "EC ", "OPENSSH ")),
            _token(rng, 64, _ALNUM + "+/"),
            _token(rng, 40, _ALNUM + "+/") + "==",
            kind,
        ),
    )
    return rng.choice(makers)()


def _bearer(rng: random.Random) -> str:
    """An opaque access token: a secret only by where it stands ("Bearer ...")."""
    return _token(rng, rng.randrange(24, 64), _B64URL + ".")


_STREETS = ("Baker", "High", "Church", "Station", "Victoria", "Park", "Mill", "Oak", "Maple",
            "Pennsylvania", "Elm", "Washington", "King Edward", "Martin Luther King",
            "Rue", "Queen", "Green", "Abbey", "Sunset", "Old Kent")  # fmt: skip
_SUFFIXES = ("Street", "St", "Road", "Rd", "Avenue", "Ave", "Lane", "Drive", "Boulevard", "Way",
             "Close", "Court", "Place", "Terrace", "Crescent", "Square")  # fmt: skip
_OUTWARD = ("SW1A", "EC1A", "W1A", "M1", "B33", "CR2", "DN55", "N1", "LS1", "G2", "EH1", "BS8",
            "NW1", "SE10", "E14", "CF10", "L3", "OX1")  # fmt: skip
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


def _address(rng: random.Random) -> str:
    if rng.random() < 0.25:
        inward = "".join(rng.choice(_INWARD_LETTERS) for _ in range(2))
        return f"{rng.choice(_OUTWARD)} {rng.randrange(10)}{inward}"
    number = str(rng.choice((rng.randrange(1, 100), rng.randrange(1, 10_000))))
    if rng.random() < 0.1:
        number += rng.choice("ABC")
    address = f"{number} {rng.choice(_STREETS)} {rng.choice(_SUFFIXES)}"
    return address + (rng.choice((" NW", " SE")) if rng.random() < 0.05 else "")


_MIDDLE = ("Margaret", "James", "Luis", "Anne", "Marie", "Kofi", "Elena")
_SPECIAL_NAMES = ("O'Brien", "Jean-Luc", "McDonald", "José", "Ærø", "Müller", "Nguyễn")


def _person(rng: random.Random) -> str:
    first = rng.choice(_FIRST).capitalize()
    last = rng.choice(_LAST).capitalize()
    if rng.random() < 0.15:
        first = rng.choice(_SPECIAL_NAMES[:4])
    if rng.random() < 0.15:
        last = rng.choice(("O'Brien", "McDonald", "Müller", "Álvarez"))
    if rng.random() < 0.2:
        return f"{first} {rng.choice(_MIDDLE)} {last}"
    return first if rng.random() < 0.1 else f"{first} {last}"


_VALUE_MAKERS: dict[str, Callable[[random.Random], str]] = {
    EMAIL: _email,
    PHONE: _phone,
    CARD: _card,
    IBAN: _iban,
    IP: _ip,
    SSN: _ssn_value,
    SECRET: _secret,
    ADDRESS: _address,
    NAME: _person,
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
    kind = rng.randrange(9)
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
    elif kind == 5:
        value = f"{rng.randrange(1, 40)} items"
        clause = "The cart shows {} but I added fewer."
    elif kind == 6:  # SSN-shaped but invalid: area 000/666/9xx, group 00 or serial 0000
        # (area 100-899 otherwise: "0xx-xx-xxxx" is also a national phone number's shape)
        area, group, serial = (
            rng.randrange(100, 900),
            rng.randrange(1, 100),
            rng.randrange(1, 10_000),
        )
        bad = rng.randrange(4)
        area = (0, 666, rng.randrange(900, 1000), area)[bad]
        group, serial = (group, 0) if bad == 3 and rng.random() < 0.5 else (group, serial)
        group = 0 if bad == 3 and serial else group
        value = f"{area:03d}-{group:02d}-{serial:04d}"
        clause = rng.choice(("Case {} is still open.", "Ticket number {}."))
    elif kind == 7:  # tool and product names with hyphens, "key", "token", "bearer"
        value = rng.choice(("scikit-learn", "sk-learn", "the task-runner-service",
                            "gh_actions", "AKIA policy", "bearer of the bad news",
                            "Bearer token expired", "an OAuth token"))  # fmt: skip
        clause = rng.choice(("The error mentions {}.", "I read about {} in the docs."))
    else:  # a number and capitalised words, but no street; a name without a telling phrase
        value = rng.choice(("3 Main Things", "2 Factor Auth", "Windows 11 Pro", "4 Pro Max",
                            "10 Best Practices", "this is what I was speaking of",
                            "Greta Nilsson's team", "Version 2 Drive", "ISO 27001"))  # fmt: skip
        clause = rng.choice(("The page '{}' is broken.", "Is '{}' supported?"))
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
        # after another number: order ids and amounts must not shield the card
        "Order 12345 {} was declined.",
        "I paid 20 {} yesterday.",
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
    SSN: (
        "My SSN is {}.",
        "The form asks for my social security number ({}) again.",
        "SSN: {}",
    ),
    SECRET: (
        "I pasted my key {} into the chat by mistake.",
        "Here is my API key: {}",
        "Authorization: Bearer {}",
        "The token {} stopped working.",
    ),
    ADDRESS: (
        "Please ship it to {}.",
        "My address is {}, flat 2.",
        "I moved to {} last month.",
        "Deliver to {} please.",
    ),
    NAME: (
        "My name is {}.",
        "my name is {} and I am a customer.",
        "This is {} speaking.",
        "Signed, {}.",
        "Kind regards, {}.",
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
        kind = rng.choice(CORPUS_KINDS)
        value = generate_value(kind, rng)
        clause = rng.choice(_CLAUSES[kind])
        if "Bearer" in clause:
            value = _bearer(rng)
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
