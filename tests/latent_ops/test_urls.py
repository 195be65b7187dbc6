"""The reward-webhook URL allowlist: normalisation, refusals, and agreement with httpx."""

import httpx
import pytest

from latent_ops.urls import (
    MAX_URL_LENGTH,
    NormalisedURL,
    allowed_url,
    invalid_entries,
    normalise_url,
    url_allowed,
)

ALLOW = [
    "http://127.0.0.1:9000/grade",
    "https://grader.example.com",  # no path: every path on that origin
    "http://[::1]:9001/v6/",  # an entry ending in "/"
    "http://localhost:8080/grade",
    "http://10.0.0.5/score",  # default port
]

POSITIVE = [
    # exact entries and sub-paths
    "http://127.0.0.1:9000/grade",
    "http://127.0.0.1:9000/grade/",
    "http://127.0.0.1:9000/grade/math",
    "http://127.0.0.1:9000/grade/math/v2",
    "https://grader.example.com",
    "https://grader.example.com/",
    "https://grader.example.com/anything/at/all",
    "http://[::1]:9001/v6/",
    "http://[::1]:9001/v6/x",
    "http://localhost:8080/grade",
    "http://10.0.0.5/score",
    # equivalent spellings
    "HTTP://127.0.0.1:9000/grade",
    "hTTp://127.0.0.1:9000/grade",
    "https://GRADER.Example.COM/x",
    "https://grader.example.com:443/x",
    "http://LOCALHOST:8080/grade",
    "http://10.0.0.5:80/score",
    "http://[::1]:9001/v6/y",
    # dot segments that resolve inside the entry
    "http://127.0.0.1:9000/grade/./x",
    "http://127.0.0.1:9000/./grade",
    "http://127.0.0.1:9000/grade/x/../y",
    "http://127.0.0.1:9000/other/../grade",
    "http://127.0.0.1:9000/grade/x/./",
    # characters a path may hold
    "http://127.0.0.1:9000/grade/a-b_c~d.e",
    "http://127.0.0.1:9000/grade/v1:score",
    "http://127.0.0.1:9000/grade/...",
]

