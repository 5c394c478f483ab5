"""PII redaction of free text: emails, phone numbers, payment cards, IBANs, IP addresses, US
social security numbers, secrets (API keys, access tokens, private keys), person names after a
telling phrase ("my name is ...", "signed, ...", "this is ... speaking"), street addresses and UK
postcodes, and configured extra patterns, each replaced by a typed placeholder such as
``<EMAIL>``.

Names are found by context only: a name with no such phrase around it is not redacted (a
dictionary of names would flag half of all product names too).

Owns the detection rules (regexes plus checksums) and nothing else: it never logs, stores or
counts the text it sees, and it is pure (no I/O, no settings read at import), so every stage
can call it before text leaves the process.

Contract of `Redactor.redact`:
- Idempotent: ``redact(redact(x)) == redact(x)``.
- Placeholders already in the text are left intact; no pattern matches inside one.
- Linear time: look-behinds stop a regex from restarting inside a run it has already
  rejected, quantifiers are bounded or possessive, and candidates are checked in Python
  (Luhn, mod-97, `ipaddress`) only after a cheap structural match. About 0.1-0.6 s per
  million characters, hostile inputs included.
- Never raises on any ``str`` (lone surrogates, NULs, huge strings).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from refinery.settings import RedactionSettings

EMAIL, IBAN, CARD, IP, PHONE = "EMAIL", "IBAN", "CARD", "IP", "PHONE"
SSN, SECRET, ADDRESS, NAME = "SSN", "SECRET", "ADDRESS", "NAME"
# Order of the passes. Validated kinds go first so a looser pass (PHONE) never claims part of
# a card or an IBAN; EMAIL first because an address can hold digits that look like anything,
# SECRET before it because a key can hold anything else.
BUILTIN_KINDS: tuple[str, ...] = (SECRET, EMAIL, IBAN, CARD, SSN, IP, PHONE, ADDRESS, NAME)

# Most built-in regexes open with a look-ahead on their first character: it lets `re` skip
# positions that cannot start a match, several times faster than opening with a look-behind.

# Redaction repeats until a round changes nothing. Placeholders are made to block neighbours as
# the redacted characters did, so a second round rarely finds anything; it can when a value
# was hidden by a neighbour of a kind redacted later in the round ("+44 20 7946 0958" glued to
# a card). Fuzzing never needed more than two changing rounds; the cap bounds hostile input.
_MAX_ROUNDS = 8

_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_DIGITS_RE = re.compile(r"[0-9]+")

# Kinds whose values end in digits, as far as the "inside a run of digit groups" guards go.
_DIGITISH = (IBAN, CARD, SSN, IP, PHONE)


def _not_in_group_run(digits: int, seps: str) -> str:
    """Look-behinds refusing a start right after "12 " (`digits` digits and a separator: the
    value would be the tail of a longer sequence of digit groups), or after "<CARD> ": what such
    a sequence looks like once redacted. Without the second half, redacting one value could
    uncover the next and redaction would not be idempotent."""
    return rf"(?<!{'[0-9]' * digits}[{seps}])" + "".join(
        rf"(?<!<{kind}>[{seps}])" for kind in _DIGITISH
    )


# A validator gets a structural match and returns where the PII inside it ends (the match may
# have run on past it, e.g. into a CVV after a card), or None to reject the candidate.
_Validator = Callable[[re.Match[str]], int | None]


@dataclass(frozen=True)
class _Rule:
    """A regex and its validator. A regex with a group named `pii` redacts that group only (the
    rest is context, such as "my name is")."""

    regex: re.Pattern[str]
    validate: _Validator | None = None


@dataclass(frozen=True)
class _Detector:
    kind: str
    rules: tuple[_Rule, ...]
    # What any text holding this kind must contain (a necessary condition, a regex cheap to
    # search); the rules are not run on a text without it. None: always run them.
    gate: str | None
    # Extra patterns are user-written and may match placeholder text; built-ins cannot.
    guard_placeholders: bool = False


# --- checksums ----------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Luhn (mod-10) check of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        v = ord(ch) - 48
        if i & 1:
            v = v * 2 - 9 if v > 4 else v * 2
        total += v
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 mod-97 check of a compact, upper-case IBAN (no spaces)."""
    if not (iban[:2].isalpha() and iban[2:4].isdigit() and iban.isalnum() and iban.isascii()):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# IBAN length per country (ISO 13616 registry). Unknown country codes fall back to any length
