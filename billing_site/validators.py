"""Validators the apps' models share."""

import unicodedata

from django.core.exceptions import ValidationError

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf"})


def plain_text_validate(value: str) -> None:
    """Refuses control characters (Unicode Cc: newlines, tabs, escapes) and invisible formatting ones
    (Cf: bidi overrides, zero-width spaces). Names travel into email headers, webhook bodies and the
    admin, where a newline splits a header and a bidi override disguises the text."""
    found = sorted({f"U+{ord(char):04X}" for char in value if unicodedata.category(char) in _REFUSED_CATEGORIES})
    if found:
        raise ValidationError(
            "Control and invisible formatting characters are not allowed (%(found)s).",
            code="control_characters",
            params={"found": ", ".join(found)},
        )


# A postal address keeps its line breaks (and a pasted tab); every other control character, the
# invisible formatting ones (Cf) and the Unicode line/paragraph separators (Zl, Zp: breaks a reader
# cannot see in most fields) are refused, for the same reasons as plain_text_validate.
_MULTILINE_ALLOWED = frozenset("\n\r\t")
_MULTILINE_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def multiline_text_validate(value: str) -> None:
    """Refuses what plain_text_validate refuses, except newline, carriage return and tab; also the
    Unicode line and paragraph separators (U+2028, U+2029)."""
    found = sorted(
        {
            f"U+{ord(char):04X}"
            for char in value
            if char not in _MULTILINE_ALLOWED and unicodedata.category(char) in _MULTILINE_REFUSED_CATEGORIES
        }
    )
    if found:
        raise ValidationError(
            "Control and invisible formatting characters are not allowed (%(found)s).",
            code="control_characters",
            params={"found": ", ".join(found)},
        )
