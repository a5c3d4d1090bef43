"""One error root per package, and wire codes / errnos looked up on the class."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil

import pytest

import spdm
import tdisp
import tsm
from spdm.codes import ErrorCode
from spdm.errors import ErrorResponse, RequestRefused, SpdmError, UnsupportedRequest
from spdm.responder import VendorRequestContext
from tdisp.errors import IdeTdispError, TdispRequestError
from tests.helpers.spdm_harness import identity_for, make_link
from tsm.errors import TsmError, errno_of

ROOTS = [(spdm, SpdmError), (tdisp, IdeTdispError), (tsm, TsmError)]


def exceptions_defined_in(package: object) -> list[type[BaseException]]:
    found = []
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):  # type: ignore[attr-defined]
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


@pytest.mark.parametrize(("package", "root"), ROOTS, ids=[p.__name__ for p, _ in ROOTS])
def test_every_exception_has_the_package_root(package: object, root: type) -> None:
    classes = exceptions_defined_in(package)
    assert root in classes
    assert [c.__name__ for c in classes if not issubclass(c, root)] == []


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def test_each_spdm_refusal_class_has_its_own_code() -> None:
    codes = [c.code for c in _all_subclasses(RequestRefused) if c.__module__ == "spdm.errors"]
    assert len(codes) == len(set(codes))
    assert all(isinstance(c, ErrorCode) for c in codes)


@pytest.mark.parametrize("cls", [c for c in _all_subclasses(RequestRefused)
                                 if c.__module__ == "spdm.errors"],
                         ids=lambda c: c.__name__)
def test_responder_answers_with_the_class_code(cls: type[RequestRefused]) -> None:
    """What a request handler raises becomes ERROR with the class's code and data."""

    def handler(payload: bytes, ctx: VendorRequestContext) -> bytes:
        if cls is UnsupportedRequest:
            raise UnsupportedRequest(0x42, "refused")
        raise cls("refused", data=0x42)

    link = make_link(identity_for("ecdsa-p384"))
    link.responder.register_vendor_handler(3, b"\x01\x00", handler)
    link.connect()
    with pytest.raises(ErrorResponse) as exc:
        link.run(link.requester.vendor_defined(3, b"\x01\x00", b"\x00\x00\x00\x00"))
    assert (exc.value.code, exc.value.data) == (cls.code, 0x42)


def test_tdisp_refusal_classes_cover_every_code() -> None:
    from tdisp.codes import ErrorCode as TdispCode

    for code in TdispCode:
        if code == TdispCode.VENDOR_SPECIFIC_ERROR:
            continue
        assert TdispRequestError.for_code(code).code == code


def test_errno_is_a_class_lookup() -> None:
    class Unknown(Exception):
        pass

    assert errno_of(Unknown("x")) == -errno.EIO
    for cls in _all_subclasses(TsmError):
        assert isinstance(cls.errno, int) and cls.errno > 0
