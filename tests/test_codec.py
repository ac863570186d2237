"""The fast payload codec agrees with xmlable, byte for byte and value for value."""

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from xmlable import xmlify

from agentserver.message_bus.codec import Codec
from agentserver.xmlsafe import SafeXml


@xmlify
@dataclass
class Inner:
    ratio: float
    done: bool


@xmlify
@dataclass
class Outer:
    name: str
    count: int
    inner: Inner
    flag: bool


@xmlify
@dataclass
class WithList:
    tags: list[str]


XML = SafeXml()
# text lxml accepts in an element (no control characters, no lone surrogates)
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r"), max_size=40)
FLOATS = st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf, 0.0, -0.0, 1e300])
OUTERS = st.builds(Outer, name=TEXT, count=st.integers(), inner=st.builds(Inner, ratio=FLOATS, done=st.booleans()), flag=st.booleans())


@settings(max_examples=300, deadline=None)
@given(OUTERS)
def test_writing_matches_xml_value(value):
    codec = Codec.of(Outer)
    assert etree.tostring(codec.to_element(value)) == etree.tostring(value.xml_value())


@settings(max_examples=300, deadline=None)
@given(OUTERS)
def test_reading_matches_parse_on_the_pumps_own_tree(value):
    codec = Codec.of(Outer)
    element = XML.fragment(etree.tostring(value.xml_value()))[0]
    assert codec.from_element(element) == Outer.parse(element) == value


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["007", " 7 ", "true", "1", "0", "false", " x ", "", "1e5", "nan", "-0"]), st.sampled_from(["N", "R", "D"]))
def test_leaf_text_reads_the_same_or_fails_the_same(text, which):
    name = text if which == "N" else "n"
    count = text if which == "R" else "3"
    done = text if which == "D" else "true"
    raw = f"<Outer><Name>{name}</Name><Count>{count}</Count><Inner><Ratio>1.5</Ratio><Done>{done}</Done></Inner><Flag>0</Flag></Outer>"
    element = XML.fragment(raw)[0]
    try:
        expected = Outer.parse(element)
    except Exception:
        with pytest.raises(Exception):
            Codec.of(Outer).from_element(element)
        return
    assert Codec.of(Outer).from_element(element) == expected


def test_mistyped_fields_are_refused_like_xmlable_does():
    codec = Codec.of(Outer)
    for bad in (Outer("x", True, Inner(1.0, True), False), Outer("x", 1, Inner(1, True), False), Outer(3, 1, Inner(1.0, True), False)):
        with pytest.raises(Exception):
            bad.xml_value()
        with pytest.raises(ValueError):
            codec.to_element(bad)


def test_a_missing_field_is_an_error():
    with pytest.raises(ValueError):
        Codec.of(Inner).from_element(XML.fragment("<Inner><Ratio>1</Ratio></Inner>")[0])


def test_classes_beyond_plain_fields_keep_using_xmlable():
    assert Codec.of(WithList) is None  # a list field: xmlable's own code handles it
    assert Codec.of(int) is None and Codec.of(Outer) is not None
