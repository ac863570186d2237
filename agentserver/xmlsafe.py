"""Safe XML parsing for everything that crosses the wire.

One `SafeXml` object owns the lxml parsers a pump uses. Its rules (DESIGN.md §7):

- no DTD at all: a document that declares one is refused before lxml sees it, so
  there is no entity expansion (billion laughs, quadratic blowup), no external
  entity and no external DTD;
- no network access, no XInclude processing (XInclude elements stay inert elements);
- the size is checked before parsing, libxml2's depth limit (256) stays on;
- the input must be UTF-8 and must not contain NUL bytes;
- the counts of elements, attributes and namespace declarations are checked right
  after the (linear) parse, before anything superlinear runs: exclusive C14N sorts each
  element's attributes and namespaces, so 40,000 attributes on one element took 34 s.
  A cheap byte count (`<`, `=`, `xmlns`) is an upper bound of each; the tree is walked
  for the exact figure only when the bound is over the limit.

Element classes: elements in the envelope namespace are plain lxml elements; payload
elements (no namespace) are objectified, because xmlable's `Cls.parse` walks an
objectified tree. lxml.objectify guesses leaf types from their text (`"007"` becomes
the int 7, `"true"` becomes True) and xmlable then turns that back into a string for
`str` fields, silently changing the data; `TextLeaf` never guesses and converts only
when the dataclass field asks for a type.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree, objectify

from agentserver.codes import ErrorCode
from agentserver.envelope import ENVELOPE_NS
from agentserver.limits import Limits

__all__ = ["SafeXml", "UnsafeXml", "TextLeaf", "xsd_bool", "schema_error"]


def schema_error(schema: etree.XMLSchema) -> str:
    """The validator's last message (for logs and dead letters, never for senders)."""
    error: Any = schema.error_log.last_error  # type: ignore[attr-defined]  # lxml-stubs lack it
    return error.message if error is not None else "invalid"


class UnsafeXml(ValueError):
    """The bytes were refused before or during parsing. `code` is a short canned reason."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


_DECLARED_ENCODING = re.compile(rb"""\s*(?:\xef\xbb\xbf)?\s*<\?xml\s[^>]*?encoding\s*=\s*["']([^"']*)["']""")
_TRUE = frozenset(("true", "1"))
_FALSE = frozenset(("false", "0"))


def xsd_bool(text: str | None) -> bool:
    """An xs:boolean's value: true/1 or false/0 (surrounding blanks ignored)."""
    text = (text or "").strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not an xs:boolean: {text!r}")


class TextLeaf(objectify.ObjectifiedDataElement):
    """A payload leaf whose text is converted only on request, by XSD lexical rules."""

    def __str__(self) -> str:
        return self.text or ""

    def __int__(self) -> int:
        return int((self.text or "").strip())

    def __float__(self) -> float:
        return float((self.text or "").strip())

    def __bool__(self) -> bool:
        return xsd_bool(self.text)


class _PayloadLookup(etree.PythonElementClassLookup):
    def lookup(self, document, element):  # noqa: D401 - lxml callback
        return objectify.ObjectifiedElement if len(element) else TextLeaf


def _class_lookup() -> etree.ElementNamespaceClassLookup:
    lookup = etree.ElementNamespaceClassLookup(fallback=_PayloadLookup())
    lookup.get_namespace(ENVELOPE_NS)[None] = etree.ElementBase
    return lookup


def _mentions_in_content(root: etree._Element, word: str) -> int:
    """How often `word` occurs in the texts, tails and attribute values of the tree."""
    count = 0
    for element in root.iter():
        for text in (element.text, element.tail):
            if text:
                count += text.count(word)
        for value in element.attrib.values():
            count += str(value).count(word)
    return count


