"""Sealed evidence: canonical records, hash chains, Merkle trees, signed checkpoints and their verification.

Everything here is pure and store-independent (the SQLite and Postgres stores call it); the only I/O is
reading a key file's mode and bytes (`keys.load_signing_key`) and reading a bundle directory
(`bundle.read_bundle`). The byte-level format is specified in docs/evidence-format.md.
"""
