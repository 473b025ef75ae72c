"""Any data at all, given to the listener's configuration reader, is either a configuration or
a ConfigError naming where it went wrong: never another exception (the reader is msgspec with
checks of its own, see docs/decisions/0001-listener-pod-footprint.md)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.listener import config as lc

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
KEYS = st.sampled_from(
    ["services", "name", "service", "listen", "port", "address", "backend", "host", "allow",
     "tls", "ca_file", "timeouts", "idle", "metrics", "drain_seconds", "lame_duck_seconds",
     "version", "proxy_protocol", "rate_limit", "auto_ban", "exempt", "x"]
)  # fmt: skip
DATA = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)
GOOD = {
    "name": "mail/smtp",
    "service": "SMTP",
    "listen": [{"address": "127.0.0.1", "port": 2525}],
    "backend": {"host": "127.0.0.1", "port": 25},
}


def outcome(data: object) -> None:
    try:
        cfg = lc.parse(data)
    except lc.ConfigError as exc:
        why = str(exc)
    else:
        assert lc.loads(lc.dumps(cfg)) == cfg == lc.loads(lc.dumps(cfg, "json"))
        return
    assert ": " in why  # `where: what`


@settings(max_examples=150, deadline=None)
@given(DATA)
def test_arbitrary_data_is_a_configuration_or_a_config_error(data):
    outcome(data)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(KEYS, DATA, max_size=4))
def test_a_good_service_with_arbitrary_fields_changed_is_a_configuration_or_a_config_error(
    changes,
):
    outcome({"services": [{**GOOD, **changes}]})


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_configuration_or_a_config_error(text):
    try:
        lc.loads(text)
    except lc.ConfigError:
        pass
    try:
        lc.loads("{" + text)
    except lc.ConfigError:
        pass


def test_json_as_the_operator_writes_it_reads_back_the_same():
    cfg = lc.parse({"services": [GOOD], "lame_duck_seconds": 5})
    text = lc.dumps(cfg, "json")
    assert json.loads(text)["lame_duck_seconds"] == 5
    assert lc.loads(text) == cfg
