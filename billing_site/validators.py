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
