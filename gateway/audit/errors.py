"""Audit error classes, specialising the project tree in gateway.errors.

    InvalidInput
    ├── InvalidRecord        invalid-record     a record or body that does not fit the evidence format
    ├── MalformedNote        malformed-note     a checkpoint, signed note, key string or proof that cannot be parsed
    └── UnsafeExportPath     unsafe-export-path an export target that is a symlink, or exists (without --force)
    CheckFailed (exit 3)
    ├── ProofInvalid         proof-invalid      an inclusion or consistency proof that does not verify
    ├── BadSignature         bad-signature      a note signature that does not verify, or no trusted signature
    ├── InconsistentCheckpoint inconsistent-checkpoint  refusing to sign a checkpoint that contradicts an earlier one
    ├── BundleRejected       bundle-rejected    `audit import`: the bundle does not verify (tampered, truncated,
    │                                           unsigned by a trusted key); nothing was written
    └── ImportConflict       import-fork, import-gap, import-other-deployment
                                                `audit import`: the bundle does not continue the target's log exactly
                                                (other bytes at a seq, a missing stretch, another origin prefix);
                                                nothing was written
    ConfigError
    └── KeyFileError         key-file           a signing key file that is unreadable, malformed or readable by others
"""

from __future__ import annotations

from gateway.errors import CheckFailed, ConfigError, InvalidInput


class InvalidRecord(InvalidInput):
    code = "invalid-record"


class MalformedNote(InvalidInput):
    code = "malformed-note"


class UnsafeExportPath(InvalidInput):
    code = "unsafe-export-path"


class ProofInvalid(CheckFailed):
    code = "proof-invalid"


class BadSignature(CheckFailed):
    code = "bad-signature"


class InconsistentCheckpoint(CheckFailed):
    code = "inconsistent-checkpoint"


class BundleRejected(CheckFailed):
    code = "bundle-rejected"


class ImportConflict(CheckFailed):
    """`code` says which: `import-fork` (the target holds other bytes, or another checkpoint root, where the
    bundle has its own), `import-gap` (records between the target's end and the bundle's start are missing),
    `import-other-deployment` (the target's logs have another origin prefix)."""

    code = "import-fork"


class KeyFileError(ConfigError):
    code = "key-file"
