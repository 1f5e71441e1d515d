"""File-derived text made safe to print: names, keys and paths from a model or data file are
data, never terminal control or rich markup.

Rich passes ESC through as is (a layer named ``\\x1b[2J`` would clear the screen), and parses
``[...]`` as markup when a string is printed as markup. Renderers build ``Text`` objects (no
markup parsing) from ``plain()`` strings (control characters shown as escapes).
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """``text`` with control characters (C0 but tab, DEL, C1, bidi overrides)
    shown as ``\\xNN``/``\\uNNNN`` escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                        str(text))
