"""Byte counts in words: the one formatter behind the sizes the package prints.

Sizes are said one way everywhere: IEC units (powers of 1024), the largest
unit that keeps the number at 1 or more, one decimal::

    format_size(512)        -> "512 B"
    format_size(1536)       -> "1.5 KiB"
    format_size(32 << 20)   -> "32.0 MiB"

A table keeps the decimal so that its column lines up; a sentence that
echoes a size the user wrote as "64M" drops a decimal that is zero
(``trim=True``: "64 MiB", "1.5 KiB").  Memory limits are set and compared
in MiB, so the messages about them keep that unit whatever the size
(``format_mib``: "0.5 MiB", "2048.0 MiB").

It depends on nothing else in the package.
"""

__all__ = ["format_size", "format_mib"]

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


def format_mib(n):
    """*n* bytes in MiB with one decimal ("12.3 MiB"); None counts as 0."""
    return f"{(n or 0) / (1 << 20):.1f} MiB"
