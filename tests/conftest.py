import os
import sys

# Task functions live in tests/engine_funcs.py; worker processes (spawn) inherit sys.path.
sys.path.insert(0, os.path.dirname(__file__))
