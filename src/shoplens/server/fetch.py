"""Fetching a photo by URL: only under allow-listed prefixes, bounded in size and time.

With no allow-list the server fetches nothing (no SSRF). A URL's path is
normalised before it is compared with the prefixes, and the normalised URL is
what is fetched: dot segments are removed (RFC 3986, section 5.2.4), and a
path with an encoded ``.``, ``/`` or ``\\`` (``%2e``, ``%2f``, ``%5c``), a
backslash, or a dot segment with parameters (``..;x``) is refused, since an
origin that decodes or normalises paths would serve it from outside the
prefix. Redirects are not followed (they could leave the allowed prefixes),
proxies from the environment are not used, and the download stops at the
size limit.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from ..errors import ShoplensError


class FetchRefused(ShoplensError):
    """The URL is not allowed (403)."""


class FetchFailed(ShoplensError):
    """The URL is allowed but the photo could not be fetched (422)."""


class FetchTooLarge(ShoplensError):
    """The photo at the URL is over the size limit (413)."""


#: Percent-encoded characters that a decoding origin would read as a dot segment or a separator.
_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def remove_dot_segments(path: str) -> str:
    """``path`` without ``.`` and ``..`` segments, as RFC 3986 (section 5.2.4) resolves them."""
    out: list[str] = []
    rest = path
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith(("./", "/./")):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../") or rest == "/..":
            rest = "/" + rest[4:]
            if out:
                out.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            end = rest.find("/", 1 if rest.startswith("/") else 0)
            segment, rest = (rest, "") if end < 0 else (rest[:end], rest[end:])
            out.append(segment)
    return "".join(out)


def normalise(url: str) -> str:
    """scheme://host[:port]/path?query with scheme and host lower-cased and the path's dot
    segments removed; refuses odd URLs and paths an origin could resolve elsewhere."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise FetchRefused(f"not a valid URL: {url!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise FetchRefused("only http:// and https:// URLs with a host can be fetched")
    if parts.username is not None or parts.password is not None:
        raise FetchRefused("URLs with user names or passwords are not fetched")
    if _ENCODED_SEPARATOR.search(parts.path) or "\\" in parts.path:
        raise FetchRefused("URLs whose path holds an encoded '.', '/' or '\\' (%2e, %2f, %5c) or a backslash are not fetched")
    path = remove_dot_segments(parts.path or "/")
    if any(segment.split(";", 1)[0] in (".", "..") for segment in path.split("/")):
        raise FetchRefused("URLs with a dot segment carrying parameters ('..;') are not fetched")
    host = parts.hostname.lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme.lower(), netloc, path or "/", parts.query, ""))


def allowed(url: str, prefixes: tuple[str, ...]) -> str:
    """The normalised URL if it lies under one of ``prefixes``; raises FetchRefused."""
    if not prefixes:
        raise FetchRefused("this server does not fetch URLs (no allow-list configured: start it with --allow-url PREFIX); upload the photo instead")
    target = normalise(url)
    for prefix in prefixes:
        p = normalise(prefix)
        if not p.endswith("/") and "?" not in p:
            p += "/"
        if target == p.rstrip("/") or target.startswith(p):
            return target
    raise FetchRefused("this URL is not under an allowed prefix")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def fetch(url: str, prefixes: tuple[str, ...], *, max_bytes: int, timeout: float) -> bytes:
    """The body at an allowed URL, at most ``max_bytes`` bytes."""
    target = allowed(url, prefixes)
    request = urllib.request.Request(target, headers={"User-Agent": "shoplens", "Accept": "image/*"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise FetchFailed(f"the URL answered HTTP {response.status}")
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise FetchTooLarge(f"the photo at the URL is {declared} bytes, over the limit of {max_bytes}")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise FetchFailed(f"the URL answered HTTP {err.code}" + (" (redirects are not followed)" if 300 <= err.code < 400 else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise FetchFailed(f"could not fetch the URL: {reason}") from None
    if len(data) > max_bytes:
        raise FetchTooLarge(f"the photo at the URL is over the limit of {max_bytes} bytes")
    return data
