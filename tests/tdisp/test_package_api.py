"""The public names re-exported by tdisp/__init__.py resolve."""

from __future__ import annotations

import tdisp


def test_public_api_names_resolve() -> None:
    assert tdisp.__all__
    for name in tdisp.__all__:
        assert getattr(tdisp, name) is not None, name
