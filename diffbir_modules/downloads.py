"""Finding the catalogue's weight files in ComfyUI's model folders, and fetching the missing ones.

Standard library only (urllib). A download goes to ``<file>.part`` in the first folder ComfyUI lists
for the file's model folder, resumes with an HTTP Range request after a cut connection (and in a later
run), is checked against the catalogue's size and sha256 where those are known, and is renamed into
place only when complete and correct. A checksum mismatch deletes the partial file.

Progress goes to ComfyUI's progress bar (``comfy.utils.ProgressBar``, the node's bar in the web UI)
and to a text line on stderr. When downloads are off (``DIFFBIR_NO_DOWNLOAD=1``, ``DIFFBIR_OFFLINE=1``
or ``HF_HUB_OFFLINE=1``) or fail, ``MissingWeightsError`` lists every missing file with its URL and
the folder to put it in.

Mirrors: ``DIFFBIR_WEIGHTS_URL_BASE=https://my.mirror/dir`` is tried first as ``<base>/<file name>``;
``DIFFBIR_HF_ENDPOINT`` (or Hugging Face's own ``HF_ENDPOINT``, e.g. https://hf-mirror.com) replaces
``https://huggingface.co`` in the catalogue URLs, with the original URL kept as a fallback. Every
file is verified the same way whatever server it came from.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from .weights import CATALOGUE, HF, WeightFile, entry

NO_DOWNLOAD_ENV = ("DIFFBIR_NO_DOWNLOAD", "DIFFBIR_OFFLINE", "HF_HUB_OFFLINE")
URL_BASE_ENV = "DIFFBIR_WEIGHTS_URL_BASE"
HF_ENDPOINT_ENV = ("DIFFBIR_HF_ENDPOINT", "HF_ENDPOINT")
USER_AGENT = "comfyui-diffbir-downloader/1 (+python urllib)"
CHUNK = 1 << 20
_FALSE = ("", "0", "false", "no", "off")

log = logging.getLogger("comfyui-diffbir")


class DownloadError(RuntimeError):
    """A file could not be downloaded (network, server, disk)."""


class ConnectError(DownloadError):
    """No connection to the server could be made (offline, DNS, refused)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes are not the published file; the partial file was deleted."""


class MissingWeightsError(FileNotFoundError):
    """Weight files are missing and could not be downloaded. The message lists, for each file, its
    name, size, URL and the folder to put it in, plus the reason (downloads off, or each error)."""

    def __init__(self, missing: list[WeightFile], reason: str, errors: dict[str, str] | None = None):
        self.missing = list(missing)
        self.reason = reason
        self.errors = dict(errors or {})
        super().__init__(self._message())

    def _message(self) -> str:
        n = len(self.missing)
        lines = [f"DiffBIR: {n} model file{'s are' if n != 1 else ' is'} missing ({self.reason}).",
                 "Download each file below and put it in the folder shown, then run the workflow again:"]
        for w in self.missing:
            lines.append(f"  - {w.filename} ({w.size_text()})")
            lines.append(f"      url:    {w.url}")
            for other in w.urls[1:]:
                lines.append(f"      or:     {other}")
            lines.append(f"      folder: {folder_for_message(w.folder)}   (ComfyUI model folder '{w.folder}')")
            if w.sha256:
                lines.append(f"      sha256: {w.sha256}")
            if w.key in self.errors:
                lines.append(f"      error:  {self.errors[w.key]}")
        return "\n".join(lines)


# -- settings ------------------------------------------------------------------------------------------
def downloads_allowed() -> tuple[bool, str]:
    """(allowed, why not). Any of NO_DOWNLOAD_ENV set to a true value turns downloads off."""
    for name in NO_DOWNLOAD_ENV:
        value = os.environ.get(name, "")
        if value.strip().lower() not in _FALSE:
            return False, f"downloads are turned off: {name}={value}"
    return True, ""


def candidate_urls(w: WeightFile) -> list[str]:
    """URLs to try for ``w``, in order: the mirror base, the HF endpoint replacement, the catalogue URLs."""
    urls = []
    base = os.environ.get(URL_BASE_ENV, "").strip()
    if base:
        urls.append(base.rstrip("/") + "/" + w.filename)
    endpoint = next((os.environ[n].strip().rstrip("/") for n in HF_ENDPOINT_ENV if os.environ.get(n, "").strip()), "")
    for url in w.urls:
        if endpoint and url.startswith(HF + "/") and endpoint != HF:
            urls.append(endpoint + url[len(HF):])
        urls.append(url)
    return list(dict.fromkeys(urls))


# -- where files live ------------------------------------------------------------------------------------
def _folder_paths():
    import folder_paths

    return folder_paths


def folder_for_message(folder: str) -> str:
    try:
        paths = _folder_paths().get_folder_paths(folder)
    except Exception:  # folder not registered (or ComfyUI not importable): say where it would be
        paths = []
    return paths[0] if paths else f"ComfyUI/models/{folder}"


def download_dir(folder: str) -> str:
    """The first folder ComfyUI lists for ``folder`` (models/<folder> unless extra_model_paths says
    otherwise); created if needed."""
    paths = _folder_paths().get_folder_paths(folder)
    if not paths:
        raise DownloadError(f"ComfyUI has no model folder '{folder}' registered")
    os.makedirs(paths[0], exist_ok=True)
    return paths[0]


def find(key_or_entry: str | WeightFile) -> str | None:
    """Full path of the file (or of one of its stand-ins) if it is in any of its model folder's paths."""
    w = entry(key_or_entry) if isinstance(key_or_entry, str) else key_or_entry
    fp = _folder_paths()
    for candidate in (w, *(CATALOGUE[k] for k in w.alternatives)):
        try:
            path = fp.get_full_path(candidate.folder, candidate.filename)
        except Exception:
            path = None
        if path and os.path.isfile(path):
            return path
    return None


