"""BN254 group and pairing arithmetic behind one interface, with two implementations.

- ``py_ecc``: the pure-Python reference (Ethereum Foundation's py-ecc). Slow, obviously correct.
- ``mcl``: herumi's mcl through the ``mclbn256`` wheel, switched to Ethereum's BN254 curve.

Multiplications by a secret (a signature, a public key from its secret) go through
``g1_mul_secret``/``g2_mul_secret``: mcl's constant-time ``mulCT``; py-ecc has no constant-time
path, which is one more reason it is only the reference.

Both take and return the plain affine points of ``avs.crypto.curve``, so their results compare
directly; a property test holds them equal. ``get_backend()`` picks the fast one when it loads and
the reference otherwise; ``AVS_BLS_BACKEND=py_ecc|mcl`` forces a choice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Protocol

from avs.crypto.curve import G1Point, G2Point
from avs.errors import BackendUnavailableError

logger = logging.getLogger(__name__)

BACKEND_ENV = "AVS_BLS_BACKEND"
BACKEND_NAMES = ("mcl", "py_ecc")


class Bn254Backend(Protocol):
    """Group operations on canonical, on-curve inputs (callers parse untrusted points first)."""

    name: str

    def g1_add(self, a: G1Point, b: G1Point) -> G1Point: ...

    def g1_mul(self, point: G1Point, scalar: int) -> G1Point: ...

    def g1_mul_secret(self, point: G1Point, scalar: int) -> G1Point:
        """``g1_mul`` for a secret ``scalar`` (signing): constant-time where the backend can be."""
        ...

    def g1_multi_mul(self, points: Sequence[G1Point], scalars: Sequence[int]) -> G1Point:
        """Sum of ``scalars[i] · points[i]``."""
        ...

    def g2_add(self, a: G2Point, b: G2Point) -> G2Point: ...

    def g2_mul(self, point: G2Point, scalar: int) -> G2Point: ...

    def g2_mul_secret(self, point: G2Point, scalar: int) -> G2Point:
        """``g2_mul`` for a secret ``scalar`` (key derivation): constant-time where the backend can be."""
        ...

    def is_in_g2_subgroup(self, point: G2Point) -> bool:
        """True if ``r · point`` is the identity (the twist has a large cofactor)."""
        ...

    def pairing_product_is_one(self, pairs: Sequence[tuple[G1Point, G2Point]]) -> bool:
        """True if the product of ``e(P_i, Q_i)`` is 1 in GT."""
        ...


# ``functools.cache`` does not stop two threads from running the loader at once, and two
# concurrent ``mclBn_init`` calls crash the process (SIGSEGV/SIGFPE, seen when the aggregator's
# workers verified their first signatures together): every first load happens under this lock.
_load_lock = threading.RLock()


def load_backend(name: str) -> Bn254Backend:
    """The backend called ``name``; raises ``BackendUnavailableError`` if it cannot load here."""
    with _load_lock:
        return _load_backend_once(name)


@cache
def _load_backend_once(name: str) -> Bn254Backend:
    if name == "py_ecc":
        from avs.crypto.backends.py_ecc_backend import PyEccBackend

        return PyEccBackend()
    if name == "mcl":
        from avs.crypto.backends.mcl_backend import MclBackend

        return MclBackend()
    raise BackendUnavailableError(f"unknown BN254 backend {name!r}; choose one of {BACKEND_NAMES}")


_override: list[Bn254Backend] = []


def get_backend() -> Bn254Backend:
    """The process-wide default backend: ``$AVS_BLS_BACKEND`` if set, else mcl, else py_ecc."""
    return _override[-1] if _override else _get_default_backend()


@contextmanager
def using_backend(name: str) -> Iterator[Bn254Backend]:
    """Make ``name`` the default backend inside a ``with`` block (scripts and tests only)."""
    _override.append(load_backend(name))
    try:
        yield _override[-1]
    finally:
        _override.pop()


_default: list[Bn254Backend] = []  # set once; read without the lock on the hot path


def _get_default_backend() -> Bn254Backend:
    if not _default:
        with _load_lock:
            if not _default:
                _default.append(_pick_default_backend())
    return _default[0]


def _pick_default_backend() -> Bn254Backend:
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        return load_backend(forced)
    try:
        return load_backend("mcl")
    except BackendUnavailableError as exc:
        # An operator on py_ecc signs ~300x slower (and in variable time): say so once, at load.
        logger.warning("mcl unavailable (%s); using py_ecc, about 300x slower", exc)
        return load_backend("py_ecc")
