"""Evidence bundles: a directory that proves a tenant log offline, with no database and no network.

    manifest.json            canonical JSON: format, origin, start, size, files with SHA-256 and length
    records.jsonl            the exact record bytes, one per line, in seq order
    checkpoints/NNNNNN.note  signed checkpoints (C2SP signed notes), oldest first
    keys.txt                 verifier keys (name+keyid+base64), active and retired
    proofs/consistency.json  consistency proofs between successive checkpoints
    proofs/<seq>.tlog-proof  inclusion proofs (C2SP tlog-proof) for selected records
    README.md                the evidence format, so anyone can write a verifier

`build_bundle_files` is pure (bytes in, file contents out); `read_bundle` and `write_bundle` are the
only file I/O. The manifest is not signed: the signed checkpoints are what make a bundle trustworthy,
the manifest only lists what belongs and catches accidental damage.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from gateway.audit.canonical import canonicalize, parse_canonical
from gateway.audit.checkpoint import Verifier, parse_checkpoint, parse_note, parse_tlog_proof, parse_verifier_key
from gateway.audit.errors import InvalidRecord, MalformedNote, ProofInvalid, UnsafeExportPath
from gateway.audit.merkle import leaf_hash, verify_inclusion
from gateway.audit.verify import ConsistencyProof, Finding, LogStart, Problem, VerifyReport, verify_log

BUNDLE_FORMAT = "aegress-evidence-bundle/v1"
MANIFEST = "manifest.json"


def format_readme() -> str:
    """The bundle README: the evidence format document shipped with the package."""
    return resources.files("gateway.audit").joinpath("evidence-format.md").read_text(encoding="utf-8")


def _manifest(origin: str, start: LogStart | None, size: int, files: Mapping[str, bytes]) -> bytes:
    return canonicalize(
        {
            "format": BUNDLE_FORMAT,
            "origin": origin,
            "start": None
            if start is None
            else {"seq": start.seq, "prev": start.prev.hex(), "frontier": [h.hex() for h in start.frontier]},
            "size": size,
            "files": [
                {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for path, data in sorted(files.items())
            ],
        }
    )


def build_bundle_files(
    *,
    origin: str,
    records: Sequence[bytes],
    checkpoints: Sequence[str],
    verifier_keys: Sequence[str],
    consistency_proofs: Sequence[ConsistencyProof] = (),
    inclusion_proofs: Mapping[int, str] | None = None,
    start: LogStart | None = None,
) -> dict[str, bytes]:
    """All files of a bundle, path -> bytes, manifest included. `inclusion_proofs` maps seq -> tlog-proof."""
    files: dict[str, bytes] = {"records.jsonl": b"".join(r + b"\n" for r in records)}
    for index, note in enumerate(checkpoints):
        files[f"checkpoints/{index:06d}.note"] = note.encode("utf-8")
    files["keys.txt"] = "".join(k + "\n" for k in verifier_keys).encode("utf-8")
    files["proofs/consistency.json"] = canonicalize(
        [
            {
                "old_size": p.old_size,
                "new_size": p.new_size,
                "hashes": [base64.b64encode(h).decode("ascii") for h in p.hashes],
            }
            for p in consistency_proofs
        ]
    )
    for seq, text in (inclusion_proofs or {}).items():
        files[f"proofs/{seq}.tlog-proof"] = text.encode("utf-8")
    files["README.md"] = format_readme().encode("utf-8")
    size = (0 if start is None else start.seq) + len(records)
    files[MANIFEST] = _manifest(origin, start, size, files)
    return files


def _existing(path: Path, force: bool, what: str) -> os.stat_result | None:
    """The target's own status; refuse a symlink always and an existing target without `force`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeExportPath(f"{path} is a symbolic link; exports never write through one.",
                               hint="Choose another --out path.")
    if not force:
        raise UnsafeExportPath(f"{path} already exists.", hint="Choose another --out path, or pass --force to "
                               f"replace the {what}.")
    return st


def open_private(path: str | os.PathLike[str], *, force: bool = False) -> BinaryIO:
    """A new file only the owner can read (0600), never opened through a symlink (O_NOFOLLOW, O_EXCL);
    an existing regular file is replaced only with `force`. Exports hold the tenant's evidence."""
    target = Path(path)
    st = _existing(target, force, "file")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeExportPath(f"{target} exists and is not a regular file.", hint="Choose another --out path.")
        target.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(target, flags, 0o600), "wb")