def ensure(keys: Iterable[str | WeightFile], allow_download: bool = True, progress_factory: Callable | None = None,
           **download_options) -> dict[str, str]:
    """{key: path} of the files ``keys`` (catalogue keys or entries); missing ones are downloaded when
    allowed. Raises MissingWeightsError naming every file that is still missing. When no server can be
    reached for one file, the others are not tried (the machine is most likely offline)."""
    entries = list({w.key: w for w in (entry(k) if isinstance(k, str) else k for k in keys)}.values())
    found = {w.key: find(w) for w in entries}
    missing = [w for w in entries if found[w.key] is None]
    if not missing:
        return found
    allowed, why = downloads_allowed()
    if not allow_download:
        allowed, why = False, "downloads are turned off on the node (download_missing = false)"
    if not allowed:
        raise MissingWeightsError(missing, why)
    errors = {}
    offline = False
    for w in missing:
        if offline:
            errors[w.key] = "not tried: no server could be reached for the files before it"
            continue
        try:
            found[w.key] = fetch(w, progress_factory=progress_factory, **download_options)
        except ConnectError as error:
            errors[w.key] = str(error)
            offline = True
        except DownloadError as error:
            errors[w.key] = str(error)
    failed = [w for w in missing if w.key in errors]
    if failed:
        raise MissingWeightsError(failed, "the download failed", errors)
    return found


def missing_before_run(keys: Iterable[str | WeightFile], allow_download: bool = True,
                       switch: str = "download_missing") -> str | None:
    """For a loader's ``validate_inputs``: the message ``ensure`` would raise for ``keys`` when some
    are missing and downloads are off, else None. ComfyUI validates every node of a prompt before it
    runs any and reports all their errors together, so a workflow with several missing files lists
    them all at once instead of failing on one file per run. ``switch``: the node's download input,
    named in the message when it is off."""
    entries = list({w.key: w for w in (entry(k) if isinstance(k, str) else k for k in keys)}.values())
    missing = [w for w in entries if find(w) is None]
    if not missing:
        return None
    allowed, why = downloads_allowed()
    if not allow_download:
        allowed, why = False, f"downloads are turned off on the node ({switch} = false)"
    return None if allowed else str(MissingWeightsError(missing, why))


