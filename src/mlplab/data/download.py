"""Downloads with a progress bar, bounded timeouts and a checksum before anything is kept.

A download is written to a temporary file beside its destination and renamed into place only
after its MD5 matches, so an interrupted or corrupted download never looks like data.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from mlplab._version import __version__
from mlplab.errors import DataError

#: seconds to wait for the connection and then for each read; a stalled server fails in tens of
#: seconds rather than hanging a run
TIMEOUT = 30.0
BLOCK = 1 << 20


class DownloadError(DataError):
    """A download failed (unreachable, timed out, truncated or wrong checksum)."""


def md5_of(path, block: int = BLOCK) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str, dest, md5: str | None, *, timeout: float = TIMEOUT, progress: bool = True, description: str | None = None
) -> Path:
    """Fetch ``url`` to ``dest`` and return ``dest``.

    ``md5``: the expected checksum (None skips the check). ``timeout`` bounds the connection and
    every read. ``progress`` shows a tqdm bar on stderr. Raises :class:`DownloadError` when the
    server is unreachable, the transfer stops early or the checksum differs; the partial file is
    deleted in every case.
    """
    # imported here, not at the top: urllib.request brings http.client and email (~18 ms), and
    # every `mlplab train` imports this module while few runs download anything
    import urllib.error
    import urllib.request

    from mlplab.display import progress_bar_class

    # Outside a notebook tqdm's text bar on stderr, as before; in a notebook its widget, or no
    # bar without ipywidgets (the text bar's carriage returns would pile up in the output).
    bar_class = progress_bar_class(tty=True)
    if bar_class is None:
        from tqdm import tqdm

        bar_class = tqdm

        progress = False

    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DownloadError(
            f"cannot write to {str(dest.parent)!r} to download {dest.name}: {exc.strerror or exc}"
        ) from None
    tmp = Path(tmp_name)
    kept = False
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"mlplab/{__version__}"})
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with bar_class(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=description or dest.name,
                        disable=not progress,
                        leave=True,
                    ) as bar:
                        while chunk := response.read(BLOCK):
                            out.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", None) or exc
                if isinstance(reason, TimeoutError):
                    reason = f"no answer within {timeout:g} s"
                raise DownloadError(f"downloading {url} failed: {reason}") from None
            except OSError as exc:
                raise DownloadError(
                    f"downloading {url} to {str(dest.parent)!r} failed: {exc.strerror or exc}"
                ) from None
        if total is not None and received != total:
            raise DownloadError(
                f"downloading {url} stopped after {received:,} of {total:,} bytes; deleted the partial file, try again"
            )
        got = digest.hexdigest()
        if md5 is not None and got != md5.lower():
            raise DownloadError(
                f"downloaded {url} but its MD5 is {got}, expected {md5}: the file is corrupted "
                f"or not the expected release; deleted it"
            )
        os.replace(tmp, dest)
        kept = True
        return dest
    finally:
        if not kept:
            try:
                tmp.unlink()
            except OSError:
                pass
