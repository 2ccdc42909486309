"""Signing keys of the HTTP signature schemes (RFC 9421 and draft-cavage), from a config secret.

A key is a PEM private key (PKCS#8, or the traditional `RSA PRIVATE KEY` / `EC PRIVATE KEY`
forms) or, for HMAC, a shared secret. It is loaded and checked against its algorithm when the
config is loaded, so a wrong or mismatched key is a config error naming the key's path, never a
failed request. A `SigningKey` signs bytes and never shows its material (`repr` is a mask).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

Algorithm = Literal[
    "hmac-sha256",
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "rsa-pss-sha512",
    "rsa-v1_5-sha256",
]
KeyEncoding = Literal["raw", "base64"]

MIN_RSA_BITS: Final = 2048
_CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm, int]]] = {
    # algorithm -> (curve, hash, bytes of r and of s in the raw r || s signature)
    "ecdsa-p256-sha256": (ec.SECP256R1, hashes.SHA256(), 32),
    "ecdsa-p384-sha384": (ec.SECP384R1, hashes.SHA384(), 48),
}
_KEY_KINDS: Final = {
    ed25519.Ed25519PrivateKey: "an Ed25519",
    rsa.RSAPrivateKey: "an RSA",
    ec.EllipticCurvePrivateKey: "an EC",
}


class SigningKey:
    """Signs bytes with one algorithm. Holds key material: never printed or logged."""

    __slots__ = ("_sign", "algorithm")

    def __init__(self, algorithm: str, sign: _Sign) -> None:
        self.algorithm = algorithm
        self._sign = sign

    def sign(self, data: bytes) -> bytes:
        return self._sign(data)

    def __repr__(self) -> str:
        return f"SigningKey({self.algorithm}, **********)"

    def __reduce__(self) -> Any:
        raise TypeError("signing keys cannot be pickled")


class _Sign:
    """The signing step of one algorithm, bound to its key."""

    __slots__ = ()

    def __call__(self, data: bytes) -> bytes:
        raise NotImplementedError


class _Hmac(_Sign):
    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)  # keyed once, copied per use

    def __call__(self, data: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(data)
        return mac.digest()


class _Ed25519(_Sign):
    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    def __call__(self, data: bytes) -> bytes:
        return self._key.sign(data)


class _Ecdsa(_Sign):
    """ECDSA with the signature as the fixed-size r || s both RFC 9421 (3.3.4, 3.3.5) and JOSE
    use, not the DER that `cryptography` returns."""

    __slots__ = ("_hash", "_key", "_size")

    def __init__(self, key: ec.EllipticCurvePrivateKey, hash_: hashes.HashAlgorithm, size: int):
        self._key, self._hash, self._size = key, hash_, size

    def __call__(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(self._hash)))
        return r.to_bytes(self._size, "big") + s.to_bytes(self._size, "big")


class _RsaPss(_Sign):
    __slots__ = ("_key",)
    _PADDING: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def __call__(self, data: bytes) -> bytes:
        return self._key.sign(data, self._PADDING, hashes.SHA512())


class _RsaV15(_Sign):
    __slots__ = ("_key",)

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def __call__(self, data: bytes) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def hmac_secret(secret: str, encoding: KeyEncoding) -> bytes:
    """The HMAC key bytes: the secret's UTF-8 bytes, or its base64 decoding."""
    if encoding == "raw":
        return secret.encode()
    try:
        decoded = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key is not valid base64 (key_encoding: base64)") from None
    if not decoded:
        raise ValueError("key decodes to no bytes")
    return decoded


def load_signing_key(
    algorithm: Algorithm,
    secret: str,
    *,
    key_encoding: KeyEncoding = "raw",
    min_rsa_bits: int = MIN_RSA_BITS,
) -> SigningKey:
    """Load `secret` for `algorithm`, or raise ValueError saying what is wrong (never the key).

    `min_rsa_bits` is RFC 9421's `MIN_RSA_BITS` unless given (draft-cavage passes its own).
    """
    if algorithm == "hmac-sha256":
        return SigningKey(algorithm, _Hmac(hmac_secret(secret, key_encoding)))
    if key_encoding != "raw":
        raise ValueError(f"key_encoding applies to hmac-sha256 only, not {algorithm}")
    key = _load_pem(secret)
    if algorithm == "ed25519":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise _mismatch(key, algorithm, "an Ed25519")
        return SigningKey(algorithm, _Ed25519(key))
    if algorithm in _CURVES:
        curve, hash_, size = _CURVES[algorithm]
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise _mismatch(key, algorithm, "an EC")
        if not isinstance(key.curve, curve):
            raise ValueError(
                f"{algorithm} needs a key on {curve.name}; this EC key is on {key.curve.name}"
            )
        return SigningKey(algorithm, _Ecdsa(key, hash_, size))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _mismatch(key, algorithm, "an RSA")
    if key.key_size < min_rsa_bits:
        raise ValueError(f"the RSA key has {key.key_size} bits; {algorithm} needs {min_rsa_bits}+")
    if algorithm == "rsa-pss-sha512":
        return SigningKey(algorithm, _RsaPss(key))
    return SigningKey(algorithm, _RsaV15(key))


def _load_pem(secret: str) -> object:
    if "-----BEGIN" not in secret:
        raise ValueError(
            "key is not a PEM private key (expected -----BEGIN PRIVATE KEY----- or the "
            "RSA/EC PRIVATE KEY forms)"
        )
    try:
        return serialization.load_pem_private_key(secret.encode(), password=None)
    except TypeError:
        raise ValueError("the PEM private key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        # cryptography's message says nothing of the key, but keep ours fixed regardless.
        raise ValueError(
            "key cannot be read as a PEM private key (PKCS#8, or traditional RSA/EC)"
        ) from None


def _mismatch(key: object, algorithm: str, wanted: str) -> ValueError:
    found = next((name for cls, name in _KEY_KINDS.items() if isinstance(key, cls)), "another")
    return ValueError(f"{algorithm} needs {wanted} private key; the key is {found} key")
