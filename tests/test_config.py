"""Configuration: every mistake reported before anything starts, as FILE:LINE: message."""

import textwrap

from pathlib import Path

import pytest

from agentserver import ConfigError, bootstrap, load_config
from tests.organisms import Echo, echo

PATH = "config/organism.yaml"

HEAD = """\
organism:
  name: test
listeners:
"""


def problems(body: str, head: str = HEAD) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(PATH, text=head + textwrap.dedent(body))
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def test_a_good_configuration_loads():
    config = load_config(PATH, text=HEAD + textwrap.dedent("""\
        - name: echo
          payload_class: tests.organisms.Echo
          handler: tests.organisms.echo
          concurrency: 2
        """) + "limits: {max_thread_hops: 7, handler_timeout_s: 1.5}\nthread_scheduling: depth-first\n")
    (spec,) = config.listeners
    assert (spec.name, spec.payload_class, spec.handler, spec.concurrency, spec.line) == ("echo", Echo, echo, 2, 4)
    assert (config.limits.max_thread_hops, config.limits.handler_timeout_s, config.thread_scheduling) == (7, 1.5, "depth-first")


def test_unknown_keys_are_reported_where_they_are():
    found = problems("""\
        - name: echo
          payload_class: tests.organisms.Echo
          handler: tests.organisms.echo
          colour: blue
        """, head=HEAD.replace("  name: test\n", "  name: test\n  sockets: x\n"))
    assert found == [
        f"{PATH}:3: unknown key 'sockets' in organism (known keys: http, journal, name, socket, tcp, transport)",
        f"{PATH}:8: unknown key 'colour' in a listener (known keys: agent, concurrency, description, handler, llm, name, payload_class, peers)",
    ]


