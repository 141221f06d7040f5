__version__ = "0.1.0"

# Before any other labsquid module is imported: decides, per compiled module,
# whether its extension or its .py runs (see _native.py).
from labsquid import _native

_native.install()
