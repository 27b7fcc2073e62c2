"""Makes the kim package (agents/python) and the verifier importable."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "agents", "python"))
sys.path.insert(0, HERE)
