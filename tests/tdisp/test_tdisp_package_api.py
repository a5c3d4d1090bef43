"""The public names re-exported by tdisp/__init__.py resolve.

(The editable install exposes `tdisp` as a namespace under pytest, so the package
__init__ is executed here explicitly.)
"""

from __future__ import annotations

import importlib


def test_public_api_names_resolve() -> None:
    init = importlib.import_module("tdisp.__init__")
    for name in init.__all__:
        assert getattr(init, name) is not None, name
