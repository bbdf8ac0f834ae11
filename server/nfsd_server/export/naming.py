"""File names from prompts."""

from __future__ import annotations

import re
import unicodedata

MAX_SLUG_LENGTH = 48


def slugify(prompt: str) -> str:
    """Filesystem-safe, lowercase, hyphenated, at most 48 characters, never empty: "A red ball!" → "a-red-ball".

    Accents are folded to ASCII ("crème brûlée" → "creme-brulee"); a prompt with nothing usable gives "object".
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    # Cut at a word boundary where there is one, so the name does not end mid-word.
    if len(slug) > MAX_SLUG_LENGTH:
        cut = slug[: MAX_SLUG_LENGTH + 1].rfind("-")
        slug = slug[: cut if cut > 0 else MAX_SLUG_LENGTH].strip("-")
    return slug or "object"
