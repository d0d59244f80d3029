"""CSV / TSV tables with a header row, read so that one bad row is named and skipped, not fatal.

Caption tables, audio manifests and video lists are written by hand, by spreadsheets and by scripts in
other encodings. ``csv.DictReader`` over ``open(path)`` fails on the first non-UTF-8 byte without naming
the file, pads short rows with None, puts extra fields under a None key, and lets one unterminated quote
swallow the rest of the file into a single field. :func:`read_table` instead gives every row with the
line it starts on, and hands each bad row to the split's :class:`~mmzoo.data.bad_samples.BadSamples`
(skipped and counted, or raised under ``strict``, naming the file and line):

* bytes that are not UTF-8 (the message gives the line and the offending byte);
* a row with more or fewer fields than the header (an unquoted separator inside a caption);
* a quote that is never closed (the row is dropped and reading resumes on the next line) or a quote
  followed by text;
* an empty value in a column the reader requires (``required``).

A header that is missing, not UTF-8, or lacks a needed column is an error for the whole table.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .bad_samples import BadSamples

_NOT_UTF8 = ("\udc80", "\udcff")  # surrogateescape maps undecodable bytes 0x80-0xff to U+DC80-U+DCFF


def _bad_byte(text: str) -> Optional[str]:
    """The first undecodable byte of a ``surrogateescape``-decoded string, as "0x.. at column N", or None."""
    for i, ch in enumerate(text):
        if _NOT_UTF8[0] <= ch <= _NOT_UTF8[1]:
            return f"byte 0x{ord(ch) - 0xDC00:02x} at column {i + 1}"
    return None


class _Lines:
    """Lines of a text from ``start`` on, counting how many were consumed (the csv module reads ahead
    only as far as the row it is parsing)."""

    def __init__(self, lines: Sequence[str], start: int) -> None:
        self.lines, self.next = lines, start

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.next >= len(self.lines):
            raise StopIteration
        self.next += 1
        return self.lines[self.next - 1]


def _rows(lines: Sequence[str], separator: str, start: int) -> Iterator[tuple[int, Optional[list[str]], str]]:
    """``(line number, fields or None, error)`` of each non-blank row from line index ``start``."""
    pos = start
    while pos < len(lines):
        feed = _Lines(lines, pos)
        reader = csv.reader(feed, delimiter=separator, strict=True)
        while True:
            first = feed.next
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                why = "a quote that is never closed" if "unexpected end of data" in str(e) else f"bad quoting ({e})"
                yield first + 1, None, why
                pos = first + 1  # resume on the line after the bad row's first line
                break
            if row:
                yield first + 1, row, ""


def separator_of(path: Path, separator: Optional[str], known: dict[str, str]) -> str:
    """The column separator: ``separator`` (``tab`` or ``\\t`` for a tab) or the one of the extension."""
    if separator:
        return "\t" if separator in ("\\t", "tab") else separator
    sep = known.get(path.suffix.lower())
    if sep is None:
        raise ValueError(f"cannot tell the column separator of {path} from its extension (known: "
                         f"{sorted(known)}); set data.separator (',' or '\\t')")
    return sep


def read_table(path: Union[str, os.PathLike], separator: str, columns: dict[str, Optional[str]], bad: BadSamples,
               required: Sequence[str] = (), optional: Sequence[str] = (), names: Optional[Sequence[str]] = None,
               skip_first: bool = False) -> list[tuple[int, dict[str, str]]]:
    """``(line, {column: value})`` of each good row of a table with a header row.

    Args:
        path: the table.
        separator: column separator.
        columns: ``{column: config key or None}`` of the columns the table must have ("filepath":
            "data.img_key"); messages name the key with the column.
        bad: where bad rows go (skipped and counted, or raised under ``strict``).
        required: columns whose value may not be empty (the row is bad otherwise).
        optional: further columns kept in the rows when the header has them.
        names: positional column names of a table without a header row (``path,label`` lists); rows need
            at least that many fields, further ones are ignored.
        skip_first: with ``names``, the first row is a header to skip.
    """
    path = Path(path)
    raw = path.read_bytes()
    text = raw.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):  # a byte-order mark (spreadsheets write one)
        text = text[1:]
    lines = list(io.StringIO(text, newline=""))  # splits at \n, \r\n and \r only, keeping them for csv
    rows = _rows(lines, separator, 0)
    if names is not None:
        header, header_line, why = list(names), 0, ""
        if skip_first:
            next(rows, None)
    else:
        header_line, header, why = next(rows, (1, None, "an empty file"))
    if header is None:
        raise ValueError(f"{path}: no header row ({why}); the first row must name the columns, e.g. "
                         f"{separator.join(columns)}")
    byte = _bad_byte(separator.join(header))
    if byte:
        raise ValueError(f"{path}, line {header_line}: the header is not UTF-8 text ({byte}); save the table as "
                         f"UTF-8")
    header = [h.strip() for h in header]
    missing = [f"{key}={name!r}" if key else repr(name) for name, key in columns.items() if name not in header]
    if missing:
        raise ValueError(f"{path} has no column {' and '.join(missing)}; its header (separator {separator!r}) has "
                         f"the columns {header}")
    keep = [c for c in header if c in columns or c in optional]
    out = []
    for line, fields, why in rows:
        name = f"{path}, line {line}"
        if fields is None:
            bad.reject(name, why)
            continue
        byte = _bad_byte("\x00".join(fields))
        if byte:
            bad.reject(name, f"not UTF-8 text ({byte}); save the table as UTF-8")
            continue
        if len(fields) < len(header) or (names is None and len(fields) > len(header)):
            expected = f"the header has {len(header)}" if names is None else f"{len(header)} are needed ({separator.join(header)})"
            bad.reject(name, f"{len(fields)} fields where {expected} (an unquoted {separator!r} inside a value?)")
            continue
        row = {c: v for c, v in zip(header, fields) if c in keep}
        empty = [c for c in required if not row.get(c, "").strip()]
        if empty:
            bad.reject(name, "empty " + ", ".join(f"{c!r} ({columns[c]})" if columns.get(c) else repr(c)
                                                  for c in empty))
            continue
        out.append((line, row))
    return out
