"""Byte counts in words: the one formatter behind every size the package prints.

The stats screens, the supervisor's log and its config errors, and the
cache's own error messages all say sizes the same way: IEC units (powers
of 1024), the largest unit that keeps the number at 1 or more, one
decimal::

    format_size(512)        -> "512 B"
    format_size(1536)       -> "1.5 KiB"
    format_size(32 << 20)   -> "32.0 MiB"

A table keeps the decimal so that its column lines up; a sentence that
echoes a size the user wrote as "64M" drops a decimal that is zero
(``trim=True``: "64 MiB", "1.5 KiB").  It imports nothing of the package,
so a module that must not load the engine (the config reader) can use it.
"""

__all__ = ["format_size"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(n, *, trim=False):
    """*n* bytes in IEC units with one decimal ("1.5 KiB"); None is "-".

    With *trim*, a zero decimal is dropped: "64 MiB" rather than "64.0 MiB".
    """
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    for unit in _UNITS:
        n /= 1024
        if n < 1024 or unit == _UNITS[-1]:
            break
    text = f"{n:.1f}"
    if trim:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"
