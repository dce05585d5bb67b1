"""FAKE PBS for tests; no PBS server exists in Debian or PyPI (see fakepbs.py)."""
import os

BIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin")
