"""The reward-webhook URL allowlist: normalise a URL, then compare it with the entries.

A webhook reward may only POST to a URL on the operator's `--reward-url-allowlist`
(entries such as `http://127.0.0.1:9000/grade`). Comparing raw strings is not enough: the
HTTP client normalises a URL before it sends it (`/grade/../admin` goes out as `/admin`),
so the check has to look at the URL that is actually requested. This module

* parses a URL strictly and refuses anything ambiguous (the list is in `normalise_url`);
* normalises what is left: scheme and host in lower case, the default port filled in, the
  path's dot segments resolved (RFC 3986 `remove_dot_segments`);
* cross-checks the result against httpx, the client that sends the request:
  `httpx.URL(url)` must name the same scheme, host, port and raw path, and so must
  `httpx.URL` of the normalised string; any disagreement refuses the URL;
* matches paths on segment boundaries: the entry `/grade` allows `/grade` and `/grade/x`,
  not `/gradebook`; the entry `/grade/` allows `/grade/` and `/grade/x`, not `/grade`;
  an entry without a path (`https://grader.example.com`) allows every path on that origin.

`allowed_url(url, allowlist)` returns the normalised URL string to POST to (or None), so
the check and the request use the same string; `url_allowed` is its yes/no form.

What it does not do: no DNS lookups. Hosts compare as written (case-insensitively for
names): `localhost` and `127.0.0.1` are different entries, and an allowlisted hostname that
resolves somewhere unexpected (DNS rebinding, a changed record) is the operator's concern.
It does not follow redirects either; the caller must not (WebhookReward does not). The same
rules apply to allowlist entries: an entry that does not normalise never matches anything
(`invalid_entries` lists those, for a start-up check).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

# Printable ASCII without the space: anything else (controls, whitespace, DEL, non-ASCII)
# refuses the whole URL.
_PRINTABLE = re.compile(r"[\x21-\x7e]*")
# scheme "://" authority path; "?", "#", "\" and "%" were refused before this runs.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/]*)(?P<path>/.*)?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
# A path segment: RFC 3986 unreserved characters and sub-delims other than ";" (servers such
# as Tomcat read "..;" as ".."), plus ":". No "%", no "@".
_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:]*")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_\-]{0,61}[a-z0-9_])?")
# A label that WHATWG/inet_aton read as a number: decimal, or 0x-hex.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_IPV6_CHARS = re.compile(r"[0-9a-f:.]+")


@dataclass(frozen=True)
class NormalisedURL:
    """An http(s) URL in the one form this module compares and sends.

    `host` is lower case, without brackets for IPv6 (as `httpx.URL.host` gives it);
    `host_kind` is "name", "ipv4" or "ipv6"; `port` is always filled in; `path` starts
    with "/", has no dot segments, no empty segments (but may end in "/") and no escapes.
    """

    scheme: str
    host: str
    host_kind: str
    port: int
    path: str

    @property
    def origin(self) -> tuple[str, str, str, int]:
        return self.scheme, self.host_kind, self.host, self.port

    @property
    def url(self) -> str:
        """The URL string to send: the default port left out, IPv6 in brackets."""
        host = f"[{self.host}]" if self.host_kind == "ipv6" else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"

    def within(self, entry: NormalisedURL) -> bool:
        """Same origin as `entry`, and the path is the entry's path or below it."""
        if self.origin != entry.origin:
            return False
        if entry.path.endswith("/"):
            return self.path.startswith(entry.path)
        return self.path == entry.path or self.path.startswith(entry.path + "/")


