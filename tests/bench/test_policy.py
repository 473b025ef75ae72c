"""`--policy abuse`: both front ends get the per-address rate limit (and the listener its
auto-ban), in configurations each accepts; without the flag neither has one."""

from __future__ import annotations

import pytest

from bench import frontends
from mailwarden.listener import config as lc

pytestmark = pytest.mark.bench


def listener(policy: str) -> lc.ListenerConfig:
    be = frontends.Backend(smtp_port=2525, stream_port=2526)
    return lc.parse(frontends.listener_config(be, 100, 10025, 10026, policy))


def test_the_abuse_policy_reaches_every_listener_service_and_is_accepted():
    for svc in listener("abuse").services:
        assert svc.rate_limit.connections_per_minute == frontends.RATE_PER_MINUTE
        assert svc.auto_ban is not None
        assert svc.auto_ban.after_failures == frontends.BAN_AFTER_FAILURES
    for svc in listener("none").services:
        assert svc.rate_limit.connections_per_minute == 0 and svc.auto_ban is None


def test_the_policy_flag_is_offered_by_the_benchmark():
    from bench import listener_vs_haproxy

    with pytest.raises(SystemExit):
        listener_vs_haproxy.main(["--policy", "nonsense"])
    assert frontends.POLICIES == ("none", "abuse")
    assert "sc0_conn_rate gt 1000000" in frontends.HAPROXY_ABUSE.format(
        rate=frontends.RATE_PER_MINUTE
    )


@pytest.mark.skipif(not frontends.have_haproxy(), reason="HAProxy not installed")
@pytest.mark.parametrize("policy", frontends.POLICIES)
def test_haproxy_accepts_the_configuration_of_each_policy(policy, tmp_path):
    import subprocess

    abuse = frontends.HAPROXY_ABUSE.format(rate=frontends.RATE_PER_MINUTE)
    (tmp_path / "refuse.lua").write_text(frontends.LUA)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        frontends.HAPROXY_CFG.format(
            maxconn=100,
            lua=tmp_path / "refuse.lua",
            smtp_port=10025,
            stream_port=10026,
            metrics_port=10027,
            allow=frontends.ALLOW,
            cap=10,
            backend_smtp=2525,
            backend_stream=2526,
            abuse_smtp=abuse if policy == "abuse" else "",
            abuse_stream=abuse if policy == "abuse" else "",
        )
    )
    check = subprocess.run(
        [frontends.HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert ("sc0_conn_rate" in cfg.read_text()) == (policy == "abuse")
