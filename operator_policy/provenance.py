"""Records the server stands behind: the append-only audit log, and image records signed under a server secret.

Every image an output node releases gets a record (its verdict, the sha256 of its pixels exactly as the output
node stores them, the prompt and node it came from, the policy's sha256) and an HMAC-SHA256 of that record
under a secret kept beside the policy (``provenance.key``, 32 random bytes made at first start, mode 0600).
Saved PNGs carry the records in their ``responsible_steering`` text chunk; :func:`verify_png` (``python -m
operator_policy verify IMAGE.png --policy policy.json``) says whether a PNG's record is genuine and matches its
pixels. A client cannot forge one (it lacks the key), move one to other pixels (the hash), or alter one (the
HMAC).

Imports neither ComfyUI nor torch, nor anything outside this package: the verify command runs from the pack's
folder with only numpy and Pillow.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
from dataclasses import dataclass

RECORD_KEY = "responsible_steering"      # the PNG text chunk (and the guards' ui key)
KEY_BYTES = 32
CLIENT_KEYS_DROPPED = ("prompt", RECORD_KEY)
"""extra_pnginfo keys a client may not send: they collide with the server's own records (compared casefolded)."""


class ProvenanceError(RuntimeError):
    """The provenance key cannot be read or made, or a record cannot be written."""


def canonical(record: dict) -> bytes:
    """The bytes an HMAC covers: the record without its "hmac", as sorted compact ASCII JSON."""
    return json.dumps({k: v for k, v in record.items() if k != "hmac"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"responsible-steering key id\n" + key).hexdigest()[:16]


def sign(record: dict, key: bytes) -> dict:
    """`record` with its key id and HMAC added."""
    record = {**record, "key_id": key_id(key)}
    return {**record, "hmac": hmac.new(key, canonical(record), hashlib.sha256).hexdigest()}


def signature_valid(record: dict, key: bytes) -> bool:
    expected = hmac.new(key, canonical(record), hashlib.sha256).hexdigest()
    return isinstance(record.get("hmac"), str) and hmac.compare_digest(expected, record["hmac"])


def pixels_sha256(pixels) -> str:
    """sha256 of an image's 8-bit pixels [H, W, C] (numpy uint8) with its shape: what a PNG decodes to."""
    import numpy as np

    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    h, w, c = array.shape
    return hashlib.sha256(f"{h}x{w}x{c}\n".encode() + array.tobytes()).hexdigest()


def quantized(image) -> "object":
    """One IMAGE [H, W, C] (torch, 0..1) as the 8-bit pixels ComfyUI's image savers write
    (nodes.py SaveImage: ``np.clip(255. * i.cpu().numpy(), 0, 255).astype(np.uint8)``)."""
    import numpy as np

    return np.clip(255. * image.cpu().numpy(), 0, 255).astype(np.uint8)


def load_or_create_key(path: str) -> bytes:
    """The server's secret at `path`, made (32 random bytes, mode 0600, written whole or not at all) when absent.
    A key file that is not a regular file of 32 bytes, or that others may read, is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        fd = None
    except OSError as e:
        raise ProvenanceError(f"provenance key {path}: cannot be created: {e.strerror}") from None
    if fd is not None:
        try:
            key = os.urandom(KEY_BYTES)
            if os.write(fd, key) != KEY_BYTES:
                raise ProvenanceError(f"provenance key {path}: short write")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.remove(path)
            raise
        os.close(fd)
        return key
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ProvenanceError(f"provenance key {path}: cannot be opened: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ProvenanceError(f"provenance key {path}: is not a regular file")
        if info.st_mode & 0o077:
            raise ProvenanceError(f"provenance key {path}: others may read it (mode {info.st_mode & 0o777:o}); "
                                  f"expected 600")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise ProvenanceError(f"provenance key {path}: holds {len(key)} bytes; expected {KEY_BYTES}")
    return key


class AuditLog:
    """Append-only JSON Lines: the file is opened with O_APPEND once, and every record is one write."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                              | getattr(os, "O_NONBLOCK", 0), 0o600)
        except OSError as e:
            raise ProvenanceError(f"audit log {path}: cannot be opened for appending: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise ProvenanceError(f"audit log {path}: is not a regular file")
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()
        with self.lock:
            written = os.write(self.fd, line)
        if written != len(line):
            raise ProvenanceError(f"audit log {self.path}: short write ({written} of {len(line)} bytes)")


def scrub_client_pnginfo(extra_pnginfo: dict) -> list[str]:
    """Drop the client's extra_pnginfo keys that would sit beside the server's records; returns them."""
    dropped = [k for k in extra_pnginfo if not isinstance(k, str) or k.casefold() in CLIENT_KEYS_DROPPED]
    for k in dropped:
        del extra_pnginfo[k]
    return [str(k) for k in dropped]


# ---------------------------------------------------------------- checking a PNG

@dataclass
class Verification:
    genuine: bool
    reason: str
    record: dict | None = None


def verify_png(path: str, key: bytes) -> Verification:
    """Whether the PNG at `path` carries a record signed with `key` for exactly its pixels."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
            pixels = np.asarray(image)
            mode = image.mode
    except Exception as e:   # noqa: BLE001 - any unreadable file is "not genuine", with the reason
        return Verification(False, f"cannot be read as an image: {e}")
    if RECORD_KEY not in text:
        return Verification(False, f"no {RECORD_KEY} record in the file")
    try:
        document = json.loads(text[RECORD_KEY])
        records = [r for entries in document["outputs"].values() for r in entries]
    except (ValueError, KeyError, TypeError, AttributeError):
        return Verification(False, f"the {RECORD_KEY} record is not the server's format")
    if mode not in ("RGB", "RGBA"):
        return Verification(False, f"the image is {mode}; the server saves RGB or RGBA")
    digest = pixels_sha256(pixels)
    matching = [r for r in records if isinstance(r, dict) and r.get("pixels_sha256") == digest]
    if not matching:
        return Verification(False, "no record matches these pixels (the image was changed, or the record was "
                                   "copied from another image)")
    for record in matching:
        if record.get("key_id") != key_id(key):
            continue
        if signature_valid(record, key):
            return Verification(True, "genuine: signed by this server for these pixels", record)
    if all(r.get("key_id") != key_id(key) for r in matching):
        return Verification(False, "the record was signed with another key (another server, or a forgery)")
    return Verification(False, "the record's signature is not valid (it was altered or forged)")