NEGATIVE = [
    # dot segments
    "http://127.0.0.1:9000/grade/../admin",
    "http://127.0.0.1:9000/grade/x/../../admin",
    "http://127.0.0.1:9000/grade/%2e%2e/admin",
    "http://127.0.0.1:9000/grade/.%2e/admin",
    "http://127.0.0.1:9000/grade/%2E%2E/admin",
    "http://127.0.0.1:9000/grade/%2e/x",
    "http://127.0.0.1:9000/../grade",  # climbs above the root
    "http://127.0.0.1:9000/grade/../../grade",
    "http://127.0.0.1:9000/grade/x/..",  # trailing dot segment: RFC and httpx differ
    "http://127.0.0.1:9000/grade/.",
    "http://127.0.0.1:9000/grade/..;/admin",  # Tomcat path parameter
    "http://127.0.0.1:9000/grade;x",
    "http://127.0.0.1:9000/grade//x",  # empty segment
    "http://127.0.0.1:9000//grade",
    "http://127.0.0.1:9000/grade//../admin",
    # encoded slashes, backslashes and other escapes
    "http://127.0.0.1:9000/grade%2f..%2fadmin",
    "http://127.0.0.1:9000/grade%2F..%2Fadmin",
    "http://127.0.0.1:9000/grade%5c..%5cadmin",
    "http://127.0.0.1:9000/grade%5C..%5Cadmin",
    "http://127.0.0.1:9000/grade\\..\\admin",
    "http://127.0.0.1:9000\\grade",
    "http://127.0.0.1:9000/grade/%41",  # even an escape of an unreserved character
    "http://127.0.0.1:9000/grade/%252e%252e/admin",  # double encoding
    "http://127.0.0.1:9000/grade/%00",
    # missing segment boundary, other paths
    "http://127.0.0.1:9000/gradebook",
    "http://127.0.0.1:9000/grade-x",
    "http://127.0.0.1:9000/grad",
    "http://127.0.0.1:9000/",
    "http://127.0.0.1:9000",
    "http://127.0.0.1:9000/Grade",  # paths are case-sensitive
    "http://[::1]:9001/v6",  # the entry "/v6/" does not allow "/v6"
    "http://[::1]:9001/v6x/",
    # userinfo
    "http://127.0.0.1@evil.example/grade",
    "http://evil.example@127.0.0.1:9000/grade",
    "http://:@127.0.0.1:9000/grade",
    "http://@127.0.0.1:9000/grade",
    "http://user:pass@127.0.0.1:9000/grade",
    "https://grader.example.com@169.254.169.254/",
    "https://grader.example.com:443@169.254.169.254/",
    # IPv6
    "http://[0:0:0:0:0:0:0:1]:9001/v6/",
    "http://[0000::1]:9001/v6/",
    "http://[::0:1]:9001/v6/",
    "http://[::1%25lo]:9001/v6/",  # zone
    "http://[::ffff:127.0.0.1]:9000/grade",  # IPv4-mapped must not match the IPv4 entry
    "http://[::ffff:7f00:1]:9000/grade",
    "http://[::FFFF:127.0.0.1]:9000/grade",
    "http://[::127.0.0.1]:9000/grade",
    "http://[::1]:9000/grade",  # loopback under another address
    "http://[::1:9001/v6/",  # unclosed bracket
    "http://::1:9001/v6/",  # unbracketed
    "http://[v1.x]:9001/v6/",
    # numeric IPv4 spellings
    "http://2130706433:9000/grade",
    "http://0177.0.0.1:9000/grade",
    "http://0x7f.0.0.1:9000/grade",
    "http://0x7f000001:9000/grade",
    "http://127.1:9000/grade",
    "http://127.0.1:9000/grade",
    "http://127.000.000.001:9000/grade",
    "http://127.0.0.01:9000/grade",
    "http://127.0.0.1.:9000/grade",
    "http://127.0.0.256:9000/grade",
    "http://1.2.3.4.5:9000/grade",
    "http://0x:9000/grade",
    # host names
    "http://localhost.:8080/grade",  # trailing dot
    "http://localhost..:8080/grade",
    "http://.localhost:8080/grade",
    "http://local_host:8080/grade",  # another host
    "http://-localhost:8080/grade",
    "http://127.0.0.1:9000.evil.example/grade",
    "https://grader.example.com.evil.net/",
    "https://grader.example.com./",
    "http://localhost:9000/grade",  # loopback under another name: no DNS
    "http://169.254.169.254/latest/meta-data",
    # ports
    "http://127.0.0.1:9001/grade",
    "http://127.0.0.1:99999/grade",
    "http://127.0.0.1:65536/grade",
    "http://127.0.0.1:0/grade",
    "http://127.0.0.1:09000/grade",
    "http://127.0.0.1:/grade",
    "http://127.0.0.1:x/grade",
    "http://127.0.0.1:9000:9000/grade",
    "http://127.0.0.1:-9000/grade",
    "http://127.0.0.1:+9000/grade",
    "http://127.0.0.1: 9000/grade",
    "http://10.0.0.5:8080/score",
    "https://grader.example.com:8443/x",
    # schemes
    "https://127.0.0.1:9000/grade",  # https where the entry says http
    "http://grader.example.com/",  # http where the entry says https
    "file:///etc/passwd",
    "file://127.0.0.1:9000/grade",
    "ftp://127.0.0.1:9000/grade",
    "javascript:alert(1)",
    "javascript://127.0.0.1:9000/grade",
    "gopher://127.0.0.1:9000/grade",
    "ws://127.0.0.1:9000/grade",
    "http+unix://127.0.0.1:9000/grade",
    "http:/127.0.0.1:9000/grade",
    "http:127.0.0.1:9000/grade",
    "//127.0.0.1:9000/grade",
    "http:///grade",  # empty host
    "http://:9000/grade",
    # query and fragment: refused even when empty
    "http://127.0.0.1:9000/grade?x=1",
    "http://127.0.0.1:9000/grade?",
    "http://127.0.0.1:9000/grade#frag",
    "http://127.0.0.1:9000/grade#",
    "http://evil.example#@127.0.0.1:9000/grade",
    "http://evil.example?@127.0.0.1:9000/grade",
    # garbage
    "",
    " ",
    "not a url",
    " http://127.0.0.1:9000/grade",
    "http://127.0.0.1:9000/grade ",
    "http://127.0.0.1:9000/grade\n",
    "http://127.0.0.1:9000/gr\tade",
    "http://127.0.0.1:9000/grade/a b",
    "http://127.0.0.1:9000/grade/\x00",
    "http://127.0.0.1:9000/grade/\x7f",
    "http://127.0.0.1:9000/grade/é",
    "http://127.0.0.1:9000/grade/\u202e",
    "http://ｌｏｃａｌｈｏｓｔ:8080/grade",  # fullwidth letters NFKC-fold to "localhost"
    "http://127。0。0。1:9000/grade",  # ideographic full stops
    "https://grader.example.com/" + "a" * MAX_URL_LENGTH,
    'http://127.0.0.1:9000/grade/"<>',
    "http://127.0.0.1:9000/grade/{x}",
    "http://127.0.0.1:9000/grade/|",
    "http://127.0.0.1:9000/grade/`",
    "http://127.0.0.1:9000/grade/^",
    "http://127.0.0.1:9000/grade/[x]",
    "http://127.0.0.1:9000/grade/@x",
    "http://",
    "http://[",
    "http://[]/",
    "://127.0.0.1:9000/grade",
]