# from 15 to 34 that passes mod-97 at a group boundary.
IBAN_LENGTHS: Mapping[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


# --- EMAIL --------------------------------------------------------------------------------
# Unicode-aware (internationalised local parts and domains); labels and the local part are
# bounded so a failed candidate costs O(64), and the look-behind stops restarts inside a word.
_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,63}(?![\w-])"
)

# --- IBAN ---------------------------------------------------------------------------------
# Compact ("DE89370400440532013000") or in groups of four ("DE89 3704 0044 0532 0130 00").
# The grouped form may run one group past the IBAN ("BE68 5390 0754 7034 is"); the validator
# cuts it at the country's length.
_IBAN_RE = re.compile(
    r"(?=[A-Za-z])(?<![0-9A-Za-z])[A-Za-z]{2}[0-9]{2}"
    r"(?:[0-9A-Za-z]{11,30}(?![0-9A-Za-z])|(?:\ [0-9A-Za-z]{4}){2,7}(?:\ [0-9A-Za-z]{1,4})?)"
)


def _iban_end(m: re.Match[str]) -> int | None:
    s = m.group()
    compact = s.replace(" ", "").upper()
    size = len(compact)
    grouped = len(compact) != len(s)  # then exactly "XXNN" and groups of four, as the regex says
    want = IBAN_LENGTHS.get(compact[:2])
    for n in (want,) if want else range(min(34, size), 14, -1):
        # The IBAN must end where the candidate does or at the end of a group of four.
        if (n == size or (grouped and n < size and n % 4 == 0)) and iban_valid(compact[:n]):
            return m.start() + n + ((n - 1) // 4 if grouped else 0)
    return None


# --- CARD ---------------------------------------------------------------------------------
# 13-19 digits, contiguous or in groups (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3) with one kind of
# separator. Not after '+' (that is a phone number), and a grouped one not right after a group
# of exactly four digits ("1234 "): it would be the tail of a longer sequence of 4-digit groups.
# After any other number ("order 12345 4111 1111 1111 1111", "paid 20 4111-...") it is a card.
# The grouped form may run on into a CVV; the validator keeps the longest Luhn-valid prefix of
# 13-19 digits.
_CARD_RE = re.compile(
    r"(?=[0-9])(?<![0-9+])(?:"
    r"(?<!(?<![0-9])[0-9]{4}[ -])"
    + "".join(rf"(?<!<{kind}>[ -])" for kind in _DIGITISH)
    + r"[0-9]{4}(?P<sep>[ -])[0-9]{3,6}(?![0-9])(?:(?P=sep)[0-9]{1,6}(?![0-9])){0,4}+"
    r"|[0-9]{13,19}(?![0-9]))"
)


def _card_end(m: re.Match[str]) -> int | None:
    s = m.group()
    if m.group("sep") is None:  # contiguous: the regex already fixed the length
        return m.end() if luhn_valid(s) else None
    digits = ""
    ends: list[tuple[int, int]] = []
    for g in _DIGITS_RE.finditer(s):
        digits += g.group()
        if len(digits) > 19:
            break
        if len(digits) >= 13:
            ends.append((len(digits), g.end()))
    for count, offset in reversed(ends):
        if luhn_valid(digits[:count]):
            return m.start() + offset
    return None


# --- SSN ----------------------------------------------------------------------------------
# US social security number, written with separators ("123-45-6789", "123 45 6789"): nine bare
# digits are too often something else. Area not 000, 666 or 9xx; group not 00; serial not 0000.
_SSN_RE = re.compile(
    # Not glued to letters either: "clinc150-11-1234" is an identifier, not an SSN.
    r"(?=[0-9])(?<![0-9A-Za-z_+.,/:])"
    + _not_in_group_run(2, " -")
    + r"(?!000|666|9)[0-9]{3}(?P<ssep>[ -])(?!00)[0-9]{2}(?P=ssep)(?!0000)[0-9]{4}"
    r"(?![0-9A-Za-z_]|[ -][0-9]|[.,/:][0-9])"
)

# --- SECRET -------------------------------------------------------------------------------
# Credentials with a recognisable shape: API keys ("sk-live-...", "sk-...", "sk_test_...",
# "rk_live_..."), GitHub tokens ("ghp_...", "github_pat_..."), AWS access key ids ("AKIA...",
# "ASIA..."), Slack tokens, JSON web tokens, the token of "Bearer ..." and PEM private keys.
_SECRET_KEY_RE = re.compile(
    r"(?=[sprgAxe])(?<![0-9A-Za-z_-])(?:"
    r"(?:sk|pk|rk)[-_](?:(?:live|test|proj|prod|ant|or)[-_])?[A-Za-z0-9_-]{20,200}+"
    r"|gh[pousr]_[A-Za-z0-9]{30,255}+"
    r"|github_pat_[A-Za-z0-9_]{22,255}+"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,200}+"
    r"|eyJ[A-Za-z0-9_-]{8,2000}+\.eyJ[A-Za-z0-9_-]{8,4000}+\.[A-Za-z0-9_-]{8,2000}+"
    r")(?![0-9A-Za-z_-])"
)
_BEARER_RE = re.compile(
    r"(?<![A-Za-z])(?:[Bb]earer|BEARER)[ \t]{1,3}+(?P<pii>[A-Za-z0-9._~+/-]{16,4000}+=*)"
    r"(?![A-Za-z0-9._~+/=-])"
)
# The header, the base64 body (stops at anything else) and the footer when it is there: the
# body's character class excludes '-', so a header is never re-scanned and this stays linear.
_PEM_RE = re.compile(
    r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----[A-Za-z0-9+/=\s]{0,100000}+"
    r"(?:-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----)?"
)
_SECRET_HINT_RE = re.compile(
    r"sk[-_]|pk[-_]|rk[-_]|gh[pousr]_|github_pat_|AKIA|ASIA|xox|eyJ"
    r"|[Bb]earer|BEARER|PRIVATE KEY"
)


