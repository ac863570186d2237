"""Authoring mistakes, explained where they are: what the loader says when a user's
module cannot be imported.

An import that fails is reported with the place in the user's code (`FILE:LINE`) and,
for the mistakes xmlable makes hard to read, what to do:

- a field type xmlable cannot write (`Optional[str]`, a Union, an unknown class): its
  error names neither the class nor the field; we do, and suggest the fix;
- `from __future__ import annotations`: xmlable needs real types, and gets strings
  ("'str' object has no attribute '__name__'"); we name the module and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
import typing
from types import TracebackType

__all__ = ["explain_import_error"]

_LIBRARY_PARTS = (os.sep + "importlib" + os.sep, os.sep + "site-packages" + os.sep, "<frozen ")


def explain_import_error(module_name: str, exc: BaseException) -> str:
    """One line: where the import of `module_name` failed, what went wrong, and the fix."""
    where = _user_location(exc)
    decorated = _xmlify_class(exc.__traceback__)
    if decorated is not None:
        hint = _xmlify_hint(decorated, exc)
        if hint:
            return f"cannot import {module_name!r}: {where}{hint}"
    detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return f"cannot import {module_name!r}: {where}{detail}"


def _user_location(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: "
    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the agentserver package
    user = [frame for frame in traceback.extract_tb(exc.__traceback__)
            if not any(part in frame.filename for part in _LIBRARY_PARTS) and not frame.filename.startswith(ours)]
    return f"{user[-1].filename}:{user[-1].lineno}: " if user else ""


def _xmlify_class(tb: TracebackType | None) -> type | None:
    """The dataclass xmlable's `xmlify` was decorating when it failed, if it was."""
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "xmlify" and "xmlable" in code.co_filename:
            candidate = tb.tb_frame.f_locals.get("cls")
            if isinstance(candidate, type):
                found = candidate
        tb = tb.tb_next
    return found


def _xmlify_hint(cls: type, exc: BaseException) -> str:
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    if any(isinstance(field.type, str) for field in fields):
        return (f"class {cls.__name__}: its annotations are strings (its module has `from __future__ import "
                "annotations`); xmlable needs real types: remove that import from the module of payload classes")
    for field in fields:
        if _unsupported(field.type):
            return (f"class {cls.__name__}, field {field.name!r}: xmlable cannot write {_spell(field.type)} "
                    f"({str(exc).splitlines()[0]}); use a plain type (str, int, float, bool, a list of them, or another "
                    "@xmlify dataclass), e.g. `str = \"\"` for an optional text")
    return ""


def _unsupported(tp: object) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return True
    if origin in (list, set, frozenset, tuple, dict):
        return any(_unsupported(arg) for arg in typing.get_args(tp) if arg is not Ellipsis)
    if isinstance(tp, type):
        return not (tp in (str, int, float, bool) or hasattr(tp, "xsd"))
    return True


def _spell(tp: object) -> str:
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")  # type: ignore[return-value]