def fetch(w: WeightFile, directory: str | None = None, progress_factory: Callable | None = None,
          **download_options) -> str:
    """Downloads ``w`` into ``directory`` (default: its model folder), trying each candidate URL."""
    directory = directory or download_dir(w.folder)
    dest = os.path.join(directory, w.filename)
    errors = []
    connect_errors = 0
    urls = candidate_urls(w)
    for url in urls:
        progress = progress_factory(w) if progress_factory else TextAndBarProgress(w.filename)
        try:
            result = download(url, dest, sha256=w.sha256, size=w.size, progress=progress, **download_options)
        except ChecksumMismatchError as error:
            errors.append(f"{url}: {error} (expected value from {w.source or 'the catalogue'})")
            continue
        except ConnectError as error:
            errors.append(f"{url}: {error}")
            connect_errors += 1
            continue
        except DownloadError as error:
            errors.append(f"{url}: {error}")
            continue
        finally:
            progress.close()
        log.info("DiffBIR: downloaded %s to %s (%s)", w.filename, dest, result["verified"])
        return dest
    message = "; ".join(errors) or "no URL to download from"
    if urls and connect_errors == len(urls):
        raise ConnectError(message)
    raise DownloadError(message)


# -- the download itself -----------------------------------------------------------------------------------
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(os.path.abspath(path), threading.Lock())


def _check_interrupt():
    model_management = sys.modules.get("comfy.model_management")
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


