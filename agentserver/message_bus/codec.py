"""A fast path for xmlable's `xml_value()` and `Cls.parse()` on plain payload classes.

xmlable walks every value through generic objects (an error context per field,
attribute lookups by name, a list of children built per element); per message that
was about an eighth of the pump's work. For a class whose fields are only `str`,
`int`, `float`, `bool` or nested classes of the same kind, `Codec` does the same work
directly, with xmlable's own rules:

- element names: the class name for the root, the PascalCase field name for a field;
- writing: a value must be exactly of its field's type (`type(v) is int`, so a bool is
  not an int), written as `str(v)`, booleans as `true`/`false`;
- reading: what `str(leaf)`, `int(leaf)`, `float(leaf)`, `bool(leaf)` give on the
  pump's `TextLeaf` leaves (from the text, so the element's class cannot change it);
  a missing field is an error.

Any other class (lists, unions, dicts, ...) gets `None` from `Codec.of` and keeps
using xmlable. tests/test_codec.py checks the two agree, byte for byte and value for
value, on generated instances.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from humps import pascalize  # xmlable's own naming rule (xmlable depends on pyhumps)
from lxml import etree

from agentserver.xmlsafe import xsd_bool

__all__ = ["Codec", "Refused"]


class Refused(ValueError):
    """The payload class itself refused the values read (its constructor or
    `__post_init__` raised): the message's fault, not the codec's."""

_SCALARS = (str, int, float, bool)


# text -> value, exactly as `kind(TextLeaf)` reads it (whatever the element's class)
_READ: dict[type, Callable[[str | None], Any]] = {
    str: lambda text: text or "",
    int: lambda text: int((text or "").strip()),
    float: lambda text: float((text or "").strip()),
    bool: xsd_bool,
}


class Codec:
    __slots__ = ("cls", "root_tag", "_fields")

    def __init__(self, cls: type, fields: list[tuple[str, str, type | None, "Codec | None"]]) -> None:
        self.cls = cls
        self.root_tag = cls.__name__
        # (attribute, element name, scalar type or None, nested codec or None)
        self._fields = fields

    @classmethod
    def of(cls, payload_class: type, _seen: frozenset = frozenset()) -> "Codec | None":
        """The codec of an @xmlify class made of plain fields, else None."""
        if not dataclasses.is_dataclass(payload_class) or not hasattr(payload_class, "get_xobject"):
            return None
        if payload_class in _seen:
            return None  # recursive classes: leave them to xmlable
        try:
            hints = typing.get_type_hints(payload_class)
        except Exception:
            return None
        fields: list[tuple[str, str, type | None, Codec | None]] = []
        for field in dataclasses.fields(payload_class):
            kind = hints.get(field.name)
            if kind in _SCALARS:
                fields.append((field.name, pascalize(field.name), kind, None))
                continue
            nested = cls.of(kind, _seen | {payload_class}) if isinstance(kind, type) else None
            if nested is None:
                return None
            fields.append((field.name, pascalize(field.name), None, nested))
        return cls(payload_class, fields)

    def to_element(self, value: Any, name: str | None = None) -> etree._Element:
        """Like `value.xml_value().getroot()`. Raises ValueError for a mistyped field."""
        if type(value) is not self.cls:
            raise ValueError(f"expected {self.cls.__name__}, got {type(value).__name__}")
        element = etree.Element(name or self.root_tag)
        for attribute, tag, kind, nested in self._fields:
            item = getattr(value, attribute)
            if nested is not None:
                element.append(nested.to_element(item, tag))
                continue
            if type(item) is not kind:
                expected = kind.__name__ if kind is not None else "?"
                raise ValueError(f"{self.cls.__name__}.{attribute}: expected {expected}, got {type(item).__name__}")
            child = etree.SubElement(element, tag)
            child.text = "true" if item is True else "false" if item is False else str(item)
        return element

    def from_element(self, element: Any) -> Any:
        """Like `Cls.parse(element)` on an objectified payload element (the first child of
        each name counts, others are ignored, as in xmlable; the XSD step refuses them)."""
        children: dict[str, Any] = {}
        for child in element.iterchildren():
            children.setdefault(child.tag, child)
        values = {}
        for attribute, tag, kind, nested in self._fields:
            child = children.get(tag)
            if child is None:
                raise ValueError(f"<{element.tag}> has no <{tag}>")
            if nested is not None:
                values[attribute] = nested.from_element(child)
            else:
                assert kind is not None
                values[attribute] = _READ[kind](child.text)
        try:
            return self.cls(**values)
        except Exception as exc:
            raise Refused(f"{self.cls.__name__} refused its values: {type(exc).__name__}: {exc}") from exc
