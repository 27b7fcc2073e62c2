"""A real kim-broker for the client's tests: three agencies (jc.rheine signs
its messages), an auditor, the shipped policy. Binaries come from the
environment (CTest passes them), else from build/test."""
import os
import sys

import pytest

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


@pytest.fixture(scope="session")
def broker():
    b = TestBroker(_program("KIM_BROKER_BIN", "broker/kim-broker"),
                   os.environ.get("KIM_POLICY_FILE") or os.path.join(ROOT, "deploy",
                                                                     "policy.cfg"),
                   ORGS, signing=["jc.rheine"])
    b.start()
    yield b
    rc = b.stop()
    log = b.log_tail()
    b.cleanup()
    assert rc == 0, "kim-broker exited with %s: %s" % (rc, log)


@pytest.fixture
def connect(broker):
    """connect(org, **options) -> a connected kim.Client, closed after the test."""
    import kim
    clients = []

    def make(org, **options):
        c = kim.Client(broker.endpoint, broker.broker_cert, broker.cert_secret(org), **options)
        c.connect()
        clients.append(c)
        return c
    yield make
    for c in clients:
        c.close()
