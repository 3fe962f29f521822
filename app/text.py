"""Text a request carries to the CLI: what cannot reach it."""

from __future__ import annotations


def text_problem(text: str) -> str | None:
    """Why `text` cannot reach the CLI, or None: no NUL (argv and C strings end
    there) and no lone surrogate (it has no UTF-8 form)."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds a lone surrogate)"
    return None
