"""Signed bundles with the OpenSSF ``model-signing`` library (key-based: works offline).

The signature covers every file of the bundle, ``manifest.json`` included, but the
report (rewritten by ``evaluate``) and the signature itself. The sha256 list in the
manifest catches accidents; the signature catches someone who rewrote the manifest too.
"""

from __future__ import annotations

import re
from pathlib import Path

from stacking.errors import BundleError, UserError

SIGNATURE = "signature.sig"
UNSIGNED = (SIGNATURE, "report")  # paths of the bundle the signature leaves out


def _hashing():
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=list(UNSIGNED), ignore_git_paths=False)


def check_signing_key(private_key: Path):
    """The signing configuration for an elliptic-curve private key (PEM); a clear error if it is not one."""
    from model_signing import signing

    key = Path(private_key)
    if not key.is_file():
        raise UserError(f"--sign-key {key}: no such file")
    try:
        return signing.Config().set_hashing_config(_hashing()).use_elliptic_key_signer(private_key=key)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--sign-key {key}: not an unencrypted elliptic-curve private key in PEM ({exc})") from None


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    """Sign ``bundle`` (the files as they are now); return the signature's path."""
    bundle = Path(bundle)
    check_signing_key(private_key).sign(bundle, bundle / SIGNATURE)
    return bundle / SIGNATURE


def verify_signature(bundle: Path, public_key: Path) -> None:
    """Refuse ``bundle`` unless it is signed by the holder of ``public_key`` and unchanged since."""
    from model_signing import verifying

    bundle, key = Path(bundle), Path(public_key)
    if not key.is_file():
        raise UserError(f"--verify-key {key}: no such file")
    signature = bundle / SIGNATURE
    if not signature.is_file():
        raise BundleError(f"{bundle}: not signed (no {SIGNATURE}) and a verify key is set; refusing it")
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=key)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--verify-key {key}: not an elliptic-curve public key in PEM ({exc})") from None
    try:
        config.verify(bundle, signature)
    except Exception as exc:  # noqa: BLE001  model-signing raises ValueError and the sigstore library's own errors
        raise BundleError(f"{bundle}: signature check failed, refusing it: {_reason(str(exc))}") from None


def _reason(message: str) -> str:
    """model-signing's message cut down to what changed: file names, not digests."""
    if message.startswith("Key mismatch"):
        return "signed with another key than --verify-key"
    changed = re.findall(r"Hash mismatch for \\?'(.+?)\\?':", message)
    parts = [f"changed since signing: {', '.join(changed)}"] if changed else []
    for label, said in (("Extra files found", "added since signing"), ("Missing files", "missing since signing")):
        found = re.search(rf"{label} in model \\?'.*?\\?': ([^\"'\]\\]+)", message)
        if found:
            parts.append(f"{said}: {found.group(1).strip()}")
    return "; ".join(parts) or message