def _hash_file(path: str, hasher) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            hasher.update(block)


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_from(response, start: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def download(url: str, dest: str, sha256: str | None = None, size: int | None = None, progress=None,
             timeout: float = 60.0, retries: int = 5, connect_retries: int = 2, backoff: float = 1.0) -> dict:
    """Downloads ``url`` to ``dest`` through ``dest + '.part'``, resuming an existing partial file and
    cut connections with Range requests. Verifies ``size`` and ``sha256`` when given; on a mismatch the
    partial file is deleted and ChecksumMismatchError raised. ``retries``: attempts after a connection that
    broke without progress; ``connect_retries``: attempts when no connection can be opened. Returns
    {"path", "sha256", "verified"} where verified is "sha256", "size" or "unverified"."""
    part = dest + ".part"
    with _lock_for(dest):
        failures = 0
        connect_failures = 0
        streamed_hash = None  # sha256 of the whole .part when the last pass hashed all of it
        while True:
            start = os.path.getsize(part) if os.path.exists(part) else 0
            if size is not None and start > size:
                os.remove(part)
                start = 0
            try:
                response = _open(url, start, timeout)
            except urllib.error.HTTPError as error:
                if error.code == 416 and start and (size is None or start == size):
                    break  # the partial file is already complete: verify it from disk
                if error.code == 416 and start:
                    os.remove(part)  # the server's file is shorter than ours: start over
                    continue
                raise DownloadError(f"HTTP {error.code} {error.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                connect_failures += 1
                if connect_failures > connect_retries:
                    reason = getattr(error, "reason", error)
                    raise ConnectError(f"cannot connect ({reason}); tried {connect_failures} times") from None
                time.sleep(backoff * connect_failures)
                continue
            connect_failures = 0
            hasher = hashlib.sha256()
            with response:
                if start and response.status == 206:
                    if not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                        os.remove(part)  # the server resumed somewhere else: start over
                        continue
                    _hash_file(part, hasher)
                    mode = "ab"
                else:
                    start, mode = 0, "wb"  # no Range support (200): the whole file again
                total = _total_from(response, start) or size
                _check_free_space(os.path.dirname(os.path.abspath(part)), (total or 0) - start)
                done = start
                if progress:
                    progress.start(total, done)
                try:
                    with open(part, mode) as f:
                        while True:
                            _check_interrupt()
                            block = response.read(CHUNK)
                            if not block:
                                break
                            f.write(block)
                            hasher.update(block)
                            done += len(block)
                            if progress:
                                progress.update(done)
                except (ConnectionError, TimeoutError, http.client.HTTPException) as error:
                    log.warning("DiffBIR: connection lost after %d bytes of %s (%s); resuming", done, url, error)
                except OSError as error:
                    raise DownloadError(f"cannot write {part}: {error}") from None
            if progress:
                progress.update(done, force=True)
            if total is not None and done < total:
                failures = failures + 1 if done == start else 1
                if failures > retries:
                    raise DownloadError(f"the connection kept breaking ({done} of {total} bytes); the partial "
                                        f"file {part} is kept and the next run resumes it")
                log.warning("DiffBIR: %s stopped at %d of %d bytes; resuming", url, done, total)
                time.sleep(backoff * min(failures, 3) * 0.2)
                continue
            streamed_hash = hasher.hexdigest()
            break
        # complete: verify, then move into place
        got_size = os.path.getsize(part)
        if size is not None and got_size != size:
            os.remove(part)
            raise ChecksumMismatchError(f"the download has {got_size} bytes, the published file {size}; "
                                        "the partial file was deleted")
        digest = streamed_hash
        if digest is None:
            h = hashlib.sha256()
            _hash_file(part, h)
            digest = h.hexdigest()
        if sha256 and digest.lower() != sha256.lower():
            os.remove(part)
            raise ChecksumMismatchError(f"sha256 of the download is {digest}, the published file's is {sha256}; "
                                        "the partial file was deleted")
        os.replace(part, dest)
        verified = "sha256" if sha256 else ("size" if size is not None else "unverified")
        return {"path": dest, "sha256": digest, "verified": verified}


def _check_free_space(directory: str, needed: int) -> None:
    if needed <= 0:
        return
    free = shutil.disk_usage(directory).free
    if free < needed + (64 << 20):
        raise DownloadError(f"not enough free disk space in {directory}: {needed / 1e9:.2f} GB needed, "
                            f"{free / 1e9:.2f} GB free")


# -- progress --------------------------------------------------------------------------------------------------
class TextAndBarProgress:
    """Progress of one download: ComfyUI's ProgressBar (the node's bar in the web UI) and a text line
    on stderr (rewritten in place on a terminal, one line per 10 % otherwise)."""

    def __init__(self, label: str, stream=None, min_interval: float = 0.5):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.total = None
        self.bar = None
        self._last = 0.0
        self._last_decile = -1
        self._t0 = time.monotonic()
        self._start = 0
        self._shown = False

    def start(self, total: int | None, done: int = 0):
        self.total, self._start, self._t0 = total, done, time.monotonic()
        utils = sys.modules.get("comfy.utils")
        if total and utils is not None and hasattr(utils, "ProgressBar"):
            self.bar = utils.ProgressBar(100)
        self.update(done, force=True)

    def update(self, done: int, force: bool = False):
        now = time.monotonic()
        if not force and now - self._last < self.min_interval and (self.total is None or done < self.total):
            return
        self._last = now
        percent = 100.0 * done / self.total if self.total else None
        if self.bar is not None and percent is not None:
            self.bar.update_absolute(int(percent), 100)
        rate = (done - self._start) / max(now - self._t0, 1e-6)
        text = f"DiffBIR: downloading {self.label}: {done / 2**20:.1f}"
        text += f"/{self.total / 2**20:.1f} MiB ({percent:.0f}%)" if percent is not None else " MiB"
        text += f" {rate / 2**20:.1f} MiB/s"
        try:
            if self.stream.isatty():
                self.stream.write("\r" + text)
                self._shown = True
            else:
                decile = int(percent // 10) if percent is not None else -1
                if decile != self._last_decile or (percent is None and force):
                    self._last_decile = decile
                    self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def close(self):
        if self._shown:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._shown = False