@pytest.mark.parametrize("url", POSITIVE)
def test_allowed(url):
    assert url_allowed(url, ALLOW) is True


@pytest.mark.parametrize("url", NEGATIVE)
def test_refused(url):
    assert url_allowed(url, ALLOW) is False
    assert allowed_url(url, ALLOW) is None


def _httpx_target(url):
    """(scheme, host, port, raw path) as httpx, which sends the request, reads `url`."""
    u = httpx.URL(url)
    port = u.port or {"http": 80, "https": 443}[u.scheme]
    return u.scheme, u.host.lower(), port, u.raw_path.decode("ascii")


def _inside(target, entry):
    """An independent segment-boundary check of an httpx target against an entry."""
    scheme, host, port, path = target
    e_scheme, e_host, e_port, e_path = _httpx_target(entry)
    if (scheme, host, port) != (e_scheme, e_host, e_port):
        return False
    if e_path.endswith("/"):
        return path.startswith(e_path)
    return path == e_path or path.startswith(e_path + "/")


@pytest.mark.parametrize("url", POSITIVE)
def test_httpx_sends_every_allowed_url_inside_the_allowlist(url):
    sent = allowed_url(url, ALLOW)
    assert sent is not None
    target = _httpx_target(url)
    assert any(_inside(target, entry) for entry in ALLOW)
    # the string to send names the same target, in plain form
    assert _httpx_target(sent) == target
    assert sent == str(httpx.URL(sent))
    assert "/./" not in target[3] and "/../" not in target[3]


def test_negative_cases_never_raise():
    odd = [None, 1, b"http://127.0.0.1:9000/grade", ["http://127.0.0.1:9000/grade"]]
    for url in NEGATIVE + odd:
        normalise_url(url)  # no exception, whatever the input
        assert url_allowed(url, ALLOW) is False
        assert allowed_url(url, ALLOW) is None


def test_the_dot_segment_url_targets_admin_and_is_refused():
    url = "http://127.0.0.1:9000/grade/../admin"
    assert httpx.URL(url).raw_path == b"/admin"  # what would actually be requested
    assert normalise_url(url).path == "/admin"
    assert not url_allowed(url, ALLOW)
    assert url_allowed(url, ["http://127.0.0.1:9000/admin"])  # checked as /admin


@pytest.mark.parametrize(
    "url, want",
    [
        ("HTTP://LocalHost/Grade", NormalisedURL("http", "localhost", "name", 80, "/Grade")),
        ("https://h.example", NormalisedURL("https", "h.example", "name", 443, "/")),
        ("http://h:80/a/./b/../c", NormalisedURL("http", "h", "name", 80, "/a/c")),
        ("http://10.1.2.3:8000/x/", NormalisedURL("http", "10.1.2.3", "ipv4", 8000, "/x/")),
        ("http://[2001:DB8::1]:81/", NormalisedURL("http", "2001:db8::1", "ipv6", 81, "/")),
    ],
)
def test_normalised_form(url, want):
    assert normalise_url(url) == want