def _secret_end(m: re.Match[str]) -> int | None:
    """A key-shaped token must hold a digit and a letter (not "sk-this-is-a-long-word-list");
    an AWS key id's fixed shape is enough on its own."""
    s = m.group()
    if s.startswith(("AKIA", "ASIA")):
        return m.end()
    has_digit = any(c.isdigit() for c in s)
    has_letter = any(c.isalpha() for c in s[3:])
    return m.end() if has_digit and has_letter else None


# --- ADDRESS ------------------------------------------------------------------------------
# A house number, one to four capitalised words and a street suffix ("221B Baker Street",
# "1600 Pennsylvania Avenue NW", "12 High St"); a UK postcode with its space ("SW1A 1AA").
_STREET_SUFFIXES = (
    "Street|St|Road|Rd|Avenue|Ave|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|"
    "Terrace|Close|Crescent|Square|Sq|Parkway|Pkwy|Highway|Hwy|Gardens|Grove|Row|Walk|Mews"
)
_ADDRESS_RE = re.compile(
    r"(?=[1-9])(?<![0-9A-Za-z.,/:+-])"
    + _not_in_group_run(2, " ")
    + r"[1-9][0-9]{0,4}[A-Za-z]?(?:-[1-9][0-9]{0,4})?,?[ \t]{1,2}"
    r"(?:[A-Z][a-z'’]{1,30}+[ \t]{1,2}){1,4}"
    rf"(?:{_STREET_SUFFIXES}|street|road|avenue|lane|drive)"
    r"(?:[ \t](?:NW|NE|SW|SE))?(?![A-Za-z0-9])"
)
_POSTCODE_RE = re.compile(
    r"(?=[A-Z])(?<![0-9A-Za-z])[A-Z]{1,2}[0-9][A-Z0-9]?\ [0-9][ABD-HJLNP-UW-Z]{2}(?![0-9A-Za-z])"
)