def write_bundle(directory: str | os.PathLike[str], files: Mapping[str, bytes], *, force: bool = False) -> None:
    """Write bundle files into a new directory, 0700 with 0600 files (refuses to reuse one, so old files
    cannot linger; with `force`, an existing bundle directory is replaced, never anything else)."""
    root = Path(directory)
    st = _existing(root, force, "bundle")
    if st is not None:
        if not stat.S_ISDIR(st.st_mode) or not (root / MANIFEST).is_file():
            raise UnsafeExportPath(f"{root} exists and is not an evidence bundle; refusing to replace it.",
                                   hint="Choose another --out path.")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)  # exactly 0700 whatever the umask
    for path, data in files.items():
        target = root / path
        for parent in reversed(target.relative_to(root).parents[:-1]):
            (root / parent).mkdir(mode=0o700, exist_ok=True)
        with open_private(target) as handle:
            handle.write(data)


def create_bundle_dir(directory: str | os.PathLike[str], *, force: bool = False) -> Path:
    """A new, empty 0700 directory to write several bundles into (`audit export --all`); with `force`, an
    existing directory is replaced only when it holds nothing but bundle directories."""
    root = Path(directory)
    st = _existing(root, force, "directory of bundles")
    if st is not None:
        children = list(root.iterdir()) if stat.S_ISDIR(st.st_mode) else None
        if children is None or not all(c.is_dir() and not c.is_symlink() and (c / MANIFEST).is_file()
                                       for c in children):
            raise UnsafeExportPath(f"{root} exists and is not a directory of evidence bundles; refusing to replace "
                                   "it.", hint="Choose another --out path.")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    return root


def find_bundles(path: str | os.PathLike[str]) -> list[Path]:
    """The bundle at `path`, or the bundles directly inside it (what `audit export --all` writes), by name."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return [root]
    found = sorted(c for c in root.iterdir() if (c / MANIFEST).is_file()) if root.is_dir() else []
    if not found:
        raise InvalidRecord(f"{os.fspath(path)} is neither an evidence bundle nor a directory of bundles (no "
                            f"{MANIFEST})", hint="Give a directory written by `aegress audit export`.")
    return found


def read_bundle(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every regular file of a bundle directory, by relative POSIX path."""
    root = Path(directory)
    if not (root / MANIFEST).is_file():
        raise InvalidRecord(f"{os.fspath(directory)} is not an evidence bundle: no {MANIFEST}")
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


@dataclass(frozen=True)
class BundleReport:
    """The log verification plus what the bundle itself held: manifest problems and checked proofs."""

    log: VerifyReport
    finding: Finding | None
    inclusion_proofs_checked: int
    keys_from_bundle: bool

    @property
    def ok(self) -> bool:
        return self.finding is None

    def to_dict(self) -> dict[str, object]:
        body = self.log.to_dict()
        body.update(
            ok=self.ok,
            finding=None if self.finding is None else self.finding.to_dict(),
            inclusion_proofs_checked=self.inclusion_proofs_checked,
            keys_from_bundle=self.keys_from_bundle,
        )
        return body


def _manifest_finding(files: Mapping[str, bytes], manifest: Mapping[str, object]) -> Finding | None:
    listed = manifest.get("files")
    if manifest.get("format") != BUNDLE_FORMAT or not isinstance(listed, list):
        return Finding(Problem.MODIFIED, f"manifest is not a {BUNDLE_FORMAT} manifest")
    names: set[str] = set()
    for entry in listed:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str):
            return Finding(Problem.MODIFIED, "manifest lists a file without a path")
        names.add(path)
        data = files.get(path)
        if data is None:
            return Finding(Problem.TRUNCATED, f"bundle file {path} is missing")
        if hashlib.sha256(data).hexdigest() != entry.get("sha256") or len(data) != entry.get("bytes"):
            return Finding(Problem.MODIFIED, f"bundle file {path} does not match the manifest")
    extra = sorted(set(files) - names - {MANIFEST})
    if extra:
        return Finding(Problem.MODIFIED, f"bundle holds files the manifest does not list: {', '.join(extra)}")
    return None


def _split_records(data: bytes) -> list[bytes]:
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise InvalidRecord("records.jsonl must end with a newline")
    return data[:-1].split(b"\n")


