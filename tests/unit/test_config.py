"""The listener's configuration file: a bad one is refused with a message naming the field."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib

import pytest

from mailwarden.listener import config as lc

GOOD = {
    "services": [
        {
            "name": "mail/smtp",
            "service": "SMTP",
            "listen": [{"address": "127.0.0.1", "port": 2525}],
            "backend": {"host": "127.0.0.1", "port": 25},
        }
    ]
}


def with_service(**changes: object) -> dict[str, object]:
    svc = {**GOOD["services"][0], **changes}  # type: ignore[index]
    return {"services": [svc]}


def test_a_good_config_survives_a_round_trip_through_yaml():
    cfg = lc.parse(GOOD)
    assert lc.loads(lc.dumps(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_service(listen=[{"port": 70000}]), "services.0.listen.0.port: Input should be less"),
        (
            with_service(listen=[{"address": "localhost", "port": 25}]),
            "services.0.listen.0.address",
        ),
        (with_service(listen=[]), "services.0.listen: Tuple should have at least 1 item"),
        (with_service(allow=["192.0.2.0/33"]), "services.0.allow.0: Value error"),
        (
            with_service(service="Gopher"),
            "services.0.service: Value error, unknown service 'Gopher'",
        ),
        (
            with_service(anonymous=True),
            "anonymous access is only possible for NNTP and NNTPS, not SMTP",
        ),
        (with_service(service="IMAPS"), "IMAPS is an implicit-TLS service and needs tls files"),
        (with_service(max_connections=-1), "services.0.max_connections: Input should be greater"),
        (with_service(colour="blue"), "services.0.colour: Extra inputs are not permitted"),
        (with_service(backend={"host": "", "port": 25}), "services.0.backend.host"),
        (
            with_service(backend={"host": "h", "port": 25, "proxy_protocol": "v3"}),
            "services.0.backend.proxy_protocol",
        ),
        (
            with_service(timeouts={"idle": 0}),
            "services.0.timeouts.idle: Input should be greater than 0",
        ),
        (
            with_service(listen=[{"port": 25}, {"port": 25}]),
            "listen endpoint *:25 appears twice",
        ),
        (
            {"services": [GOOD["services"][0], GOOD["services"][0]]},  # type: ignore[index]
            "service names must be unique",
        ),
        ({"version": 2}, "version: Input should be 1"),
        ({"drain_seconds": -1}, "drain_seconds: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_config_is_refused_with_a_message_that_names_the_field(data, message):
    with pytest.raises(lc.ConfigError) as refused:
        lc.parse(data)
    assert message in str(refused.value)


def test_two_services_on_one_endpoint_are_refused_naming_both():
    other = {**GOOD["services"][0], "name": "mail/other"}  # type: ignore[index]
    with pytest.raises(
        lc.ConfigError, match=r"mail/other and mail/smtp both listen on 127\.0\.0\.1:2525"
    ):
        lc.parse({"services": [GOOD["services"][0], other]})  # type: ignore[index]


def test_text_that_is_not_yaml_is_refused_as_such():
    with pytest.raises(lc.ConfigError, match="not YAML"):
        lc.loads("services: [")


def test_a_missing_file_is_refused_with_its_path(tmp_path: pathlib.Path):
    with pytest.raises(lc.ConfigError, match=r"nope\.yaml: No such file"):
        lc.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text",
    ["", "\n", "# nothing yet\n", "version: 1\n", "version: 1\nmetrics:\n  port: 9090\n"],
)
def test_an_empty_file_or_one_cut_before_its_services_is_refused(text):
    """Issue 12, point 8: the starting code took these as "no services" and closed every
    port; they are broken files now, and the last good configuration stays."""
    with pytest.raises(lc.ConfigError, match=r"services: \[\]"):
        lc.loads(text)


def test_no_services_said_explicitly_is_a_listener_with_no_services():
    assert lc.loads("services: []\n").services == ()


def test_a_file_that_is_not_a_mapping_is_refused():
    with pytest.raises(lc.ConfigError, match="expected a mapping"):
        lc.loads("- services\n")


def test_a_file_larger_than_the_bound_is_refused_unread(tmp_path: pathlib.Path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.write(b"services: []\n")
        f.truncate(100 * 1024 * 1024)  # sparse: 100 MiB without writing them
    with pytest.raises(lc.ConfigError, match=r"104857600 bytes, more than the 1048576"):
        lc.load(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: pathlib.Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"services: []\n# caf\xe9\n")
    with pytest.raises(lc.ConfigError, match="not UTF-8"):
        lc.load(path)


@contextlib.contextmanager
def _no_descriptors_left():
    """Every descriptor under a lowered RLIMIT_NOFILE taken, for the block."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        with contextlib.suppress(OSError):
            while len(held) < 100:
                held.append(open(os.devnull))  # noqa: SIM115 - held open on purpose
        yield
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_running_out_of_file_descriptors_is_not_a_broken_configuration(tmp_path: pathlib.Path):
    """Issue 12, point 5: under EMFILE the starting code reported "configuration refused
    ... Too many open files" and counted a failed reload."""
    path = tmp_path / "listener.yaml"
    path.write_text("services: []\n")
    with _no_descriptors_left(), pytest.raises(lc.ConfigUnreadable) as caught:
        lc.load(path)
    assert not isinstance(caught.value, lc.ConfigError)
    assert caught.value.errno == errno.EMFILE
    assert lc.load(path).services == ()


def test_manifests_that_cannot_be_read_for_want_of_descriptors_are_not_broken(
    tmp_path: pathlib.Path,
):
    from mailwarden.cli.listen import ManifestSource

    path = tmp_path / "mail.yaml"
    path.write_text("")
    source = ManifestSource([path])
    with _no_descriptors_left(), pytest.raises(lc.ConfigUnreadable):
        source.load()
    assert source.load().services == ()


def test_cidrs_are_normalised_and_host_bits_forgiven():
    cfg = lc.parse(with_service(allow=["192.0.2.7/24", "2001:DB8::1/32"]))
    assert cfg.services[0].allow == ("192.0.2.0/24", "2001:db8::/32")
