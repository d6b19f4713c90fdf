"""Where corpus files live: a local folder, or an object store that fsspec reaches (s3://, gs://, az://).

The one place that lists, stats and opens a corpus file, local or remote: the indexer (any executor),
the fingerprint check and the runtime's readers all go through it. A local file is a `Path`; an
object is an `ObjectPath` (``protocol://bucket/key``), which joins with ``/`` like a Path, so a corpus
root of either kind composes with the relative paths an index records. ``file://`` URLs are local
paths: an index of ``file:///data`` is the index of ``/data``.

Credentials and the endpoint come from the store's standard configuration (for S3 the AWS chain:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ...); mixtera
never takes them in a URL, and never writes them: indexes and plans record the URL only, and every
error is rebuilt from the error's kind (`StorageError`), not from the store's own message text.

Remote reads are bounded: botocore's standard retry mode (exponential backoff with jitter) with
short connect and read timeouts, so an unreachable endpoint is a clear error after seconds, never a
hang. fsspec itself is imported only when a URL is used.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mixtera.runtime.errors import CorpusError, PlanError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
_LOCAL_SCHEMES = frozenset({"file", "local"})
STREAM_BLOCK = 8 << 20  # sequential reads (indexing, frame-cache builds): few requests per object
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 4  # botocore "standard" retries: backoff 1, 2, 4 s (with jitter) between attempts
_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class StorageError(CorpusError):
    """An object store refused or could not answer (credentials, access, missing, unreachable)."""


class ObjectPath:
    """An object, or a prefix of objects, in a store: ``protocol://bucket/key``; ``/`` joins like Path."""

    __slots__ = ("protocol", "key")

    def __init__(self, protocol: str, key: str) -> None:
        self.protocol = protocol
        self.key = key.strip("/")  # "bucket/prefix/name", no leading or trailing "/"

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.key}"

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.protocol, posixpath.dirname(self.key) or self.bucket)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("/"))

    def __truediv__(self, relative: str) -> ObjectPath:
        return ObjectPath(self.protocol, f"{self.key}/{relative}")

    def relative_to(self, root: ObjectPath) -> str:
        if not self.is_relative_to(root):
            raise ValueError(f"{self} is not under {root}")
        return self.key[len(root.key) + 1 :]

    def is_relative_to(self, root: ObjectPath) -> bool:
        return self.protocol == root.protocol and self.key.startswith(root.key + "/")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.protocol, self.key) == (other.protocol, other.key)

    def __hash__(self) -> int:
        return hash((self.protocol, self.key))

    def __reduce__(self) -> tuple[Any, ...]:  # pickled into index workers and loader workers
        return (ObjectPath, (self.protocol, self.key))


CorpusPath = Path | ObjectPath


def is_url(value: str | Path) -> bool:
    return isinstance(value, str) and _URL.match(value) is not None


def corpus_location(value: str | Path | ObjectPath) -> CorpusPath:
    """A corpus path or URL as given: ``s3://b/k`` -> ObjectPath, ``file:///x`` -> Path('/x')."""
    if isinstance(value, (Path, ObjectPath)):
        return value
    match = _URL.match(value)
    if match is None:
        return Path(value)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme in _LOCAL_SCHEMES:
        return Path("/" + rest.lstrip("/"))
    host = rest.split("/", 1)[0]
    if "@" in host:
        raise StorageError(f"{scheme}://...@{host.split('@')[-1]}: credentials inside a URL are not accepted",
                           "drop them from the URL; set them in the environment (AWS_ACCESS_KEY_ID, "
                           "AWS_SECRET_ACCESS_KEY) or a profile (AWS_PROFILE)")
    if not host:
        raise StorageError(f"{value}: the URL names no bucket", f"write it as {scheme}://BUCKET/PREFIX")
    return ObjectPath(scheme, rest)


@dataclass(frozen=True, slots=True)
class FileStat:
    """What a listing says of a file: its size, and its version (mtime locally, the ETag remotely)."""

    size: int
    mtime_ns: int  # 0 for objects: a re-upload of the same bytes keeps its ETag, not its time
    etag: str | None  # None for local files


def stat(path: CorpusPath) -> FileStat:
    """Size and version of one corpus file; FileNotFoundError when it is missing."""
    if isinstance(path, Path):
        st = os.stat(path)
        return FileStat(st.st_size, st.st_mtime_ns, None)
    info = store(path).call(path, "info", path.url)
    if info.get("type") == "directory":
        raise FileNotFoundError(path.url)
    return _object_stat(info)


