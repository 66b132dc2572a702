"""Study storage on an object store (``--storage s3://...``, ``gs://...``), and the refusal of
node-local storage by a multi-node study.

Object stores. ``--storage`` may be a URI that ``pyarrow.fs.FileSystem.from_uri`` resolves
(``resolve``): ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``, and ``file://`` (and ``hdfs://``
where pyarrow finds a JVM). An S3-compatible server other than AWS is named in the URI's query,
``s3://bucket/studies?endpoint_override=HOST:PORT&scheme=http`` (pyarrow also takes ``region``,
``allow_bucket_creation``, ``tls_verify_certificates`` there, nothing else), or by the AWS SDK's
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` variables, which pyarrow 26 honours (checked
against a local server). Ray gets the URI itself as ``storage_path``: Tune and Train resolve it
with the same ``from_uri`` and write trials' checkpoints and state straight to the store. What
the driver reads and writes as plain files (run folders, results Parquet, status markers, the
baseline cache) lives in a local staging copy, a ``Mirror``: the driver pulls the study's
folder and the baseline cache entries it needs before it starts, and pushes after each
experiment and at the end; a baseline actor pushes its own cache entry when it finishes.
``join`` appends folders to a URI before its query (``os.path.join`` would append them to the
query). ``check_access`` writes, reads back and deletes a probe object, so that a wrong
endpoint, a missing bucket or a read-only bucket fails in one line before Ray starts.

Credentials come from pyarrow's usual chains, never from the URI's text alone: for ``s3://``
the AWS SDK's (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` with ``~/.aws/credentials`` and ``~/.aws/config``, web identity, then the
instance or pod role); for ``gs://`` Google's application default credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the metadata
server). A URI's ``user:secret@`` part is blanked in every message.

Mirror. ``pull(prefix)`` copies the objects under ``<uri>/<prefix>`` into
``<staging>/<prefix>``, ``push(prefix)`` the files under ``<staging>/<prefix>`` to the store;
both skip what is in sync and return the number of files copied. A JSON manifest in the staging
folder records, per file, the local (size, mtime) and the remote (size, mtime) of its last copy:
pull copies an object that is missing locally or changed remotely since then, push a file that
is missing remotely or changed locally since then - so neither direction overwrites the other
side's newer copy with a stale one (a file changed on both sides: the copying side wins). A
remote rewrite with the same size in the same second as the recorded one (the stores' mtime
resolution) goes unseen by pull. Push never deletes a remote object. Each object is written
whole: S3 and GCS publish an object only when its upload completes, a ``file://`` target is
written to a temporary name and renamed, and pulled files are renamed into place locally, so a
reader never sees half a file. Files in the middle of an atomic write (``.NAME.tmp-XXXXXXXX``)
are not pushed. The staging folder defaults to ``$MTL_CACHE_DIR/storage/<sha256 of the URI>``
(``MTL_CACHE_DIR`` default ``~/.cache/mtl``).

Concurrency. The manifest is merged under an ``fcntl.flock`` on the staging folder, so a driver
and a baseline actor on one host may push at once. Across hosts there is no lock: an object
store has no ``flock``, and the baseline cache's per-entry lock (``<cache>/<hash>.lock``) only
guards the staging copy on one host. Two drivers on one bucket may therefore both train the
same baseline; each writes whole objects, so the entry holds one of the two (equivalent)
results, never a mix. Two drivers must not run the same study at once: they would both push
its status markers and results (the last push wins per file).

Node-local storage. A study on more than one node writes from every node, so a plain path must
name the same storage on all of them. ``node_local`` reads the file system type of the mount
holding a path from ``/proc/mounts`` (the longest matching mount point); ``check_shared``
refuses a path on a node-local type (ext4, xfs, overlay, tmpfs, ...) when the cluster has more
than one node, unless ``MTL_SHARED_STORAGE=1`` says the path is the same on every node (e.g. a
local mount point that every node bind-mounts from one server). Shared types (nfs, cifs, lustre,
gpfs, beegfs, ceph, glusterfs, 9p, every ``fuse.*`` such as s3fs, gcsfuse or EFS utils) and types
this module does not know pass: only a known node-local type is refused.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import re
import urllib.parse
import uuid
from typing import Dict, List, Optional, Tuple

import pyarrow.fs as pafs

from orchestrator.spec import SpecError
from trainables.atomic import atomic_write, write_json

__all__ = ["Mirror", "NODE_LOCAL_TYPES", "SHARED_ENV", "TUNE", "check_access", "check_shared", "default_staging",
           "is_uri", "join", "node_local", "resolve", "stage_study"]

SHARED_ENV = "MTL_SHARED_STORAGE"  # "1": a plain --storage path is the same storage on every node
NODE_LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "overlay", "tmpfs", "ramfs", "f2fs",
                              "jfs", "reiserfs", "vfat", "exfat", "ntfs", "ntfs3", "squashfs"})
MANIFEST = ".mtl-mirror.json"
_LOCK = ".mtl-mirror.lock"
_PROBE = ".mtl-access-probe"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_IN_FLIGHT = re.compile(r"^\..*\.tmp-[0-9a-f]{8}")  # trainables.atomic's temporary names
_LOCAL = pafs.LocalFileSystem()
_CREDENTIALS = ("give credentials that may read and write there: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE (~/.aws/credentials) or an instance role for s3://; GOOGLE_APPLICATION_CREDENTIALS "
                "or `gcloud auth application-default login` for gs://")
_FIXES = (  # (words in pyarrow's message, lower case; the fix to print)
    (("unrecognized filesystem type", "unexpected query parameter", "libjvm"),
     ("use s3://BUCKET/PREFIX or gs://BUCKET/PREFIX; the only S3 query parameters are endpoint_override=HOST:PORT, "
      "scheme=http|https, region, allow_bucket_creation, tls_verify_certificates")),
    (("no_such_bucket", "nosuchbucket", "bucket does not exist"), "create the bucket first, or fix its name"),
    (("network_connection", "could not connect", "curlcode", "resolve host", "timed out", "timeout"),
     ("check the endpoint (endpoint_override=HOST:PORT&scheme=http in the URI, or AWS_ENDPOINT_URL) and that "
      "the server is reachable")),
    (("access_denied", "accessdenied", "invalid_access_key_id", "signature_does_not_match", "expired_token",
      "credential", "forbidden", "unauthorized", "permission"), _CREDENTIALS),
)


def is_uri(storage: str) -> bool:
    """Whether ``--storage`` is a URI (``scheme://...``) rather than a filesystem path."""
    return bool(_SCHEME.match(storage))


def _redact(text: str, uri: str) -> str:
    """``text`` for messages: the ``user:secret@`` part of ``uri`` blanked wherever it occurs."""
    netloc = urllib.parse.urlsplit(uri).netloc
    return text.replace(netloc.rsplit("@", 1)[0] + "@", "***@") if "@" in netloc else text


def _error(uri: str, what: str, err: Exception) -> SpecError:
    text = _redact(str(err).strip().splitlines()[0], uri) if str(err).strip() else type(err).__name__
    fix = next((f for words, f in _FIXES if any(w in str(err).lower() for w in words)),
               "check the URI, the endpoint and the credentials")
    return SpecError(f"--storage {_redact(uri, uri)!r}: {what}: {text}; {fix}")


def resolve(uri: str) -> Tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path in it (no trailing ``/``) that ``uri`` names, as Ray
    resolves it; a ``SpecError`` naming ``--storage``, the URI and the fix when pyarrow cannot."""
    if not is_uri(uri):
        raise SpecError(f"--storage {_redact(uri, uri)!r}: not a URI; give SCHEME://BUCKET/PREFIX, "
                        "e.g. s3://my-bucket/studies")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # ArrowInvalid is a ValueError; OSError: e.g. a region lookup that failed
        raise _error(uri, "pyarrow cannot open it", err) from None
    if not path.strip("/") and not isinstance(fs, pafs.LocalFileSystem):
        raise SpecError(f"--storage {_redact(uri, uri)!r}: names no bucket; give SCHEME://BUCKET/PREFIX, "
                        "e.g. s3://my-bucket/studies")
    return fs, path.rstrip("/") or "/"


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended to its path, before any query (``s3://b/x?scheme=http``);
    a plain filesystem path is joined as ``os.path.join`` does."""
    if not is_uri(uri):
        return os.path.join(uri, *parts)
    split = urllib.parse.urlsplit(uri)
    path = "/".join([split.path.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")])
    return urllib.parse.urlunsplit(split._replace(path=path))


def _upload(fs: pafs.FileSystem, local: str, dest: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):  # a folder: write a temporary file, rename it over dest
        atomic_write(dest, lambda tmp: pafs.copy_files(local, tmp, source_filesystem=_LOCAL,
                                                        destination_filesystem=fs))
    else:  # an object store publishes the object only when its upload completes
        pafs.copy_files(local, dest, source_filesystem=_LOCAL, destination_filesystem=fs)


def check_access(uri: str) -> None:
    """Write, read back and delete a small probe object under ``uri``: a wrong endpoint, a missing
    bucket, missing credentials or a read-only bucket raise a one-line ``SpecError``."""
    fs, path = resolve(uri)
    probe = f"{path.rstrip('/')}/{_PROBE}-{uuid.uuid4().hex[:8]}"
    payload = f"mtl storage probe {probe}".encode()
    step = "cannot write a probe object"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(payload)
        step = "cannot read the probe object back"
        with fs.open_input_stream(probe) as src:
            back = src.read()
        step = "cannot delete the probe object (Tune deletes old checkpoints)"
        fs.delete_file(probe)
    except OSError as err:
        raise _error(uri, step, err) from None
    if back != payload:
        raise SpecError(f"--storage {_redact(uri, uri)!r}: the probe object read back differs from what was written "
                        f"({len(back)} bytes, not {len(payload)}); check the endpoint")


TUNE = "tune"  # <study>/tune: Tune's and Train's state, which Ray writes to the store itself (never staged)


def stage_study(storage: str, study: str) -> Tuple[str, Optional["Mirror"]]:
    """(the local folder that stands for ``storage``, its ``Mirror`` or None): a plain path as an
    absolute path; an object store checked (``check_access``) and the study's files (not Tune's)
    pulled into its staging folder, so what follows reads what the store holds."""
    if not is_uri(storage):
        return os.path.abspath(os.path.expanduser(storage)), None
    check_access(storage)
    mirror = Mirror(storage)
    mirror.pull(study, skip=(TUNE,))
    return mirror.staging, mirror


def default_staging(uri: str) -> str:
    """``$MTL_CACHE_DIR/storage/<sha256 of uri>`` (``MTL_CACHE_DIR`` default ``~/.cache/mtl``)."""
    root = os.path.expanduser(os.environ.get("MTL_CACHE_DIR", "~/.cache/mtl"))
    return os.path.join(root, "storage", hashlib.sha256(uri.encode()).hexdigest()[:16])


class Mirror:
    """A local staging copy of parts of the store at ``uri`` (see the module docstring).

    Args:
        uri: the ``--storage`` URI.
        staging_dir: the local copy's folder (None: ``default_staging(uri)``).
    """

    def __init__(self, uri: str, staging_dir: Optional[str] = None):
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.staging = os.path.abspath(os.path.expanduser(staging_dir or default_staging(uri)))

    def local_path(self, prefix: str = "") -> str:
        """The staging folder (or file) for ``prefix``, e.g. ``local_path(study)``."""
        return os.path.join(self.staging, *filter(None, self._prefix(prefix).split("/")))

    def pull(self, prefix: str = "", skip: Tuple[str, ...] = ()) -> int:
        """Copy the object ``<uri>/<prefix>``, or the objects under it, that are missing here or
        changed remotely since their last copy, into ``<staging>/<prefix>``; returns how many.
        ``skip``: folders under the prefix left out (e.g. the Tune state Ray keeps in the store)."""
        base = self._remote(prefix)
        skipped = tuple(posixpath.join(base, s.strip("/")) + "/" for s in skip)
        top = self.fs.get_file_info(base)
        infos = [top] if top.type == pafs.FileType.File else \
            self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        done: Dict[str, List[int]] = {}
        seen = self._manifest()
        try:
            for info in infos:
                if info.type != pafs.FileType.File or info.path.startswith(skipped):
                    continue
                rel = posixpath.relpath(info.path, self.root)
                local = os.path.join(self.staging, *rel.split("/"))
                remote = [info.size, info.mtime_ns]
                if os.path.isfile(local) and seen.get(rel, [None] * 4)[2:] == remote:
                    continue
                atomic_write(local, lambda tmp, src=info.path: pafs.copy_files(
                    src, tmp, source_filesystem=self.fs, destination_filesystem=_LOCAL))
                st = os.stat(local)
                done[rel] = [st.st_size, st.st_mtime_ns, *remote]
        finally:
            self._record(done)
        return len(done)

    def push(self, prefix: str = "", skip: Tuple[str, ...] = ()) -> int:
        """Upload the file ``<staging>/<prefix>``, or the files under it, that are missing remotely
        or changed here since their last copy; returns how many. Never deletes a remote object.
        ``skip``: folders under the prefix left out."""
        top = self.local_path(prefix)
        skipped = tuple(os.path.join(top, *s.strip("/").split("/")) + os.sep for s in skip)
        if os.path.isfile(top):
            files = [top]
        else:
            files = [os.path.join(folder, name) for folder, _, names in os.walk(top) for name in sorted(names)
                     if name not in (MANIFEST, _LOCK) and not _IN_FLIGHT.match(name)
                     and not os.path.join(folder, name).startswith(skipped)]
        selector = pafs.FileSelector(self._remote(prefix), recursive=True, allow_not_found=True)
        remote = {i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File}
        done: Dict[str, List[int]] = {}
        seen = self._manifest()
        try:
            for local in files:
                rel = os.path.relpath(local, self.staging).replace(os.sep, "/")
                dest = self._remote(rel)
                st = os.stat(local)  # before the upload: a file changed during it is pushed again next time
                if dest in remote and seen.get(rel, [None] * 4)[:2] == [st.st_size, st.st_mtime_ns]:
                    continue
                _upload(self.fs, local, dest)
                info = self.fs.get_file_info(dest)
                done[rel] = [st.st_size, st.st_mtime_ns, info.size, info.mtime_ns]
        finally:
            self._record(done)
        return len(done)

    @staticmethod
    def _prefix(prefix: str) -> str:
        prefix = prefix.strip("/")
        if ".." in prefix.split("/"):
            raise ValueError(f"Mirror prefix {prefix!r}: '..' is not allowed")
        return prefix

    def _remote(self, prefix: str) -> str:
        prefix = self._prefix(prefix)
        return posixpath.join(self.root, prefix) if prefix else self.root

    def _manifest(self) -> Dict[str, List[int]]:
        try:
            with open(os.path.join(self.staging, MANIFEST)) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {}

    def _record(self, done: Dict[str, List[int]]) -> None:
        """Merge ``done`` into the manifest under a lock (a driver and an actor may push at once)."""
        if not done:
            return
        os.makedirs(self.staging, exist_ok=True)
        with open(os.path.join(self.staging, _LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            write_json(os.path.join(self.staging, MANIFEST), {**self._manifest(), **done})


def _mounts(mounts: str) -> List[Tuple[str, str]]:
    """(mount point, fs type) per line of a ``/proc/mounts``-style file; [] when it is missing."""
    try:
        with open(mounts) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    octal = re.compile(r"\\([0-7]{3})")  # the kernel writes a space in a mount point as \040
    return [(octal.sub(lambda m: chr(int(m.group(1), 8)), f[1]), f[2]) for f in (ln.split() for ln in lines)
            if len(f) >= 3]


def node_local(path: str, mounts: str = "/proc/mounts") -> Optional[str]:
    """The file system type of the mount holding ``path`` when it is a node-local type
    (``NODE_LOCAL_TYPES``); None when it is shared, unknown, or ``mounts`` cannot be read."""
    path = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    best: Optional[Tuple[str, str]] = None
    for point, fstype in _mounts(mounts):  # a later mount on the same point hides an earlier one
        inside = point == "/" or path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best[1] if best and best[1] in NODE_LOCAL_TYPES else None


def check_shared(storage: str, nodes: int, mounts: str = "/proc/mounts") -> None:
    """Refuse (``SpecError``) a plain ``--storage`` path on node-local storage when the cluster
    has more than one node; URIs, one node, and ``MTL_SHARED_STORAGE=1`` pass."""
    if nodes <= 1 or is_uri(storage) or os.environ.get(SHARED_ENV) == "1":
        return
    fstype = node_local(storage, mounts)
    if fstype is not None:
        raise SpecError(
            f"--storage {storage!r} is on node-local storage ({fstype}) but the cluster has {nodes} nodes, "
            f"whose trials would write to {nodes} different folders; give an object-store URI "
            "(s3://BUCKET/PREFIX, gs://BUCKET/PREFIX), or a folder on a shared mount (NFS, EFS, Lustre) "
            f"that every node sees at the same path, or set {SHARED_ENV}=1 if this path is the same "
            "storage on every node")
