"""ids.py: IdSource makes version-4 UUID text, unique, per-owner."""

import uuid

from agentserver.ids import IdSource


def test_ids_are_version_4_uuid_text():
    source = IdSource()
    for _ in range(200):
        text = source.new()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # 8-4-4-4-12 lowercase hex
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ids_do_not_repeat_within_or_across_sources():
    a, b = IdSource(), IdSource()
    ids = [a.new() for _ in range(1000)] + [b.new() for _ in range(1000)]
    assert len(set(ids)) == len(ids)


def test_two_sources_are_seeded_independently():
    assert IdSource().new() != IdSource().new()


def test_the_random_bits_vary_across_the_whole_id():
    ids = [IdSource().new().replace("-", "") for _ in range(64)]
    fixed = {i for i in range(32) if len({h[i] for h in ids}) == 1}
    assert fixed == {12}  # only the version nibble is constant ('4'); the variant nibble is 8-b