def _object_stat(info: dict[str, Any]) -> FileStat:
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("md5Hash")
    version = info.get("VersionId") or info.get("version_id")
    etag = str(tag).strip('"') if tag is not None else None
    if etag is not None and version:
        etag = f"{etag}@{version}"
    return FileStat(int(info["size"]), 0, etag)


def open_stream(path: CorpusPath, start: int = 0) -> BinaryIO:
    """A corpus file opened for one sequential read (indexing, hashing, frame-cache builds) from byte
    ``start`` on (a span of a large JSON lines file)."""
    if isinstance(path, Path):
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        f.seek(start)
        return f
    s = store(path)
    f = s.call(path, "open", path.url, "rb", block_size=STREAM_BLOCK, cache_type="readahead")
    f.seek(start)  # no request yet: the first read fetches from here
    return _Guarded(f, s, path)


class _Guarded:
    """A remote file object whose read errors become `StorageError`s naming the URL."""

    def __init__(self, f: Any, s: Store, path: ObjectPath) -> None:
        self._f, self._store, self._path = f, s, path

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except Exception as exc:  # noqa: BLE001 - translated (credentials, network) or re-raised
            raise self._store.error(exc, self._path) from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_objects(top: ObjectPath) -> tuple[list[tuple[ObjectPath, FileStat]], bool]:
    """Every object under ``top`` (a prefix) or ``top`` itself (an object), sorted by key; and whether
    ``top`` is a prefix (a folder) rather than one object."""
    s = store(top)
    try:
        info = s.call(top, "info", top.url)
    except FileNotFoundError:
        info = {"type": "directory"}  # an empty prefix: found below to hold nothing
    if info.get("type") != "directory":
        return [(top, _object_stat(info))], False
    found = s.call(top, "find", top.url, detail=True, withdirs=False)
    objects = []
    for key, meta in sorted(found.items()):
        obj = ObjectPath(top.protocol, _strip_protocol(key))
        if obj.is_relative_to(top) and meta.get("type", "file") == "file":
            objects.append((obj, _object_stat(meta)))
    if not objects:
        raise StorageError(f"{top}: no objects under this prefix",
                           "check the bucket and prefix (list it with your store's client), and the "
                           "endpoint (AWS_ENDPOINT_URL)")
    return objects, True


def _strip_protocol(key: str) -> str:
    match = _URL.match(key)
    return match.group(2) if match else key


def read_range(path: ObjectPath, start: int, end: int, etag: str | None) -> bytes:
    """Bytes ``[start, end)`` of an object in one ranged GET; refused when its ETag is not ``etag``."""
    return store(path).read_ranges(path, [(start, end)], etag)[0]


# ---- one store client per protocol and configuration ---------------------------------------------


