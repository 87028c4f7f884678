#!/usr/bin/python3
"""run_pytest.py: runs the Python binding's pytest tests for ctest; exits 77
(skipped) with the reason when pytest is not installed."""
import sys

try:
    import pytest
except ImportError:
    print("SKIP: pytest is not installed (Debian: python3-pytest)")
    sys.exit(77)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-rs"] + sys.argv[1:]))
