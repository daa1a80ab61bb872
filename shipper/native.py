"""The C hot path (`shipper._native`, built from native/ by `pip install`), or None.

None when the extension is not built (a bare source tree) or SHIPPER_NATIVE=0 asks for the Python
reference implementations, which every native function is tested against byte for byte.
"""
from __future__ import annotations

import os

try:
    from . import _native as module
except ImportError:
    module = None
if os.environ.get("SHIPPER_NATIVE", "1") == "0":
    module = None

ENABLED = module is not None
