"""Zero-shot prompt templates ("a photo of a {}."), checked before any class name is formatted into them.

``str.format`` turns a stray brace into an error far from its cause: ``{x}`` is a ``KeyError: 'x'``, a
lone ``{`` a ``ValueError: Single '{' encountered``, neither naming the file or the line. Every template
is parsed here first; a template file must be UTF-8 text. Literal braces are written doubled (``{{``).
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Optional, Sequence, Union


def template_error(template: str) -> Optional[str]:
    """Why ``template`` cannot take a class name through ``template.format(name)``, or None."""
    if not isinstance(template, str):
        return f"a {type(template).__name__}, not text"
    placeholders = 0
    try:
        for _, field, spec, conversion in string.Formatter().parse(template):
            if field is None:
                continue
            if field not in ("", "0"):
                return f"the placeholder {{{field}}}: only {{}} (the class name) is filled in; write a literal " \
                       f"brace as {{{{ or }}}}"
            if spec or conversion:
                return f"a format spec or conversion in {{{field}{'!' + conversion if conversion else ''}" \
                       f"{':' + spec if spec else ''}}}; use a plain {{}}"
            placeholders += 1
    except ValueError as e:  # "Single '{' encountered", "unmatched '}'" ...
        return f"{e}; write a literal brace as {{{{ or }}}}"
    if not placeholders:
        return "no {} placeholder for the class name"
    return None


def check_templates(templates: Sequence[str], source: str) -> list[str]:
    """``templates`` unchanged when each can take a class name; else a ``ValueError`` naming ``source``
    and the position of the first bad one."""
    templates = list(templates)
    if not templates:
        raise ValueError(f"{source}: no templates")
    for i, t in enumerate(templates):
        why = template_error(t)
        if why:
            raise ValueError(f"{source}, template {i + 1} {t!r}: {why}")
    return templates


def load_templates(path: Union[str, os.PathLike]) -> list[str]:
    """One template per line with a ``{}`` where the class name goes; blank and ``#`` lines are skipped.
    Errors name the file and line: a line that is not UTF-8, a bad placeholder, no template at all."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"templates file not found: {path} (one prompt per line, e.g. 'a photo of a {{}}.')")
    templates = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}, line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                             f"save the file as UTF-8") from None
        if n == 1 and line.startswith("\ufeff"):
            line = line[1:].strip()
        if not line or line.startswith("#"):
            continue
        why = template_error(line)
        if why:
            raise ValueError(f"{path}, line {n}: template {line!r} has {why}" if why.startswith(("the ", "a ", "no "))
                             else f"{path}, line {n}: template {line!r}: {why}")
        templates.append(line)
    if not templates:
        raise ValueError(f"{path} holds no template (one per line, with a {{}} for the class name)")
    return templates