def test_unknown_top_level_and_limit_keys():
    text = HEAD.replace("listeners:\n", "limits: {max_hops: 3}\nlistenres: []\nlisteners: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(PATH, text=text)
    assert caught.value.problems[0].startswith(f"{PATH}:3: unknown key 'max_hops' in limits")
    assert caught.value.problems[1].startswith(f"{PATH}:4: unknown key 'listenres' in the top level")


def test_missing_fields_are_reported():
    found = problems("""\
        - name: echo
          payload_class: tests.organisms.Echo
        """, head=HEAD.replace("  name: test\n", "  socket: x.sock\n"))
    assert found == [
        f"{PATH}:1: organism needs a name",
        f"{PATH}:4: listener is missing 'handler' (or an llm: block, for an LLM agent)",
    ]


def test_a_duplicate_name_is_reported_at_the_second_with_the_first():
    found = problems("""\
        - name: echo
          payload_class: tests.organisms.Echo
          handler: tests.organisms.echo
        - name: echo
          payload_class: tests.organisms.Echo
          handler: tests.organisms.echo
        """)
    assert found == [f"{PATH}:7: duplicate listener name 'echo' (first at line 4)"]


def test_a_peer_that_does_not_exist_is_reported_at_the_peer():
    found = problems("""\
        - name: boss
          payload_class: tests.organisms.Task
          handler: tests.organisms.remember
          agent: true
          peers:
            - worker
            - ghost
        - name: worker
          payload_class: tests.organisms.Job
          handler: tests.organisms.worker
        """)
    assert found == [f"{PATH}:10: listener 'boss' names peer 'ghost', which is not a listener"]


def test_an_agent_whose_root_tag_is_shared_is_reported():
    found = problems("""\
        - name: worker
          payload_class: tests.organisms.Job
          handler: tests.organisms.worker
        - name: boss
          payload_class: tests.organisms.Job
          handler: tests.organisms.remember
          agent: true
        """)
    assert found == [
        f"{PATH}:7: agent 'boss' shares its payload root tag <Job> with 'worker'; an agent's root tag must be its own"
    ]


def test_two_plain_listeners_may_share_a_root_tag():
    config = load_config(PATH, text=HEAD + textwrap.dedent("""\
        - {name: a, payload_class: tests.organisms.Job, handler: tests.organisms.worker}
        - {name: b, payload_class: tests.organisms.Job, handler: tests.organisms.outsider}
        """))
    assert [spec.name for spec in config.listeners] == ["a", "b"]


def test_a_sync_handler_is_refused_naming_the_listener():
    found = problems("""\
        - name: echo
          payload_class: tests.organisms.Echo
          handler: tests.organisms.sync_handler
        - name: other
          payload_class: tests.organisms.Job
          handler: tests.organisms.NOT_CALLABLE
        """)
    assert found == [
        f"{PATH}:6: listener 'echo' handler is not async: define it with 'async def'",
        f"{PATH}:9: listener 'other' handler is not callable: define it with 'async def'",
    ]


def test_a_failing_import_is_reported_with_the_import_error():
    found = problems("""\
        - name: broken
          payload_class: tests.broken_organism.Thing
          handler: tests.organisms.echo
        - name: missing
          payload_class: tests.organisms.NoSuchClass
          handler: tests.no_such_module.handle
        """)
    assert found == [
        f"{PATH}:5: listener 'broken' payload_class 'tests.broken_organism.Thing': cannot import 'tests.broken_organism': "
        f"{Path(__file__).parent / 'broken_organism.py'}:3: "  # where, in the user's code
        "ModuleNotFoundError: No module named 'agentserver_no_such_dependency'",
        f"{PATH}:8: listener 'missing' payload_class 'tests.organisms.NoSuchClass': module 'tests.organisms' has no attribute 'NoSuchClass'",
        f"{PATH}:9: listener 'missing' handler 'tests.no_such_module.handle': cannot import 'tests.no_such_module': "
        "ModuleNotFoundError: No module named 'tests.no_such_module'",
    ]


def test_reserved_names_bad_values_and_every_problem_at_once():
    found = problems("""\
        - name: system.mine
          payload_class: tests.organisms.Echo
          handler: tests.organisms.echo
          concurrency: 0
        - name: fine
          payload_class: tests.organisms.Echo
          handler: tests.organisms.echo
          agent: maybe
        """)
    assert found == [
        f"{PATH}:4: listener name 'system.mine' is reserved for the pump (system, core)",
        f"{PATH}:7: listener 'system.mine' concurrency must be greater than 0, not 0",
        f"{PATH}:11: listener 'fine' agent must be a bool, not 'maybe'",
    ]


def test_a_file_on_disk_is_named_in_its_errors_and_bootstrap_refuses_it(tmp_path):
    path = tmp_path / "organism.yaml"
    path.write_text(HEAD + "  - name: x\n    payload_class: tests.organisms.Echo\n    handler: tests.organisms.echo\n    bogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        bootstrap(path)
    assert caught.value.problems == [
        f"{path}:7: unknown key 'bogus' in a listener (known keys: agent, concurrency, description, handler, llm, name, payload_class, peers)"
    ]
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert caught.value.problems[0].startswith(f"{tmp_path / 'missing.yaml'}:1: cannot read the file")


def test_invalid_yaml_is_reported_with_its_line():
    with pytest.raises(ConfigError) as caught:
        load_config(PATH, text="organism:\n  name: x\nlisteners: [\n  - a: b\n")
    assert caught.value.problems[0].startswith(f"{PATH}:")
    assert "not valid YAML" in caught.value.problems[0]


# ---------------------------------------------------------------------- authoring errors name their place
BROKEN_MODULES = {
    "optional_field": ("from dataclasses import dataclass\nfrom typing import Optional\nfrom xmlable import xmlify\n\n"
                       "@xmlify\n@dataclass\nclass Opt:\n    name: Optional[str]\n",
                       ["optional_field.py:5:", "class Opt, field 'name'", "Optional[str]", 'e.g. `str = ""`']),
    "future_annotations": ("from __future__ import annotations\nfrom dataclasses import dataclass\nfrom xmlable import xmlify\n\n"
                           "@xmlify\n@dataclass\nclass Fut:\n    name: str\n",
                           ["future_annotations.py:5:", "class Fut", "from __future__ import annotations", "remove that import"]),
    "name_error": ("x = 1\ny = undefined_name\n", ["name_error.py:2:", "NameError: name 'undefined_name' is not defined"]),
    "syntax_error": ("def broken(:\n    pass\n", ["syntax_error.py:1:", "SyntaxError"]),
}


@pytest.mark.parametrize("module", sorted(BROKEN_MODULES))
def test_an_authoring_error_names_its_file_line_and_the_fix(module, tmp_path, monkeypatch):
    source, expected = BROKEN_MODULES[module]
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = ("organism:\n  name: x\nlisteners:\n  - name: a\n"
            f"    payload_class: {module}.Thing\n    handler: tests.organisms.echo\n")
    with pytest.raises(ConfigError) as problems:
        load_config("organism.yaml", text=text)
    (problem,) = [p for p in problems.value.problems if module in p]
    assert problem.startswith("organism.yaml:5: ")
    for part in expected:
        assert part in problem, (part, problem)
