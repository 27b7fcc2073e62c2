"""A real kim-broker for the client's tests: three agencies (jc.rheine signs
its messages), an auditor, the shipped policy. Binaries come from the
environment (CTest passes them), else from build/test."""
import os
import sys

import pytest

#   The shared helpers of the document checks assert too: rewritten, their
#   failures show the values as the tests' own do.
pytest.register_assert_rewrite("kim_configenv", "kim_readme", "kim_webenv", "kim_policyfiles")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "agents", "python"))

from kim.testing import TestBroker  # noqa: E402


def _program(env, relative):
    path = os.environ.get(env) or os.path.join(ROOT, "build", "test", relative)
    if not os.access(path, os.X_OK):
        raise RuntimeError("%s: no such program (set %s)" % (path, env))
    return path


ORGS = {"jc.rheine": "agency", "soz.rheine": "agency", "aa.rheine": "agency",
        "dsb.steinfurt": "auditor"}


def new_broker(orgs=None, **sections):
    """A TestBroker like the shared one (its organisations unless `orgs`),
    with config keys by section: new_broker(broker={"sessions_per_org": 2})."""
    return TestBroker(_program("KIM_BROKER_BIN", "broker/kim-broker"),
                      os.environ.get("KIM_POLICY_FILE") or os.path.join(ROOT, "deploy",
                                                                        "policy.cfg"),
                      ORGS if orgs is None else orgs, signing=["jc.rheine"], sections=sections)


@pytest.fixture(scope="session")
def broker():
    b = new_broker().start()
    yield b
    b.finish()


@pytest.fixture
def brokers():
    """brokers(orgs=None, **sections) -> a started broker of the test's own,
    finished (it must exit 0) after the test."""
    started = []

    def start(orgs=None, **sections):
        started.append(new_broker(orgs, **sections).start())
        return started[-1]
    yield start
    for b in started:
        b.finish()


@pytest.fixture
def connect_to():
    """connect_to(broker, org, **options) -> a kim.Client of `org` connected to
    that broker, closed after the test."""
    import kim
    clients = []

    def make(b, org, **options):
        c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org), **options)
        c.connect()
        clients.append(c)
        return c
    yield make
    for c in clients:
        c.close()


@pytest.fixture
def connect(broker, connect_to):
    """connect(org, **options) -> a connected kim.Client, closed after the test."""
    return lambda org, **options: connect_to(broker, org, **options)
