import os
import sys

# Tests import the packages from the source tree even before `pip install -e .` ran.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("daemon", "control"):
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.insert(0, path)
