"""Fast backend: herumi's mcl (C++, BSD-3) through the ``mclbn256`` wheel (MIT), over ctypes.

The wheel initialises mcl for a different BN curve; we re-initialise the shared library for
``MCL_BN_SNARK1``, Ethereum's alt_bn128 (``mclBn_init(4, ...)``). We call the C API directly and
move points in and out as decimal strings (mcl's ``ioMode`` 10), which costs microseconds against
the ~1 ms of a pairing and keeps this file independent of the wheel's Python classes.
Multiplications by a secret use mcl's constant-time ``mclBnG1_mulCT``/``mclBnG2_mulCT``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from avs.crypto.curve import FP_MODULUS, FR_MODULUS, G1_GENERATOR, G1_IDENTITY, G2_IDENTITY, G1Point, G2Point
from avs.errors import BackendUnavailableError

MCL_BN_SNARK1 = 4  # mcl's id for Ethereum's BN254 (alt_bn128)
_FP_UNIT_SIZE = 4  # 64-bit limbs per field element in this build
_COMPILED_TIME_VAR = _FP_UNIT_SIZE + _FP_UNIT_SIZE * 10
_IO_DECIMAL = 10
_STR_BUF = 1024

# 2·(1, 2) on y^2 = x^3 + 3, as the ecAdd precompile returns it.
_G1_GENERATOR_DOUBLED = G1Point(
    1368015179489954701390400359078579693043519447331113978918064868415326638035,
    9918110051302171585080402603319702774565515993150576347155970296011118125764,
)

_FP_BYTES = 8 * _FP_UNIT_SIZE
_Fp = ctypes.c_uint64 * _FP_UNIT_SIZE
_Fr = ctypes.c_uint64 * 4
_G1 = ctypes.c_uint64 * (_FP_UNIT_SIZE * 3)
_G2 = ctypes.c_uint64 * (_FP_UNIT_SIZE * 2 * 3)
_GT = ctypes.c_uint64 * (_FP_UNIT_SIZE * 12)


def _load_library() -> Any:
    try:
        from mclbn256 import mclbn256 as wheel
    except Exception as exc:  # ImportError, or OSError from a wheel built for another platform
        raise BackendUnavailableError(f"mclbn256 cannot be loaded here: {exc}") from exc
    lib = wheel.loaded_libraries["libmclbn256"]
    if lib.mclBn_init(MCL_BN_SNARK1, _COMPILED_TIME_VAR) != 0:
        raise BackendUnavailableError("mclBn_init failed for MCL_BN_SNARK1")
    # We check subgroups ourselves (G1 has cofactor 1; G2 explicitly), so the error is ours.
    lib.mclBn_verifyOrderG1(0)
    lib.mclBn_verifyOrderG2(0)
    return lib


class MclBackend:
    name = "mcl"

    def __init__(self) -> None:
        self._lib = _load_library()
        self._fp_one = _Fp()
        self._lib.mclBnFp_setInt32(ctypes.byref(self._fp_one), 1)
        self._check_generator()

    def _check_generator(self) -> None:
        """Refuse to run unless the library is on Ethereum's curve: 2·(1, 2) must match."""
        if self._lib.mclBn_getCurveType() != MCL_BN_SNARK1:
            raise BackendUnavailableError("mcl is not initialised for Ethereum's BN254")
        try:
            doubled = self.g1_add(G1_GENERATOR, G1_GENERATOR)
        except ValueError as exc:
            raise BackendUnavailableError(f"mcl rejects Ethereum's G1 generator: {exc}") from exc
        if doubled != _G1_GENERATOR_DOUBLED:
            raise BackendUnavailableError("mcl computes 2·G1 wrongly for Ethereum's BN254")

    # --- conversions -------------------------------------------------------------------

    def _set_str(self, fn: Any, target: Any, text: str) -> None:
        data = text.encode()
        if fn(ctypes.byref(target), data, len(data), _IO_DECIMAL) != 0:
            raise ValueError(f"mcl rejected {text!r}")

    def _get_str(self, fn: Any, source: Any) -> list[int]:
        buf = ctypes.create_string_buffer(_STR_BUF)
        if fn(buf, _STR_BUF, ctypes.byref(source), _IO_DECIMAL) == 0:
            raise ValueError("mcl could not serialise a point")
        return [int(word) for word in buf.value.split()]

    def _g1(self, point: G1Point) -> Any:
        # Written field by field: mcl's G1 setStr re-checks the point at ~60 us, which would
        # dominate a verification. Callers have already checked the point is on the curve; the
        # range is checked here: mcl took x + p for another point than py_ecc, which reduces it mod p.
        out = _G1()
        if point.is_identity():
            return out  # z = 0 is mcl's identity
        if point.x >= FP_MODULUS or point.y >= FP_MODULUS:
            raise ValueError("a G1 coordinate is not below the field modulus")
        base = ctypes.addressof(out)
        self._lib.mclBnFp_setLittleEndian(ctypes.c_void_p(base), point.x.to_bytes(32, "little"), 32)
        self._lib.mclBnFp_setLittleEndian(ctypes.c_void_p(base + _FP_BYTES), point.y.to_bytes(32, "little"), 32)
        ctypes.memmove(base + 2 * _FP_BYTES, ctypes.addressof(self._fp_one), _FP_BYTES)
        return out

    def _read_g1(self, raw: Any) -> G1Point:
        words = self._get_str(self._lib.mclBnG1_getStr, raw)
        return G1_IDENTITY if words == [0] else G1Point(words[1], words[2])

    def _g2(self, point: G2Point) -> Any:
        out = _G2()
        # mcl writes Fp2 as "re im"
        text = "0" if point.is_identity() else f"1 {point.x_re} {point.x_im} {point.y_re} {point.y_im}"
        self._set_str(self._lib.mclBnG2_setStr, out, text)
        return out

    def _read_g2(self, raw: Any) -> G2Point:
        words = self._get_str(self._lib.mclBnG2_getStr, raw)
        if words == [0]:
            return G2_IDENTITY
        return G2Point(x_re=words[1], x_im=words[2], y_re=words[3], y_im=words[4])

    def _fr(self, scalar: int) -> Any:
        out = _Fr()
        self._set_str(self._lib.mclBnFr_setStr, out, str(scalar % FR_MODULUS))
        return out

    def _fr_secret(self, scalar: int) -> Any:
        # Fixed-width bytes, not a decimal string whose length and digits depend on the secret.
        out = _Fr()
        self._lib.mclBnFr_setLittleEndian(ctypes.byref(out), (scalar % FR_MODULUS).to_bytes(32, "little"), 32)
        return out

    # --- the interface -----------------------------------------------------------------

    def g1_add(self, a: G1Point, b: G1Point) -> G1Point:
        out = _G1()
        self._lib.mclBnG1_add(ctypes.byref(out), ctypes.byref(self._g1(a)), ctypes.byref(self._g1(b)))
        return self._read_g1(out)

    def g1_mul(self, point: G1Point, scalar: int) -> G1Point:
        out = _G1()
        self._lib.mclBnG1_mul(ctypes.byref(out), ctypes.byref(self._g1(point)), ctypes.byref(self._fr(scalar)))
        return self._read_g1(out)

    def g1_mul_secret(self, point: G1Point, scalar: int) -> G1Point:
        out = _G1()
        self._lib.mclBnG1_mulCT(ctypes.byref(out), ctypes.byref(self._g1(point)), ctypes.byref(self._fr_secret(scalar)))
        return self._read_g1(out)

    def g1_multi_mul(self, points: Sequence[G1Point], scalars: Sequence[int]) -> G1Point:
        if len(points) != len(scalars):
            raise ValueError("points and scalars differ in length")
        if not points:
            return G1_IDENTITY
        point_vec = (_G1 * len(points))(*(self._g1(p) for p in points))
        scalar_vec = (_Fr * len(scalars))(*(self._fr(s) for s in scalars))
        out = _G1()
        self._lib.mclBnG1_mulVec(ctypes.byref(out), point_vec, scalar_vec, len(points))
        return self._read_g1(out)

    def g2_add(self, a: G2Point, b: G2Point) -> G2Point:
        out = _G2()
        self._lib.mclBnG2_add(ctypes.byref(out), ctypes.byref(self._g2(a)), ctypes.byref(self._g2(b)))
        return self._read_g2(out)

    def g2_mul(self, point: G2Point, scalar: int) -> G2Point:
        out = _G2()
        self._lib.mclBnG2_mul(ctypes.byref(out), ctypes.byref(self._g2(point)), ctypes.byref(self._fr(scalar)))
        return self._read_g2(out)

    def g2_mul_secret(self, point: G2Point, scalar: int) -> G2Point:
        out = _G2()
        self._lib.mclBnG2_mulCT(ctypes.byref(out), ctypes.byref(self._g2(point)), ctypes.byref(self._fr_secret(scalar)))
        return self._read_g2(out)

    def is_in_g2_subgroup(self, point: G2Point) -> bool:
        return bool(self._lib.mclBnG2_isValidOrder(ctypes.byref(self._g2(point))))

    def pairing_product_is_one(self, pairs: Sequence[tuple[G1Point, G2Point]]) -> bool:
        live = [(p, q) for p, q in pairs if not (p.is_identity() or q.is_identity())]
        if not live:
            return True
        g1_vec = (_G1 * len(live))(*(self._g1(p) for p, _ in live))
        g2_vec = (_G2 * len(live))(*(self._g2(q) for _, q in live))
        miller, result = _GT(), _GT()
        self._lib.mclBn_millerLoopVec(ctypes.byref(miller), g1_vec, g2_vec, len(live))
        self._lib.mclBn_finalExp(ctypes.byref(result), ctypes.byref(miller))
        return bool(self._lib.mclBnGT_isOne(ctypes.byref(result)))