# --- NAME ---------------------------------------------------------------------------------
# One to four capitalised words after "my name is", "signed,", "regards,", "sincerely,", or
# between "this is" and "speaking". A word: "Jane", "O'Brien", "Jean-Luc", "McDonald", "José".
_UPPER = "A-ZÀ-ÖØ-Þ"
_LOWER = "a-zß-öø-ÿ"
_NAME_WORD = (
    rf"[{_UPPER}](?:[{_LOWER}]|[{_UPPER}](?=[{_LOWER}])|['’-](?=[{_UPPER}{_LOWER}])){{1,30}}+"
)
_NAME_WORDS = rf"(?P<pii>{_NAME_WORD}(?:[ \t]{_NAME_WORD}){{0,3}}+)"
_NAME_AFTER_RE = re.compile(
    r"(?=[MmSsKkBbRr])(?<![A-Za-z])(?:[Mm]y [Nn]ame [Ii]s|MY NAME IS|[Ss]igned,?"
    r"|(?:[Kk]ind |[Bb]est )?[Rr]egards,|[Ss]incerely,|[Ss]incerely yours,)[ \t\r\n]{1,3}+"
    + _NAME_WORDS
    + r"(?![A-Za-z0-9])"
)
_NAME_SPEAKING_RE = re.compile(
    r"(?=[Tt])(?<![A-Za-z])[Tt]his [Ii]s[ \t]{1,2}+" + _NAME_WORDS + r"(?=,?[ \t]{1,2}speaking\b)"
)
_NAME_HINT_RE = re.compile(r"[Nn]ame [Ii]s|NAME IS|igned|egards|incerely|speaking")


# --- IP -----------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
# Not after a letter or a dot: "v1.2.3.4" and "1.2.3.4.5" are versions, not addresses.
_IPV4_RE = re.compile(
    rf"(?=[0-9])(?<![0-9A-Za-z_.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9]|\.[0-9])", re.ASCII
)
# Structural IPv6 candidate (groups of hex, '::', optional dotted IPv4 tail, optional zone);
# `ipaddress` decides. Times like 10:30:00 reach the validator and are rejected there.
_IPV6_RE = re.compile(
    r"(?=[0-9A-Fa-f:])(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?:%[0-9A-Za-z_~-](?:[0-9A-Za-z_.~-]{0,30}[0-9A-Za-z_~-])?)?(?![0-9A-Za-z_:]|\.[0-9])"
)
_HEX_RE = re.compile(r"[0-9A-Fa-f]")


def _ipv6_end(m: re.Match[str]) -> int | None:
    s = m.group()
    if not _HEX_RE.search(s):  # a bare "::" in prose
        return None
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return m.end()


# --- PHONE --------------------------------------------------------------------------------
# International: '+' or '00' then a country code and groups ("+1 (415) 555-0199",
# "+44 (0)20 7946 0958", "(+44) 20 7946 0958", "0049 30 901820"). The look-ahead wants 8
# digits before any work.
_PHONE_INTL_RE = re.compile(
    r"(?=[+0(])(?<![0-9A-Za-z_+])(?:(?P<cc_paren>\()?\+|(?<![0-9])"
    + _not_in_group_run(2, " .-")
    + r"00(?=[1-9][0-9]{0,2}[ .(-]))"
    r"(?=(?:[ .()-]{0,3}[0-9]){8})"
    r"[1-9][0-9]{0,2}(?(cc_paren)\))(?:\ ?\(0\))?(?:[ .-]?(?:\([0-9]{1,6}\)|[0-9]{1,6})){0,15}+"
)
_PHONE_INTL_DIGITS = (8, 15)
# North American national: "(415) 555-0199", "415-555-0199", "415.555.0199", "1-800-555-0199".
# Not after "12 " and the like: a group inside a longer digit sequence is not a phone number.
_PHONE_NANP_RE = re.compile(
    r"(?=[0-9(])(?<![0-9A-Za-z_+])"
    + _not_in_group_run(2, " .-")
    + r"(?:1[ .-]?)?(?:\([0-9]{3}\)\ ?|[0-9]{3}[ .-])"
    r"[0-9]{3}[ .-][0-9]{4}(?![0-9A-Za-z_])"
)
# Neither kind is glued to letters: "bb19ff03-5655-4292-a84e" is a UUID, not a phone number.
# National with a trunk 0: "020 7946 0958", "0151 496 0123", "030 901820", "(02) 9876 5432",
# "06 12 34 56 78", "03-1234-5678", "089/1234567", "07700900123". After the area code the
# separators must agree, which keeps dates ("01.02.2024 10:30") out.
_PHONE_TRUNK_RE = re.compile(
    r"(?=[(0])(?<![0-9A-Za-z_+])" + _not_in_group_run(2, " .-") + r"(?=(?:[ ./()-]{0,2}[0-9]){9})"
    r"(?:\(0[1-9][0-9]{0,3}\)\ ?|0[1-9][0-9]{0,3}[ ./-]?)[0-9]{2,8}"
    r"(?:(?P<tsep>[ .-])[0-9]{2,8}(?:(?P=tsep)[0-9]{2,8})*+)?(?![0-9A-Za-z_])"
)
_PHONE_TRUNK_DIGITS = (9, 12)
_PHONE_GROUP_RE = re.compile(r"\([0-9]+\)|[0-9]+")


