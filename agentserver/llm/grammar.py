"""GBNF grammars (llama.cpp's grammar format) for the payloads an LLM agent may write.

    grammar = grammar_for([Add], reply=Summary)   # its peers' payload classes, and its reply_class
    completion = await meta.llm(turns, grammar=grammar)

`grammar_for(calls, reply=...)` gives a grammar whose `root` is what the agent loop
can use, with optional whitespace around and between the elements: one to
`max_calls` payload elements of the `calls` classes, or exactly one element of the
`reply` class (an answer mixing them, or with two replies, is one the loop would
re-ask; the grammar rules it out, and a model that has written its reply must stop).
Without `reply`, the root is one to `max_calls` elements of `calls`.

Each element is exactly in the XML form xmlable writes, the pump's XSD for its class
accepts and the class reads back (`Cls.parse`, the pump's codec):

- a class: `<ClassName>`, its fields in declaration order, `</ClassName>`; a field is
  an element named by its PascalCase name (`max_tokens` -> `<MaxTokens>`), holding:
- `str`: text without `<`, `&`, `>` or the control characters XML 1.0 forbids; the
  five predefined escapes (`&lt;` `&gt;` `&amp;` `&quot;` `&apos;`) are allowed, so
  any text can be written, and `]]>` cannot appear;
- `int` (xs:integer): an optional minus and 1 to 20 digits;
- `float` (xs:decimal): an optional minus, 1 to 20 digits, optionally a point and 1 to
  20 digits (xs:decimal has no exponent, infinity or NaN);
- `bool` (xs:boolean): `true` or `false`;
- a nested @xmlify class: its fields, as above (recursive classes are fine: each class
  is one rule);
- `list[T]` and `set[T]`: zero or more item elements named xmlable's way, by the item
  type's PascalCase name (`<Int>`, `<Str>`, `<Float>`, `<Bool>`, the class's name,
  `<List>` for a list of lists);
- `tuple[A, B, ...]`: `<Item-1>`, `<Item-2>`, ... in order;
- `dict[K, V]`: zero or more `<Item><Key>...</Key><Val>...</Val></Item>`;
- `X | Y` (so `X | None`): exactly one variant element, named by its type
  (`<Int>`, `<Str>`, the class's name, `<NoneType></NoneType>` for None).

Inside a payload there is no whitespace between elements (the XSD would allow it, but
a small model left free to indent can also be left free to indent forever). Numbers
and whitespace are bounded in length for the same reason. Anything else (a class
xmlable was taught by hand, a tuple with `...`, a type without a name) raises
`GrammarError` naming the class and the field.

Sets and dicts are written as lists; a duplicate item or key is something a grammar
cannot forbid: the class refuses it on reading, and the agent loop re-asks.

Pure: imports only xmlable's naming helper (pyhumps); no llama_cpp.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Sequence
from typing import Any, get_args, get_origin

from humps import pascalize  # xmlable's own naming rule (xmlable depends on pyhumps)

__all__ = ["grammar_for", "GrammarError", "MAX_ELEMENTS", "TEXT", "INTEGER", "DECIMAL", "BOOLEAN"]

MAX_ELEMENTS = 8  # payload elements (calls) in one answer: the grammar's bound, and the agent loop's

# the rules for leaf values, added to a grammar only where used
TEXT = r'text ::= ([^<&>\x00-\x08\x0B\x0C\x0E-\x1F] | "&" ("lt" | "gt" | "amp" | "quot" | "apos") ";")*'
INTEGER = 'int ::= "-"? [0-9]{1,20}'
DECIMAL = 'decimal ::= "-"? [0-9]{1,20} ("." [0-9]{1,20})?'
BOOLEAN = 'bool ::= "true" | "false"'
WHITESPACE = r"ws ::= [ \t\r\n]{0,8}"
_LEAVES: dict[Any, tuple[str, str]] = {str: ("text", TEXT), int: ("int", INTEGER), float: ("decimal", DECIMAL),
                                       bool: ("bool", BOOLEAN)}
_RESERVED = {"root", "call", "reply", "ws", "text", "int", "decimal", "bool"}


class GrammarError(ValueError):
    """A payload class has a field whose type the grammar cannot express; the message
    names the class, the field and the type."""


def grammar_for(calls: Sequence[type], reply: type | None = None, *, max_calls: int = MAX_ELEMENTS) -> str:
    """The GBNF grammar of one to `max_calls` elements of the `calls` classes, or (with
    `reply`) exactly one element of `reply` (see the module docstring). Raises
    GrammarError for a type it cannot express; ValueError for no classes at all or a
    `max_calls` below 1."""
    if not calls and reply is None:
        raise ValueError("grammar_for needs at least one payload class")
    if max_calls < 1:
        raise ValueError(f"max_calls must be 1 or more, not {max_calls}")
    builder = _Builder()
    lines = []
    choices = []
    if calls:
        alternatives = [builder.root_element(cls) for cls in dict.fromkeys(calls)]  # in order, once each
        more = f" (ws call){{0,{max_calls - 1}}}" if max_calls > 1 else ""
        lines.append("call ::= " + " | ".join(alternatives))
        choices.append(f"call{more}")
    if reply is not None:
        lines.append("reply ::= " + builder.root_element(reply))
        choices.append("reply")
    body = choices[0] if len(choices) == 1 else "(" + " | ".join(choices) + ")"
    lines.insert(0, f"root ::= ws {body} ws")
    lines += builder.rules
    lines.append(WHITESPACE)
    lines += [text for name, text in _LEAVES.values() if name in builder.leaves]
    return "\n".join(lines) + "\n"


class _Builder:
    """Rules for classes, made once each, named after the class (made unique)."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self.leaves: set[str] = set()
        self._names: dict[type, str] = {}
        self._taken = set(_RESERVED)

    def root_element(self, cls: Any) -> str:
        """`<ClassName>` its fields `</ClassName>`: a payload element of `cls`."""
        where = cls.__name__ if isinstance(cls, type) else repr(cls)
        rule = self.class_rule(cls, where)
        return f"{_literal(f'<{where}>')} {rule} {_literal(f'</{where}>')}"

    def class_rule(self, cls: Any, where: str) -> str:
        """The name of the rule for the contents of `cls`'s element (its fields)."""
        known = self._names.get(cls)
        if known is not None:
            return known
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and hasattr(cls, "get_xobject")):
            raise GrammarError(f"{where}: {_name(cls)} is not an @xmlify dataclass")
        name = self._rule_name(cls.__name__)
        self._names[cls] = name  # before the fields: a class may contain itself
        parts = []
        for field in dataclasses.fields(cls):
            tag = pascalize(field.name)
            parts.append(self._element(tag, field.type, f"{cls.__name__}.{field.name}"))
        self.rules.append(f"{name} ::= " + (" ".join(parts) if parts else '""'))
        return name

    def _element(self, tag: str, tp: Any, where: str) -> str:
        return f"{_literal(f'<{tag}>')} {self._content(tp, where)} {_literal(f'</{tag}>')}"

    def _content(self, tp: Any, where: str) -> str:
        """A GBNF expression for what the element of a value of type `tp` holds."""
        if isinstance(tp, str):
            raise GrammarError(f"{where}: the annotation {tp!r} is a string (from __future__ import annotations?); "
                               "payload classes need real annotations")
        leaf = _LEAVES.get(tp)
        if leaf is not None:
            self.leaves.add(leaf[0])
            return leaf[0]
        if tp is None or tp is type(None):
            return '""'
        if isinstance(tp, types.UnionType):
            variants = []
            for option in get_args(tp):
                variants.append(self._element(_type_tag(option, where), option, where))
            return "(" + " | ".join(variants) + ")"
        origin = get_origin(tp)
        if origin in (list, set):
            args = get_args(tp)
            if len(args) != 1:
                raise GrammarError(f"{where}: {_name(tp)} needs one item type")
            return "(" + self._element(_type_tag(args[0], where), args[0], where) + ")*"
        if origin is tuple:
            args = get_args(tp)
            if not args or Ellipsis in args:
                raise GrammarError(f"{where}: {_name(tp)}: only tuples of fixed length (tuple[int, str]) can be "
                                   "expressed")
            return " ".join(self._element(f"Item-{i + 1}", arg, where) for i, arg in enumerate(args))
        if origin is dict:
            key, value = get_args(tp)
            item = f"{self._element('Key', key, where)} {self._element('Val', value, where)}"
            return f"({_literal('<Item>')} {item} {_literal('</Item>')})*"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and hasattr(tp, "get_xobject"):
            return self.class_rule(tp, where)
        raise GrammarError(f"{where}: the type {_name(tp)} cannot be expressed in a grammar (supported: str, int, "
                           "float, bool, @xmlify dataclasses, list, set, tuple, dict and unions of these)")

    def _rule_name(self, base: str) -> str:
        name = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "payload-class"
        candidate, n = name, 2
        while candidate in self._taken:
            candidate, n = f"{name}-{n}", n + 1
        self._taken.add(candidate)
        return candidate


def _type_tag(tp: Any, where: str) -> str:
    """The element name xmlable gives a value of type `tp` inside a list, set or union:
    the PascalCase of the type's name (`int` -> Int, `list[int]` -> List, None -> NoneType)."""
    if tp is None:
        return "NoneType"
    name = getattr(tp, "__name__", None)
    if not isinstance(name, str):
        raise GrammarError(f"{where}: {tp!r} has no type name, so xmlable cannot name its element")
    return pascalize(name)


def _name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp)


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