class SafeXml:
    """The parsers of one pump: strict, recovering, and a fragment parser for payloads."""

    def __init__(self, max_bytes: int = 1 << 20, *, max_elements: int | None = None,
                 max_attributes: int | None = None, max_namespace_declarations: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_elements = max_elements
        self.max_attributes = max_attributes
        self.max_namespace_declarations = max_namespace_declarations
        self.strict = self._parser(recover=False)
        self.recovering = self._parser(recover=True)
        for parser in (self.strict, self.recovering):
            parser.set_element_class_lookup(_class_lookup())

    @classmethod
    def for_limits(cls, limits: Limits) -> "SafeXml":
        """The parsers of a pump with these limits (size, elements, attributes, namespaces)."""
        return cls(limits.max_message_bytes, max_elements=limits.max_elements, max_attributes=limits.max_attributes,
                   max_namespace_declarations=limits.max_namespace_declarations)

    @staticmethod
    def _parser(*, recover: bool) -> etree.XMLParser:
        return etree.XMLParser(
            recover=recover,
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
            encoding="utf-8",  # never the encoding a document declares (UTF-7 would hide a DTD)
        )

    def precheck(self, raw: bytes) -> None:
        """Refuse what must never reach libxml2. Raises UnsafeXml."""
        if len(raw) > self.max_bytes:
            raise UnsafeXml(ErrorCode.TOO_LARGE, f"{len(raw)} bytes, limit {self.max_bytes}")
        if not raw.strip():
            raise UnsafeXml(ErrorCode.MALFORMED, "empty message")
        if b"\x00" in raw:
            raise UnsafeXml(ErrorCode.MALFORMED, "NUL byte in message")
        if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
            raise UnsafeXml(ErrorCode.FORBIDDEN_DTD, "DTDs and entity declarations are not accepted")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeXml(ErrorCode.MALFORMED, f"not UTF-8: {exc}") from None
        declared = _DECLARED_ENCODING.match(raw)
        if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
            raise UnsafeXml(ErrorCode.MALFORMED, f"declares encoding {declared.group(1).decode()!r}; only UTF-8 is accepted")

    def parse(self, raw: bytes) -> etree._Element:
        """Strictly parse checked bytes. Raises UnsafeXml or etree.XMLSyntaxError.

        libxml2's depth limit is reported as UnsafeXml(ErrorCode.TOO_LARGE): it is a limit, not
        damage that repair could or should work around."""
        self.precheck(raw)
        try:
            root = etree.fromstring(raw, self.strict)
        except etree.XMLSyntaxError as exc:
            if "Excessive depth" in str(exc):
                raise UnsafeXml(ErrorCode.TOO_LARGE, f"nested too deep: {exc}") from None
            raise
        self.check_counts(raw, root)
        return root

    def recover(self, raw: bytes) -> etree._Element | None:
        """Best-effort parse of checked bytes that failed the strict parse. Raises
        UnsafeXml if what it recovered is over the count limits."""
        try:
            root = etree.fromstring(raw, self.recovering)
        except etree.XMLSyntaxError:
            return None
        if root is not None:
            self.check_counts(raw, root)
        return root

    def check_counts(self, raw: bytes, root: etree._Element) -> None:
        """Refuse (UnsafeXml too-large) a tree with more elements, attributes or namespace
        declarations than allowed. Linear; usually three `bytes.count` calls."""
        limit = self.max_elements
        if limit is not None and raw.count(b"<") > limit:
            elements = sum(1 for _ in root.iter())
            if elements > limit:
                raise UnsafeXml(ErrorCode.TOO_LARGE, f"{elements} elements, limit {limit}")
        limit = self.max_attributes
        if limit is not None and raw.count(b"=") > limit:
            attributes = sum(len(element.attrib) for element in root.iter())
            if attributes > limit:
                raise UnsafeXml(ErrorCode.TOO_LARGE, f"{attributes} attributes, limit {limit}")
        limit = self.max_namespace_declarations
        if limit is not None:
            declarations = raw.count(b"xmlns")
            if declarations > limit:
                declarations -= _mentions_in_content(root, "xmlns")  # the word in text or values is no declaration
                if declarations > limit:
                    raise UnsafeXml(ErrorCode.TOO_LARGE, f"{declarations} namespace declarations, limit {limit}")

    def fragment(self, raw: bytes | str) -> list[etree._Element]:
        """Parse one or more sibling payload elements (handler bytes, client input)."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        raw = raw.strip()
        if raw.startswith(b"<?xml"):
            end = raw.find(b"?>")
            raw = raw[end + 2 :].strip() if end >= 0 else raw
        self.precheck(raw)
        wrapper = etree.fromstring(b"<fragment>" + raw + b"</fragment>", self.strict)
        self.check_counts(raw, wrapper)
        elements = [child for child in wrapper.iterchildren() if isinstance(child.tag, str)]
        if any((child.text or "").strip() or (child.tail or "").strip() for child in [wrapper]):
            raise UnsafeXml(ErrorCode.MALFORMED, "text outside payload elements")
        if not elements:
            raise UnsafeXml(ErrorCode.MALFORMED, "no payload element")
        for element in elements:
            if (element.tail or "").strip():
                raise UnsafeXml(ErrorCode.MALFORMED, "text outside payload elements")
        return elements

    def makeelement(self, tag: str, nsmap: dict | None = None) -> etree._Element:
        """An element whose document uses this object's class lookup."""
        return self.strict.makeelement(tag, nsmap=nsmap)
