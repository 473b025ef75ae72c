"""The suite's fixtures live in modules under tests/support/ and are registered here, once,
for every directory; session-wide checks are plugins of their own."""

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.mail_servers",
    "tests.support.ldap_http_xmpp_servers",
    "tests.support.smtp_sink",
    "tests.support.cel_coverage",
    "tests.support.attack",
]