def normalise_url(url: str) -> NormalisedURL | None:
    """The normalised form of an http(s) URL, or None when it is refused.

    Refused: anything not a str; longer than MAX_URL_LENGTH; any character outside
    printable ASCII (controls, whitespace, non-ASCII); any backslash; any "%" (no
    percent-escapes at all, so none of %2f, %5c, %2e, %25 ... can decode differently in
    the checker, the client and the server); a query or fragment, even an empty one
    (grader URLs need neither); a scheme other than http/https; userinfo (any "@" in the
    authority, even `http://:@host/`); an empty host; a host name that is not
    dot-separated labels of letters, digits, "-" and "_" (so no trailing dot, no empty
    label); a host whose last label is numeric unless it is a canonical dotted quad (no
    `2130706433`, `0177.0.0.1`, `0x7f.0.0.1`, `127.1`); an IPv6 literal not written in
    its compressed canonical form (`[::1]`, not `[0:0:0:0:0:0:0:1]`; hex digits in either
    case), with a zone, or IPv4-mapped (`[::ffff:7f00:1]` reaches 127.0.0.1); a port that
    is empty, not decimal, has a leading zero, or is outside 1..65535; an empty path
    segment other than a trailing one (`/a//b`); a path ending in a dot segment (`/a/b/..`
    is `/a/` to RFC 3986 but `/a` to httpx); ";" in the path, or any character other
    than RFC 3986 unreserved, sub-delims and ":"; dot segments that climb above the root
    (`/../x`, `/a/../../x`); and anything on which httpx's parse disagrees.

    Accepted and normalised: upper-case scheme and host (lower-cased), a missing port
    (the scheme's default), a missing path ("/"), and dot segments that stay at or below
    the root (`/grade/./x` is `/grade/x`, `/grade/../admin` is `/admin`).
    """
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        return None
    if not _PRINTABLE.fullmatch(url) or any(c in url for c in "\\%?#"):
        return None
    m = _URL.fullmatch(url)
    if m is None:
        return None
    scheme = m["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        return None
    hostport = _host_port(m["authority"], scheme)
    path = _resolve_path(m["path"] or "/")
    if hostport is None or path is None:
        return None
    host, kind, port = hostport
    normalised = NormalisedURL(scheme, host, kind, port, path)
    if not (_httpx_agrees(url, normalised) and _httpx_agrees(normalised.url, normalised)):
        return None
    return normalised


def allowed_url(url: str, allowlist: Iterable[str]) -> str | None:
    """The exact URL string to POST to when `url` is inside an allowlist entry, else None.

    Send this string, not `url`: it is the form that was checked.
    """
    got = normalise_url(url)
    if got is None or isinstance(allowlist, str):
        return None
    for entry in allowlist:
        want = normalise_url(entry)
        if want is not None and got.within(want):
            return got.url
    return None


def url_allowed(url: str, allowlist: list[str]) -> bool:
    """True when `url`, normalised, is inside an entry of `allowlist` (see the module)."""
    return allowed_url(url, allowlist) is not None


def invalid_entries(allowlist: Iterable[str]) -> list[str]:
    """The allowlist entries that do not normalise (and so can never match anything)."""
    return [entry for entry in allowlist if normalise_url(entry) is None]


def _host_port(authority: str, scheme: str) -> tuple[str, str, int] | None:
    """(host, kind, port) of an authority, or None when it is refused."""
    if "@" in authority:
        return None  # userinfo: "http://allowed@evil/" tricks, even an empty "@"
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, kind = _ipv6(authority[1:end]), "ipv6"
        rest = authority[end + 1 :]
    else:
        name = authority.split(":", 1)[0]
        rest = authority[len(name) :]
        host, kind = _name_or_ipv4(name.lower())
    if host is None:
        return None
    if not rest:
        return host, kind, DEFAULT_PORTS[scheme]
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
        return None  # "h:", "h:080", "h:x", "h:1:2", "[::1]x"
    port = int(rest[1:])
    return (host, kind, port) if port <= 65535 else None


def _ipv6(text: str) -> str | None:
    text = text.lower()
    if not _IPV6_CHARS.fullmatch(text):
        return None  # zones ("%25eth0") and IPvFuture ("v1.x") included
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if address.ipv4_mapped is not None or address.compressed != text:
        return None
    return text


def _name_or_ipv4(host: str) -> tuple[str | None, str]:
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # WHATWG parses such a host as an IPv4 address and so may a resolver (inet_aton):
        # only the canonical dotted quad is unambiguous.
        return (host if _DOTTED_QUAD.fullmatch(host) else None), "ipv4"
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None, "name"  # empty host, trailing dot, empty label, odd characters
    return host, "name"


def _resolve_path(path: str) -> str | None:
    """RFC 3986 remove_dot_segments, refusing what it would silently clamp or keep odd."""
    segments = path.split("/")[1:]  # path starts with "/"
    if "" in segments[:-1] or not all(_SEGMENT.fullmatch(s) for s in segments):
        return None  # "//" inside the path, ";", or a character outside the set
    if segments[-1] in (".", ".."):
        return None  # RFC 3986 makes "/a/b/.." "/a/", httpx makes it "/a": ambiguous
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if not out:
                return None  # climbs above the root
            out.pop()
        elif segment != ".":
            out.append(segment)
    return "/" + "/".join(out)


def _httpx_agrees(url: str, want: NormalisedURL) -> bool:
    """httpx, which sends the request, parses `url` to the same target as `want`."""
    import httpx

    try:
        got = httpx.URL(url)
        return (
            got.scheme == want.scheme
            and got.host.lower() == want.host
            and (got.port or DEFAULT_PORTS.get(got.scheme)) == want.port
            and got.raw_path == want.path.encode("ascii")
            and got.userinfo == b""
            and got.query == b""
            and got.fragment == ""
        )
    except Exception:  # any parse failure in the client refuses the URL: fail closed
        return False