def bundle_log(files: Mapping[str, bytes]) -> tuple[str, LogStart | None, list[bytes], list[str]]:
    """A bundle's origin, start (None: from seq 0), exact record bytes and checkpoint notes, as its files
    hold them: parsed, not verified (`verify_bundle_files` does that)."""
    manifest = parse_canonical(files[MANIFEST])
    if not isinstance(manifest, dict) or not isinstance(manifest.get("origin"), str):
        raise InvalidRecord("bundle manifest has no origin")
    start = None
    raw_start = manifest.get("start")
    if isinstance(raw_start, dict):
        start = LogStart(
            seq=int(raw_start["seq"]),
            prev=bytes.fromhex(str(raw_start["prev"])),
            frontier=tuple(bytes.fromhex(h) for h in raw_start["frontier"]),
        )
    records = _split_records(files.get("records.jsonl", b""))
    notes = [files[p].decode("utf-8") for p in sorted(files) if p.startswith("checkpoints/")]
    return manifest["origin"], start, records, notes


def bundle_keys(files: Mapping[str, bytes]) -> list[Verifier]:
    """The verifier keys in a bundle's keys.txt (none when it cannot be parsed: nothing then verifies)."""
    try:
        return [parse_verifier_key(line) for line in files.get("keys.txt", b"").decode("utf-8").splitlines()
                if line.strip()]
    except (MalformedNote, UnicodeDecodeError):
        return []


def verify_bundle_files(
    files: Mapping[str, bytes],
    *,
    verifiers: Sequence[Verifier] | None = None,
    against: Sequence[str] = (),
    final: bool = False,
) -> BundleReport:
    """Verify a bundle's contents. Without `verifiers` the bundle's own keys.txt is trusted (say so!).

    `against` adds checkpoints held elsewhere (a witness, an earlier export) that the log must match.
    """
    manifest = parse_canonical(files[MANIFEST])
    origin, start, records, notes = bundle_log(files)
    first = 0 if start is None else start.seq
    keys_from_bundle = verifiers is None
    if verifiers is None:
        verifiers = bundle_keys(files)
    proofs = [
        ConsistencyProof(
            old_size=p["old_size"], new_size=p["new_size"], hashes=tuple(base64.b64decode(h) for h in p["hashes"])
        )
        for p in parse_canonical(files.get("proofs/consistency.json", b"[]"))
    ]
    report = verify_log(
        [(first + i, r) for i, r in enumerate(records)],
        origin=origin,
        checkpoints=[*notes, *against],
        verifiers=verifiers,
        consistency_proofs=proofs,
        start=start,
        final=final,
    )
    finding = report.finding or _manifest_finding(files, manifest)
    checked = 0
    if finding is None:
        finding, checked = _check_inclusion_proofs(files, records, first, report)
    return BundleReport(
        log=report, finding=finding, inclusion_proofs_checked=checked, keys_from_bundle=keys_from_bundle
    )


def _check_inclusion_proofs(
    files: Mapping[str, bytes], records: Sequence[bytes], first: int, report: VerifyReport
) -> tuple[Finding | None, int]:
    """Each shipped tlog-proof must prove its record against one of the (already verified) checkpoints."""
    roots = {(c.size, c.root) for c in report.checkpoints}
    checked = 0
    for path in sorted(p for p in files if p.startswith("proofs/") and p.endswith(".tlog-proof")):
        try:
            proof = parse_tlog_proof(files[path].decode("utf-8"))
            # the note's signature was verified with the others; match it by (size, root)
            cp = parse_checkpoint(parse_note(proof.checkpoint_note).text)
            if (cp.size, cp.root) not in roots:
                raise ProofInvalid("its checkpoint is not one of the bundle's verified checkpoints")
            position = proof.index - first
            if not 0 <= position < len(records):
                raise ProofInvalid("it names a record outside the bundle")
            verify_inclusion(leaf_hash(records[position]), proof.index, cp.size, proof.hashes, cp.root)
        except (MalformedNote, ProofInvalid, UnicodeDecodeError) as exc:
            message = getattr(exc, "message", str(exc))
            return Finding(Problem.MODIFIED, f"inclusion proof {path} does not verify: {message}"), checked
        checked += 1
    return None, checked


def verify_bundle(
    directory: str | os.PathLike[str],
    *,
    verifiers: Sequence[Verifier] | None = None,
    against: Sequence[str] = (),
    final: bool = False,
) -> BundleReport:
    """Read and verify a bundle directory (what `aegress audit verify --bundle PATH` runs)."""
    return verify_bundle_files(read_bundle(directory), verifiers=verifiers, against=against, final=final)