def _intl_end(m: re.Match[str]) -> int | None:
    s = m.group()
    lo, hi = _PHONE_INTL_DIGITS
    skip = 2 if s.startswith("00") else 0  # the international prefix is not part of the number
    count, end = -skip, None
    for g in _PHONE_GROUP_RE.finditer(s):
        n = count + sum(c.isdigit() for c in g.group())
        if n > hi:
            break
        count, end = n, g.end()
    if end is None or count < lo:
        return None
    return m.start() + end


def _trunk_end(m: re.Match[str]) -> int | None:
    lo, hi = _PHONE_TRUNK_DIGITS
    n = sum(c.isdigit() for c in m.group())
    return m.end() if lo <= n <= hi else None


# Gates (see _Detector.gate), each implied by its kind's rules and validators:
_GATES: Mapping[str, str] = {
    SECRET: _SECRET_HINT_RE.pattern,
    EMAIL: "@",
    IBAN: r"[A-Za-z]{2}[0-9]{2}",
    CARD: r"[0-9](?:[ -]?[0-9]){12}",  # 13 digits, single separators at most between them
    SSN: r"[0-9]{3}[ -][0-9]{2}[ -][0-9]{4}",
    IP: r"[0-9]\.[0-9]|:",  # a dotted quad, or IPv6's colons
    PHONE: r"[0-9](?:[^0-9]*+[0-9]){7}",  # 8 digits: the fewest any phone rule accepts
    # A house number (up to "12345B-12345"), a space and a capital; a postcode's " 1AA".
    ADDRESS: r"[0-9][0-9A-Za-z-]{0,11},?[ \t]{1,2}[A-Z]|\ [0-9][A-Z]{2}",
    NAME: _NAME_HINT_RE.pattern,
}
# Kinds whose gate cannot pass on a text without one of these characters.
_TRIGGER_RE = re.compile(r"[0-9@:]")
_NEEDS_TRIGGER = frozenset({EMAIL, IBAN, CARD, SSN, IP, PHONE, ADDRESS})


_BUILTIN_DETECTORS: Mapping[str, _Detector] = {
    SECRET: _Detector(
        SECRET,
        (_Rule(_SECRET_KEY_RE, _secret_end), _Rule(_BEARER_RE), _Rule(_PEM_RE)),
        _GATES[SECRET],
    ),
    EMAIL: _Detector(EMAIL, (_Rule(_EMAIL_RE),), _GATES[EMAIL]),
    IBAN: _Detector(IBAN, (_Rule(_IBAN_RE, _iban_end),), _GATES[IBAN]),
    CARD: _Detector(CARD, (_Rule(_CARD_RE, _card_end),), _GATES[CARD]),
    SSN: _Detector(SSN, (_Rule(_SSN_RE),), _GATES[SSN]),
    IP: _Detector(IP, (_Rule(_IPV4_RE), _Rule(_IPV6_RE, _ipv6_end)), _GATES[IP]),
    PHONE: _Detector(
        PHONE,
        (
            _Rule(_PHONE_INTL_RE, _intl_end),
            _Rule(_PHONE_NANP_RE),
            _Rule(_PHONE_TRUNK_RE, _trunk_end),
        ),
        _GATES[PHONE],
    ),
    ADDRESS: _Detector(ADDRESS, (_Rule(_ADDRESS_RE), _Rule(_POSTCODE_RE)), _GATES[ADDRESS]),
    NAME: _Detector(NAME, (_Rule(_NAME_AFTER_RE), _Rule(_NAME_SPEAKING_RE)), _GATES[NAME]),
}


