"""Where shards live: a local folder, an http(s) URL, object storage through fsspec, or ``pipe:``.

A sharded source is named by a folder (or its ``index.json``) given as a path or a URL. Shard
URLs in ``index.json`` are relative to it. Remote shards are downloaded whole into a local cache
folder (wids' random access reads a local tar), each download written to a temporary name and
renamed, so a killed download never leaves a shard that looks complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlparse

#: Seconds an http(s) request may wait for the server before it fails with a clear error.
HTTP_TIMEOUT_S = 60.0


class ShardLocationError(OSError):
    """A shard or an index that cannot be read: names the location and the reason."""


def is_remote(location: str) -> bool:
    """True for a URL with a scheme other than ``file`` (and for ``pipe:`` commands)."""
    if location.startswith("pipe:"):
        return True
    scheme = urlparse(location).scheme
    return len(scheme) > 1 and scheme != "file"  # "C:" is a Windows drive, not a scheme


def local_path(location: str) -> Path:
    """The path of a local location (``file://`` URLs included)."""
    parsed = urlparse(location)
    return Path(parsed.path) if parsed.scheme == "file" else Path(location)


def join_location(base: str, relative: str) -> str:
    """``relative`` resolved against the folder location ``base`` (absolute ones kept)."""
    if is_remote(relative) or os.path.isabs(relative) or relative.startswith("file:"):
        return relative
    if is_remote(base):
        return base.rstrip("/") + "/" + relative
    return str(local_path(base) / relative)


def read_location(location: str) -> bytes:
    """The whole content of a small file (an ``index.json``) at a path or URL.

    Raises:
        ShardLocationError: missing, unreachable or unreadable; names the location.
    """
    try:
        if not is_remote(location):
            return local_path(location).read_bytes()
        if location.startswith("pipe:"):
            return subprocess.run(location[5:], shell=True, check=True, capture_output=True).stdout
        scheme = urlparse(location).scheme
        if scheme in ("http", "https"):
            with urllib.request.urlopen(location, timeout=HTTP_TIMEOUT_S) as response:
                return response.read()
        with _fsspec_open(location) as stream:
            return stream.read()
    except ShardLocationError:
        raise
    except (OSError, urllib.error.URLError, subprocess.CalledProcessError, ValueError) as exc:
        raise ShardLocationError(f"{location}: cannot read: {_reason(exc)}") from None


def download(location: str, local: str) -> None:
    """Copies the remote file ``location`` to the path ``local``, atomically.

    The signature is wids' download handler's (``download_and_open(..., handlers=...)``).

    Raises:
        ShardLocationError: the download failed; nothing is left at ``local``.
    """
    folder = os.path.dirname(local) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_into(location, out)
        os.replace(tmp, local)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, urllib.error.URLError, subprocess.CalledProcessError)):
            raise ShardLocationError(f"{location}: download failed: {_reason(exc)}") from None
        raise


def _copy_into(location: str, out: BinaryIO) -> None:
    if location.startswith("pipe:"):
        subprocess.run(location[5:], shell=True, check=True, stdout=out, stderr=subprocess.PIPE)
        return
    if urlparse(location).scheme in ("http", "https"):
        with urllib.request.urlopen(location, timeout=HTTP_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        return
    with _fsspec_open(location) as stream:
        shutil.copyfileobj(stream, out, length=1 << 20)


def _fsspec_open(location: str) -> BinaryIO:
    """Object storage (s3://, gs://, az://, ...) through fsspec and its protocol package."""
    try:
        import fsspec
    except ImportError:
        raise ShardLocationError(
            f"{location}: reading this scheme needs fsspec and its protocol package "
            "(e.g. pip install s3fs); a pipe: command works too (pipe:aws s3 cp URL -)"
        ) from None
    try:
        return fsspec.open(location, "rb").open()
    except (ImportError, ValueError) as exc:
        raise ShardLocationError(f"{location}: fsspec cannot open it: {exc}") from None


def cache_name(cache_dir: str | Path, location: str) -> str:
    """The cache file of a remote shard: its whole URL quoted, so that shards of the same name
    in different sets never collide."""
    return os.path.join(str(cache_dir), quote(location, safe="+-._"))


def default_cache_dir() -> Path:
    """``$REALSYNTH_SHARD_CACHE``, else ``~/.cache/realsynth/shards``."""
    env = os.environ.get("REALSYNTH_SHARD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "realsynth" / "shards"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, subprocess.CalledProcessError):
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"command exited {exc.returncode}" + (f": {err[-1]}" if err else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