@pytest.mark.parametrize(
    "url, sent",
    [
        ("HTTP://LocalHost:80/grade/./x", "http://localhost/grade/x"),
        ("https://Grader.example.com:443", "https://grader.example.com/"),
        ("http://[::1]:9001/v6/a/../b", "http://[::1]:9001/v6/b"),
        ("http://10.0.0.5:80/score", "http://10.0.0.5/score"),
    ],
)
def test_the_url_to_send_is_the_normalised_one(url, sent):
    allow = ALLOW + ["http://localhost/grade"]
    assert allowed_url(url, allow) == sent


def test_default_ports_are_equivalent_both_ways():
    for entry, url in [
        ("http://h/grade", "http://h:80/grade"),
        ("http://h:80/grade", "http://h/grade"),
        ("https://h/grade", "https://h:443/grade"),
        ("https://h:443/grade", "https://h/grade"),
    ]:
        assert url_allowed(url, [entry])
    assert not url_allowed("http://h:443/grade", ["https://h/grade"])
    assert not url_allowed("https://h:80/grade", ["http://h/grade"])


def test_segment_boundaries():
    assert url_allowed("http://h/grade", ["http://h/grade"])
    assert url_allowed("http://h/grade/x", ["http://h/grade"])
    assert not url_allowed("http://h/gradebook", ["http://h/grade"])
    assert url_allowed("http://h/grade/", ["http://h/grade/"])
    assert url_allowed("http://h/grade/x", ["http://h/grade/"])
    assert not url_allowed("http://h/grade", ["http://h/grade/"])
    assert not url_allowed("http://h/gradebook", ["http://h/grade/"])
    assert url_allowed("http://h/anything", ["http://h/"])
    assert url_allowed("http://h/anything", ["http://h"])


def test_ipv6_compares_by_canonical_form_and_not_with_ipv4():
    assert url_allowed("http://[::1]/x", ["http://[::1]/x"])
    assert url_allowed("http://[::ABCD]/x", ["http://[::abcd]/x"])  # hex case only
    assert not url_allowed("http://[0:0:0:0:0:0:0:1]/x", ["http://[::1]/x"])
    assert not url_allowed("http://[::1]/x", ["http://[0:0:0:0:0:0:0:1]/x"])  # bad entry
    assert not url_allowed("http://[::ffff:7f00:1]/x", ["http://127.0.0.1/x"])
    assert not url_allowed("http://127.0.0.1/x", ["http://[::ffff:7f00:1]/x"])
    assert normalise_url("http://[::ffff:127.0.0.1]/x") is None


def test_numeric_hosts_need_the_dotted_quad():
    for host in ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "017700000001", "0x7F.1"]:
        assert normalise_url(f"http://{host}/grade") is None, host
    assert normalise_url("http://127.0.0.1/grade").host_kind == "ipv4"
    assert normalise_url("http://0.0.0.0/grade").host == "0.0.0.0"
    assert normalise_url("http://1a.example/grade").host_kind == "name"


def test_invalid_entries_never_match_and_are_listed():
    bad = [
        "http://127.0.0.1:9000/grade?x=1",
        "http://localhost./grade",
        "http://user@127.0.0.1/grade",
        "http://127.1/grade",
        "ftp://127.0.0.1/grade",
        "http://127.0.0.1/grade/../admin/..",
        "",
    ]
    assert invalid_entries(bad + ALLOW) == bad
    assert invalid_entries(ALLOW) == []
    for url in POSITIVE:
        assert not url_allowed(url, bad)


def test_empty_or_odd_allowlists_allow_nothing():
    url = "http://127.0.0.1:9000/grade"
    assert not url_allowed(url, [])
    assert not url_allowed(url, "http://127.0.0.1:9000/grade")  # a string, not a list
    assert not url_allowed(url, [None, 5, ""])


def test_length_limit():
    base = "http://127.0.0.1:9000/grade/"
    ok = base + "a" * (MAX_URL_LENGTH - len(base))
    assert len(ok) == MAX_URL_LENGTH and url_allowed(ok, ALLOW)
    assert not url_allowed(ok + "a", ALLOW)
