"""Paths for the verifier's tests: the built binaries come from the
environment (CTest passes them), else from build/test."""
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def built(env, relative):
    path = os.environ.get(env) or os.path.join(ROOT, "build", "test", relative)
    if not os.access(path, os.X_OK):
        raise RuntimeError("%s: no such program (set %s)" % (path, env))
    return path


KIM_BROKER = built("KIM_BROKER_BIN", "broker/kim-broker")
KIM_TOOL = built("KIM_BIN", "agents/cli/kim")
POLICY = os.environ.get("KIM_POLICY_FILE") or os.path.join(ROOT, "deploy", "policy.cfg")