def _parse_extra(spec: str) -> tuple[str, re.Pattern[str]]:
    name, sep, pattern = spec.partition("=")
    name = name.strip()
    if not sep or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f'extra redaction pattern {spec!r}: want "NAME=regex", NAME [A-Z][A-Z0-9_]*'
        )
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"extra redaction pattern {name}: invalid regex: {exc}") from exc
    if regex.fullmatch(""):
        raise ValueError(f"extra redaction pattern {name} matches the empty string")
    return name, regex


def _spans(
    detector: _Detector,
    text: str,
    protected: list[tuple[int, int]],
    placeholders: tuple[str, ...],
    placeholder_re: re.Pattern[str],
) -> list[tuple[int, int]]:
    """Spans of `detector`'s kind in `text`, sorted, overlaps merged (same placeholder).

    A candidate glued to a placeholder ("<CARD>4111...") is refused: the placeholder stands
    for characters that blocked it before they were redacted, and must keep blocking it."""
    found: list[tuple[int, int]] = []
    for rule in detector.rules:
        search, validate = rule.regex.search, rule.validate
        part = "pii" in rule.regex.groupindex
        pos, size = 0, len(text)
        while pos <= size:
            m = search(text, pos)
            if m is None:
                break
            end: int | None
            if part:  # only the named part is PII; the rest is context
                start, end = m.span("pii")
            else:
                start = m.start()
                end = m.end() if validate is None else validate(m)
            if (
                end is None
                or end <= start
                or (start and text[start - 1] == ">" and text.endswith(placeholders, 0, start))
                or (end < size and text[end] == "<" and placeholder_re.match(text, end))
                or (protected and _overlaps(protected, start, end))
            ):
                # Restart one past the rejected start: the look-behinds make restarts inside
                # the rejected run fail at once, so this stays linear.
                pos = start + 1
                continue
            found.append((start, end))
            pos = end
    if len(detector.rules) > 1:
        found.sort()
    merged: list[tuple[int, int]] = []
    for start, end in found:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _overlaps(protected: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether [start, end) overlaps one of the sorted, disjoint `protected` spans."""
    i = bisect.bisect_right(protected, start, key=lambda span: span[0])
    if i and protected[i - 1][1] > start:
        return True
    return i < len(protected) and protected[i][0] < end


class Redactor:
    """Replaces PII in text with typed placeholders (``<EMAIL>``, ``<PHONE>``, ``<CARD>``,
    ``<IBAN>``, ``<IP>``, ``<SSN>``, ``<SECRET>``, ``<ADDRESS>``, ``<NAME>``; ``<X>`` for an
    extra pattern X).

    Build once per process (regexes are compiled at construction) and share: it holds no
    mutable state, so it is safe across threads.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        kinds: Iterable[str] = BUILTIN_KINDS,
        extra_patterns: Iterable[str] = (),
    ) -> None:
        """`kinds`: built-in kinds to redact, applied in `BUILTIN_KINDS` order.
        `extra_patterns`: "NAME=regex" strings, applied after the built-ins in the given order.
        Raises ValueError on an unknown kind or a malformed pattern."""
        wanted = [k.strip().upper() for k in kinds]
        unknown = sorted(set(wanted) - set(BUILTIN_KINDS))
        if unknown:
            raise ValueError(f"unknown redaction kinds {unknown}; known: {list(BUILTIN_KINDS)}")
        detectors = [_BUILTIN_DETECTORS[k] for k in BUILTIN_KINDS if k in wanted]
        for spec in extra_patterns:
            name, regex = _parse_extra(spec)
            detectors.append(_Detector(name, (_Rule(regex),), None, True))
        self.enabled = enabled
        self._detectors: tuple[_Detector, ...] = tuple(detectors)
        # Per detector, its gate's search (None: no gate), and whether that gate needs one of
        # [0-9@:]: most text has none of them, and then one scan skips all those detectors.
        self._gates = tuple(
            (None if d.gate is None else re.compile(d.gate).search, d.kind in _NEEDS_TRIGGER)
            for d in detectors
        )
        self.kinds: tuple[str, ...] = tuple(dict.fromkeys(d.kind for d in detectors))
        names = sorted(set(self.kinds) | set(BUILTIN_KINDS), key=len, reverse=True)
        self._placeholders = tuple(f"<{name}>" for name in names)
        self._placeholder_re = re.compile("|".join(map(re.escape, self._placeholders)))
        # Detectors whose gate must be asked again in a later round even when it failed in the
        # one before. A round only replaces spans with placeholders: no gate can match "<" or
        # ">" (PHONE's [^0-9]* can, but it counts digits, and a placeholder removes digits), so
        # a gate that failed can pass later only inside a placeholder's name: a gateless
        # detector, a gate that matches some placeholder, or any gate once a name holds a digit.
        digits_in_names = any(any(c.isdigit() for c in name) for name in names)
        self._recheck = frozenset(
            i
            for i, (gate, _) in enumerate(self._gates)
            if gate is None
            or digits_in_names
            or any(gate(placeholder) for placeholder in self._placeholders)
        )
        self._every_detector = frozenset(range(len(detectors)))

    @classmethod
    def from_settings(cls, settings: RedactionSettings | None = None) -> Redactor:
        """A redactor configured by the `redaction_*` settings (the process's by default)."""
        if settings is None:
            from refinery.settings import get_settings

            settings = get_settings()
        return cls(
            enabled=settings.redaction_enabled,
            kinds=settings.redaction_kinds,
            extra_patterns=settings.redaction_extra_patterns,
        )

    def redact(self, text: str) -> str:
        """`text` with every detected PII value replaced by its placeholder."""
        return self.redact_with_counts(text)[0]

    def redact_with_counts(self, text: str) -> tuple[str, dict[str, int]]:
        """The redacted text and how many values of each kind were replaced (kinds with none
        are absent). The counts are safe to log; the values never are."""
        counts: dict[str, int] = {}
        if not self.enabled or not text:
            return text, counts
        # After the first round only detectors whose gate passed (or may newly pass, see
        # _recheck) are asked again: most gates scan the whole text, and a text that had PII
        # always takes a second round.
        asked = self._every_detector
        for _ in range(_MAX_ROUNDS):
            text, changed, passed = self._round(text, counts, asked)
            if not changed:
                break
            asked = passed | self._recheck
        return text, counts

    def _round(
        self, text: str, counts: dict[str, int], asked: frozenset[int]
    ) -> tuple[str, bool, frozenset[int]]:
        """One pass of the `asked` detectors: the new text, whether it changed, and the
        detectors whose gate passed."""
        changed = False
        passed: list[int] = []
        plain = _TRIGGER_RE.search(text) is None
        for i, (detector, (gate, needs_trigger)) in enumerate(
            zip(self._detectors, self._gates, strict=True)
        ):
            if i not in asked:
                continue
            if (plain and needs_trigger) or (gate is not None and gate(text) is None):
                continue
            passed.append(i)
            protected: list[tuple[int, int]] = []
            if detector.guard_placeholders and "<" in text:
                protected = [m.span() for m in self._placeholder_re.finditer(text)]
            spans = _spans(detector, text, protected, self._placeholders, self._placeholder_re)
            if not spans:
                continue
            placeholder = f"<{detector.kind}>"
            parts: list[str] = []
            last = 0
            for start, end in spans:
                parts.append(text[last:start])
                parts.append(placeholder)
                last = end
            parts.append(text[last:])
            text = "".join(parts)
            counts[detector.kind] = counts.get(detector.kind, 0) + len(spans)
            changed = True
        return text, changed, frozenset(passed)


@lru_cache(maxsize=1)
def default_redactor() -> Redactor:
    """The process's redactor, built from its settings on first use."""
    return Redactor.from_settings()


def redact_json_strings(obj: Any, redactor: Redactor | None = None) -> Any:
    """A copy of the JSON-like `obj` (dicts, lists, tuples, scalars) with every string redacted,
    dict keys included (a key can be an email as easily as a value can). Numbers, booleans and
    None pass through unchanged. When two keys redact to the same string the later one wins.
    Nesting depth is bounded by the event schema (`max_json_depth`), not here."""
    r = redactor if redactor is not None else default_redactor()
    return _walk(obj, r)


def _walk(obj: Any, r: Redactor) -> Any:
    if isinstance(obj, str):
        return r.redact(obj)
    if isinstance(obj, Mapping):
        return {(r.redact(k) if isinstance(k, str) else k): _walk(v, r) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, r) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, r) for v in obj)
    return obj
