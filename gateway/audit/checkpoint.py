"""Checkpoints (C2SP tlog-checkpoint), Ed25519 signed notes (C2SP signed-note) and proofs (C2SP tlog-proof).

Formats are byte-compatible with golang.org/x/mod/sumdb/note, so the Go tooling and witnesses can check
our checkpoints. A checkpoint body is

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n[<extension line>\\n ...]

and a signed note is the body, one blank line, then lines `— <key name> <base64(key id || signature)>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.errors import BadSignature, InconsistentCheckpoint, MalformedNote, ProofInvalid
from gateway.audit.merkle import HASH_SIZE, MerkleTree, verify_consistency, verify_inclusion

ED25519_ALG = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100
TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,19})\Z")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedNote(f"{what} is not valid base64") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_key_name(name: str) -> None:
    """Key names are non-empty and hold no whitespace and no '+' (the key string separator)."""
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise MalformedNote(f"invalid key name {name!r}", hint="use a name without spaces or '+'")


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519_ALG]) + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A trusted public key under a name, as in a verifier key string `name+hexkeyid+base64(0x01||key)`."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def to_string(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([ED25519_ALG]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def parse_verifier_key(text: str) -> Verifier:
    """Parse `name+hexkeyid+base64(0x01||pubkey)`; the key ID must match the name and key."""
    parts = text.strip().split("+", 2)  # base64 may contain "+"
    if len(parts) != 3:
        raise MalformedNote("verifier key must look like name+keyid+base64key")
    name, hex_id, encoded = parts
    check_key_name(name)
    raw = _b64decode(encoded, "verifier key")
    if len(raw) != 33 or raw[0] != ED25519_ALG:
        raise MalformedNote("verifier key is not an Ed25519 (0x01) key")
    verifier = Verifier(name=name, public_key=raw[1:])
    if hex_id != verifier.key_id.hex():
        raise MalformedNote(f"verifier key {name}: key ID {hex_id} does not match the key")
    return verifier


def verifier_for(name: str, private_key: Ed25519PrivateKey) -> Verifier:
    check_key_name(name)
    return Verifier(name=name, public_key=public_key_bytes(private_key.public_key()))


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {_b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class SignedNote:
    """A parsed note: its text (ending in a newline) and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...] = field(default=())

    def to_string(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNote("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise MalformedNote("note text must not contain control characters other than newline")


def parse_note(note: str) -> SignedNote:
    """Split a signed note into text and signature lines (no cryptography here)."""
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNote("signed note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if not sig_block.endswith("\n"):
        raise MalformedNote("signed note must end with a newline")
    signatures: list[NoteSignature] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise MalformedNote("signature line must start with an em dash and a space")
        name, sep, encoded = line[len(SIG_PREFIX) :].partition(" ")
        if not sep:
            raise MalformedNote("signature line needs a key name and a signature")
        check_key_name(name)
        raw = _b64decode(encoded, "signature")
        if len(raw) < 5:
            raise MalformedNote("signature is too short")
        signatures.append(NoteSignature(name=name, key_id=raw[:4], signature=raw[4:]))
    if not signatures:
        raise MalformedNote("signed note has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise MalformedNote(f"signed note has more than {MAX_SIGNATURES} signatures")
    return SignedNote(text=text, signatures=tuple(signatures))


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Return `text` signed by one key, as a complete signed note."""
    _check_text(text)
    verifier = verifier_for(name, private_key)
    sig = NoteSignature(name, verifier.key_id, private_key.sign(text.encode("utf-8")))
    return SignedNote(text=text, signatures=(sig,)).to_string()


def add_signature(note: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Add one more signature (e.g. a second key during rotation) to a signed note."""
    parsed = parse_note(note)
    verifier = verifier_for(name, private_key)
    if any(s.name == name and s.key_id == verifier.key_id for s in parsed.signatures):
        raise MalformedNote(f"note is already signed by {name}")
    sig = NoteSignature(name, verifier.key_id, private_key.sign(parsed.text.encode("utf-8")))
    return SignedNote(text=parsed.text, signatures=(*parsed.signatures, sig)).to_string()


@dataclass(frozen=True)
class OpenedNote:
    text: str
    verified_by: tuple[str, ...]
    unverified: tuple[NoteSignature, ...]


def open_note(note: str, verifiers: Sequence[Verifier]) -> OpenedNote:
    """Verify a signed note: every signature by a known key must hold and at least one must exist.

    Signatures by unknown keys are returned as `unverified` (witness cosignatures, say), not trusted.
    """
    parsed = parse_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    message = parsed.text.encode("utf-8")
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    unverified: list[NoteSignature] = []
    for sig in parsed.signatures:
        ident = (sig.name, sig.key_id)
        verifier = known.get(ident)
        if verifier is None:
            unverified.append(sig)
            continue
        if ident in seen:
            raise MalformedNote(f"note carries two signatures by {sig.name}")
        seen.add(ident)
        if not verifier.verify(message, sig.signature):
            raise BadSignature(f"signature by {sig.name} ({sig.key_id.hex()}) does not verify")
        verified.append(sig.name)
    if not verified:
        raise BadSignature(
            "note has no signature by a trusted key",
            hint="pass the log's verifier key (aegress audit pubkey), including retired keys",
        )
    return OpenedNote(text=parsed.text, verified_by=tuple(verified), unverified=tuple(unverified))


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and its RFC 6962 root, plus optional extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The C2SP tlog-checkpoint text, which is what gets signed."""
        if not self.origin or "\n" in self.origin or not self.origin.isprintable():
            raise MalformedNote("checkpoint origin must be one non-empty printable line")
        if len(self.root) != HASH_SIZE or self.size < 0:
            raise MalformedNote("checkpoint needs a 32-byte root and a non-negative size")
        for line in self.extensions:
            if not line or "\n" in line or not line.isprintable():
                raise MalformedNote("checkpoint extension lines must be non-empty printable lines")
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text, not the signatures)."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedNote("checkpoint needs origin, size and root lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise MalformedNote("checkpoint origin is empty")
    if _DECIMAL.match(size_text) is None:
        raise MalformedNote("checkpoint size must be a decimal without leading zeros")
    root = _b64decode(root_text, "checkpoint root")
    if len(root) != HASH_SIZE:
        raise MalformedNote("checkpoint root must be 32 bytes")
    if any(not line for line in extensions):
        raise MalformedNote("checkpoint extension lines must not be empty")
    checkpoint = Checkpoint(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))
    if checkpoint.body() != text:
        raise MalformedNote("checkpoint is not in canonical form")
    return checkpoint


def open_checkpoint(note: str, verifiers: Sequence[Verifier], origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note and parse its body; refuse another log's checkpoint."""
    opened = open_note(note, verifiers)
    checkpoint = parse_checkpoint(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise MalformedNote(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint


def sign_checkpoint(
    checkpoint: Checkpoint,
    name: str,
    private_key: Ed25519PrivateKey,
    *,
    previous: Checkpoint | None,
    proof: Sequence[bytes] | None = None,
    tree: MerkleTree | None = None,
) -> str:
    """Sign `checkpoint`, but only if it extends `previous` (the last one signed for this log).

    Consistency is shown by `proof` (RFC 6962 from previous.size to checkpoint.size) or computed from
    `tree`, which must then also agree with the new root. Raises InconsistentCheckpoint otherwise: a log
    that signed two inconsistent heads has forked, and that must never come from us.
    """
    if tree is not None and (tree.size < checkpoint.size or tree.root(checkpoint.size) != checkpoint.root):
        raise InconsistentCheckpoint("checkpoint root does not match the log's Merkle tree")
    if previous is not None:
        if previous.origin != checkpoint.origin:
            raise InconsistentCheckpoint("previous checkpoint belongs to another log")
        if proof is None:
            if tree is None:
                raise InconsistentCheckpoint("pass a consistency proof or the tree to sign a later checkpoint")
            if previous.size > checkpoint.size:
                raise InconsistentCheckpoint("checkpoint is smaller than the previous one")
            proof = tree.consistency_proof(previous.size, checkpoint.size)
        try:
            verify_consistency(previous.size, checkpoint.size, previous.root, checkpoint.root, proof)
        except ProofInvalid as exc:
            raise InconsistentCheckpoint(
                f"checkpoint of size {checkpoint.size} is not consistent with the previous one "
                f"of size {previous.size}; refusing to sign",
                hint="the stored log no longer extends what was signed: run `aegress audit verify`",
            ) from exc
    return sign_note(checkpoint.body(), name, private_key)


@dataclass(frozen=True)
class TlogProof:
    """A C2SP tlog-proof: one entry's index, its inclusion proof and the signed checkpoint."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint_note: str
    extra: bytes | None = None

    def to_string(self) -> str:
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append(f"extra {_b64(self.extra)}")
        lines.append(f"index {self.index}")
        lines.extend(_b64(h) for h in self.hashes)
        return "\n".join(lines) + "\n\n" + self.checkpoint_note


def parse_tlog_proof(text: str) -> TlogProof:
    head, sep, checkpoint_note = text.partition("\n\n")
    if not sep:
        raise MalformedNote("tlog-proof has no blank line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise MalformedNote(f"tlog-proof must start with {TLOG_PROOF_HEADER}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = _b64decode(rest[0][len("extra ") :], "extra data")
        rest = rest[1:]
    if not rest or not rest[0].startswith("index ") or _DECIMAL.match(rest[0][len("index ") :]) is None:
        raise MalformedNote("tlog-proof needs an `index N` line")
    index = int(rest[0][len("index ") :])
    hashes = tuple(_b64decode(line, "proof hash") for line in rest[1:])
    if any(len(h) != HASH_SIZE for h in hashes):
        raise MalformedNote("tlog-proof hashes must be 32 bytes")
    return TlogProof(index=index, hashes=hashes, checkpoint_note=checkpoint_note, extra=extra)


def verify_tlog_proof(
    text: str, leaf: bytes, verifiers: Sequence[Verifier], origin: str | None = None
) -> Checkpoint:
    """Check a tlog-proof for the record whose leaf hash is `leaf`; return the checkpoint it reaches."""
    proof = parse_tlog_proof(text)
    checkpoint = open_checkpoint(proof.checkpoint_note, verifiers, origin)
    verify_inclusion(leaf, proof.index, checkpoint.size, proof.hashes, checkpoint.root)
    return checkpoint