class Store:
    """An fsspec filesystem with bounded retries and errors that name the URL and say what to check."""

    def __init__(self, protocol: str) -> None:
        import fsspec

        self.protocol = protocol
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            extra = "mixtera[s3]" if protocol in ("s3", "s3a") else f"the fsspec backend for {protocol}://"
            raise StorageError(f"{protocol}:// URLs need a filesystem package that is not installed ({exc})",
                               f"install {extra}") from None
        self.fs = cls(**_options(protocol), skip_instance_cache=True)
        if protocol in ("s3", "s3a"):
            self.fs.retries = 1  # s3fs retries its own error list on top of botocore's: one bound, botocore's
        self.endpoint = _endpoint(self.fs)

    def call(self, path: ObjectPath, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.fs, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every store error is translated or re-raised
            if method == "info" and _kind(exc)[0] == "missing":
                raise FileNotFoundError(path.url) from None  # stat's contract, like os.stat
            raise self.error(exc, path) from None

    def read_ranges(self, path: ObjectPath, ranges: list[tuple[int, int]], etag: str | None) -> list[bytes]:
        """Bytes of each ``[start, end)`` of one object, requested concurrently, one GET each."""
        try:
            if self.protocol in ("s3", "s3a"):
                from fsspec.asyn import sync

                return sync(self.fs.loop, _s3_ranges, self.fs, path, ranges, etag)
            return [self.fs.cat_file(path.url, start=a, end=b) for a, b in ranges]
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, path, etag=etag) from None

    def error(self, exc: BaseException, path: ObjectPath, *, etag: str | None = None) -> Exception:
        """The user-facing error for ``exc`` raised while reaching ``path`` (kinds, never raw text)."""
        if isinstance(exc, StorageError | PlanError):
            return exc
        kind, code = _kind(exc)
        where = f"{path.url} (endpoint {self.endpoint})"
        if kind == "changed":
            was = f"the plan recorded ETag {etag}" if etag else "it changed while being read"
            return PlanError(f"{path.url}: the object changed since indexing ({was}; the store holds "
                             "another version)", "re-run `mixtera index` on the corpus and `mixtera compile` "
                             "again")
        if kind == "credentials":
            return StorageError(f"{where}: no credentials found for the object store",
                                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile "
                                "in ~/.aws/credentials), in the environment of every process that reads it")
        if kind == "denied":
            return StorageError(f"{where}: access denied ({code})",
                                "check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and that they may "
                                "list and read this bucket and prefix")
        if kind == "no-bucket":
            return StorageError(f"{where}: the bucket {path.bucket!r} does not exist",
                                "check the bucket name and the endpoint (AWS_ENDPOINT_URL)")
        if kind == "missing":
            return StorageError(f"{where}: no such object or prefix",
                                "check the key; if the corpus changed, re-index it and recompile")
        if kind == "unreachable":
            return StorageError(f"{where}: the object store cannot be reached after {MAX_ATTEMPTS} attempts "
                                f"({type(exc).__name__})",
                                "check AWS_ENDPOINT_URL (or the profile's endpoint_url), the network and "
                                "that the store is up")
        return StorageError(f"{where}: the object store failed ({type(exc).__name__}: "
                            f"{redact(str(exc))[:300]})", "check the URL, the credentials and the endpoint")


async def _s3_ranges(
    fs: Any, path: ObjectPath, ranges: list[tuple[int, int]], etag: str | None
) -> list[bytes]:
    bucket, _, key = path.key.partition("/")
    match = {"IfMatch": f'"{etag.split("@")[0]}"'} if etag else {}
    version = {"VersionId": etag.split("@", 1)[1]} if etag and "@" in etag else {}

    async def get(a: int, b: int) -> bytes:
        if b <= a:
            return b""
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={a}-{b - 1}",
                                 **match, **version)
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    return list(await asyncio.gather(*(get(a, b) for a, b in ranges)))


def _options(protocol: str) -> dict[str, Any]:
    if protocol not in ("s3", "s3a"):
        return {}
    config = {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
              "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"}}
    # No listings cache: a re-index in the same process must see objects replaced since the last one.
    return {"config_kwargs": config, "use_listings_cache": False}


def _endpoint(fs: Any) -> str:
    url = getattr(fs, "client_kwargs", {}).get("endpoint_url") or getattr(fs, "endpoint_url", None)
    url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "default"
    return re.sub(r"//[^/@]*@", "//", str(url))  # never show a user:password part


def _kind(exc: BaseException) -> tuple[str, str]:
    """The error's kind (credentials, denied, no-bucket, missing, changed, unreachable, other) and code."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    names = {type(e).__name__ for e in chain}
    code = next((str(e.response.get("Error", {}).get("Code")) for e in chain
                 if isinstance(getattr(e, "response", None), dict)), "")
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return "credentials", code
    if code in ("PreconditionFailed", "412"):
        return "changed", code
    if code in ("NoSuchBucket",):
        return "no-bucket", code
    if code in ("NoSuchKey", "404") or any(isinstance(e, FileNotFoundError) for e in chain):
        return "missing", code or "404"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
                "InvalidToken", "ExpiredToken") or any(isinstance(e, PermissionError) for e in chain):
        return "denied", code or "403"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError",
                "ConnectionRefusedError", "ConnectionError"}:
        return "unreachable", code
    return "other", code


_STORES: dict[tuple[int, str, tuple[str | None, ...]], Store] = {}
_LOCK = threading.Lock()


def store(path: ObjectPath) -> Store:
    """The client for ``path``'s protocol under the current configuration (a new one when it changed,
    and in a forked loader worker: a client's event-loop thread does not survive the fork)."""
    key = (os.getpid(), path.protocol, tuple(os.environ.get(k) for k in _ENV))
    with _LOCK:
        s = _STORES.get(key)
        if s is None:
            s = _STORES[key] = Store(path.protocol)
        return s


def redact(text: str) -> str:
    """``text`` with the values of the credential variables of this environment masked."""
    for name in _SECRETS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
