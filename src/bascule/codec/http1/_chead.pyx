# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled twin of bascule.codec.http1.head: the same parsers, scanning bytes in C.

Rules of this module:
- Same signatures, verdicts, statuses, reasons and outputs as head.py, check for check and in
  the same order (tests/unit/test_http1_diff.py compares the two on generated heads). When
  head.py changes a rule, this file changes with it.
- The hot part runs in C over the buffer's own memory, every index below its length: finding
  the head, tokenising its lines, checking every byte against a table, the framing rules, an
  origin-form target, Connection tokens, the route host. The rare shapes (Transfer-Encoding
  lists, a bad Content-Length, absolute-form and `*` targets, non-ASCII hosts) call head.py's
  and rules.py's own functions, so their verdicts are the reference's by construction.
- Objects are made only for what the head returns: the name, lower-cased name and value of
  each field, and head.py's RequestHead/ResponseHead.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memchr, memcmp

from bascule.codec.http1.head import (
    MAX_EMPTY_LINES,
    MAX_METHOD,
    MAX_RESPONSE_FIELDS,
    MAX_RESPONSE_HEAD,
    METHODS,
    NOT_HOP_BY_HOP,
    Gathered,
    RequestHead,
    ResponseHead,
    finish_request,
    response_framing,
    route_host,
)
from bascule.codec.http1.rules import ProtocolError, parse_content_length, parse_transfer_encoding

cdef extern from "string.h":
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen)

cdef enum:  # rules.py's framing constants
    NO_BODY = 0
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3

# byte classes: 1 tchar, 2 vchar (target), 4 reason-phrase char, 8 a field-section CTL
cdef unsigned char CLASS[256]


cdef void _init_classes():
    cdef int c
    cdef bytes tchar = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for c in range(256):
        CLASS[c] = 0
    for c in tchar:
        CLASS[c] |= 1
    for c in range(0x21, 0x7F):
        CLASS[c] |= 2
    CLASS[9] |= 4
    for c in range(0x20, 0x7F):
        CLASS[c] |= 4
    for c in range(0x80, 0x100):
        CLASS[c] |= 4
    for c in range(0x20):
        if c != 9 and c != 10 and c != 13:
            CLASS[c] |= 8
    CLASS[0x7F] |= 8


_init_classes()



cdef inline bint _all(const unsigned char *p, Py_ssize_t a, Py_ssize_t b, unsigned char cls):
    cdef Py_ssize_t i
    for i in range(a, b):
        if not (CLASS[p[i]] & cls):
            return False
    return True


cdef inline Py_ssize_t _find_crlf(const unsigned char *p, Py_ssize_t a, Py_ssize_t n):
    """Offset of the first CRLF at or after `a`, or -1."""
    cdef const unsigned char *q
    while a < n - 1:
        q = <const unsigned char *>memchr(p + a, 13, <size_t>(n - 1 - a))
        if q == NULL:
            return -1
        a = q - p
        if p[a + 1] == 10:
            return a
        a += 1
    return -1


cdef inline Py_ssize_t _find_end(const unsigned char *p, Py_ssize_t a, Py_ssize_t n):
    """Offset of the first CRLFCRLF at or after `a`, or -1."""
    cdef const void *q
    if n - a < 4:
        return -1
    q = memmem(p + a, <size_t>(n - a), b"\r\n\r\n", 4)
    if q == NULL:
        return -1
    return <const unsigned char *>q - p


cdef inline bytes _bytes(const unsigned char *p, Py_ssize_t a, Py_ssize_t b):
    """buf[a:b] without a slice object."""
    return PyBytes_FromStringAndSize(<const char *>p + a, b - a)


cdef inline int _version(const unsigned char *p, Py_ssize_t a, Py_ssize_t b):
    """11 for HTTP/1.1, 10 for HTTP/1.0, 0 otherwise."""
    if b - a != 8 or memcmp(p + a, b"HTTP/1.", 7) != 0:
        return 0
    if p[a + 7] == 49:
        return 11
    if p[a + 7] == 48:
        return 10
    return 0


cdef inline bint _version_prefix(const unsigned char *p, Py_ssize_t a, Py_ssize_t b):
    cdef Py_ssize_t k = b - a
    if k > 8:
        return False
    return memcmp(p + a, b"HTTP/1.1", k) == 0 or memcmp(p + a, b"HTTP/1.0", k) == 0


cdef class _Line:
    cdef bytes method_raw
    cdef str method
    cdef bytes target
    cdef int version


cdef _Line _request_line(bytes buf, const unsigned char *p, Py_ssize_t a, Py_ssize_t b,
                         Py_ssize_t max_uri):
    """head.request_line over buf[a:b]."""
    cdef Py_ssize_t i, sp1 = -1, sp2 = -1, spaces = 0
    cdef int version
    for i in range(a, b):
        if p[i] == 32:
            spaces += 1
            if sp1 < 0:
                sp1 = i
            elif sp2 < 0:
                sp2 = i
    if spaces != 2 or sp1 == a or sp2 == sp1 + 1 or sp2 == b - 1:
        raise ProtocolError("malformed request line")
    if not _all(p, a, sp1, 1):
        raise ProtocolError("invalid method")
    if sp2 - sp1 - 1 > max_uri:
        raise ProtocolError("request target too long", 414)
    if not _all(p, sp1 + 1, sp2, 2):
        raise ProtocolError("invalid request target")
    version = _version(p, sp2 + 1, b)
    if version == 0:
        raise ProtocolError("unsupported HTTP version")
    if sp1 - a == 7 and memcmp(p + a, b"CONNECT", 7) == 0:
        raise ProtocolError("CONNECT is not supported by a reverse proxy", 501)
    cdef bytes method_raw = _bytes(p, a, sp1)
    method = METHODS.get(method_raw)
    if method is None:
        raise ProtocolError("method not implemented", 501)
    cdef _Line line = _Line.__new__(_Line)
    line.method_raw = method_raw
    line.method = method
    line.target = _bytes(p, sp1 + 1, sp2)
    line.version = version
    return line


cdef void _check_partial_line(const unsigned char *p, Py_ssize_t a, Py_ssize_t b,
                              Py_ssize_t max_uri) except *:
    """head._check_partial_line over buf[a:b]."""
    cdef Py_ssize_t i, sp = -1, sp2 = -1
    if b > a and p[b - 1] == 13:
        b -= 1
    for i in range(a, b):
        if p[i] == 13 or p[i] == 10:
            raise ProtocolError("bare CR or LF in the head")
    for i in range(a, b):
        if p[i] == 32:
            sp = i
            break
    if sp < 0:
        if not _all(p, a, b, 1):
            raise ProtocolError("invalid method")
        if b - a > MAX_METHOD:
            raise ProtocolError("method not implemented", 501)
        return
    if not _all(p, a, sp, 1):
        raise ProtocolError("invalid method")
    if sp == a:
        raise ProtocolError("malformed request line")
    for i in range(sp + 1, b):
        if p[i] == 32:
            sp2 = i
            break
    cdef Py_ssize_t tend = b if sp2 < 0 else sp2
    if tend - sp - 1 > max_uri:
        raise ProtocolError("request target too long", 414)
    if not _all(p, sp + 1, tend, 2):
        raise ProtocolError("invalid request target")
    if sp2 >= 0 and not _version_prefix(p, sp2 + 1, b):
        raise ProtocolError("unsupported HTTP version")


cdef void _check_section(const unsigned char *p, Py_ssize_t a, Py_ssize_t b, Py_ssize_t max_size,
                         Py_ssize_t max_fields, int status, int bad, bint partial) except *:
    """head.check_section over buf[a:b], in one pass."""
    cdef Py_ssize_t i = a, crlf = 0
    cdef bint bare = False, ctl = False
    cdef unsigned char c
    while i < b:
        c = p[i]
        if c == 13:
            if i + 1 < b and p[i + 1] == 10:
                crlf += 1
                i += 2
                continue
            if not (partial and i + 1 == b):
                bare = True
        elif c == 10:
            bare = True
        elif CLASS[c] & 8:
            ctl = True
        i += 1
    if partial:
        if b - a - 3 > max_size:
            raise ProtocolError("header fields too large", status)
        if crlf > max_fields:
            raise ProtocolError("too many header fields", status)
    else:
        if b - a > max_size:
            raise ProtocolError("header fields too large", status)
        if b > a and crlf + 1 > max_fields:
            raise ProtocolError("too many header fields", status)
    if bare:
        raise ProtocolError("bare CR or LF in the head", bad)
    if ctl:
        raise ProtocolError("control character in a header field", bad)


cdef inline bint _is(const unsigned char *low, Py_ssize_t n, const char *name, Py_ssize_t k):
    return n == k and memcmp(low, name, <size_t>k) == 0


cdef class _G:
    """head.Gathered, with C attributes: the fields the framing rules read."""
    cdef list hosts, lengths, codings, connection
    cdef bytes upgrade
    cdef bint expect_continue

    def __cinit__(self):
        self.hosts = []
        self.lengths = []
        self.codings = []
        self.connection = []
        self.upgrade = b""
        self.expect_continue = False

    cdef object as_gathered(self):
        g = Gathered()
        g.hosts, g.lengths, g.codings, g.connection = (self.hosts, self.lengths, self.codings,
                                                        self.connection)
        g.upgrade, g.expect_continue = self.upgrade, self.expect_continue
        return g


cdef list _split_fields(bytes buf, const unsigned char *p, Py_ssize_t a, Py_ssize_t b, int status,
                        _G g):
    """head.split_fields over buf[a:b] (already vetted by _check_section)."""
    cdef list fields = []
    cdef Py_ssize_t i = a, e, colon, j, vs, ve, k
    cdef const unsigned char *q
    cdef bytes lname, name, value
    cdef char *low
    if a >= b:
        return fields
    while i <= b:
        e = _find_crlf(p, i, b)
        if e < 0:
            e = b
        if e == i:  # cannot happen after _check_section and the head search; never read past
            raise ProtocolError("field line without a colon", status)
        if p[i] == 32 or p[i] == 9:
            raise ProtocolError("obs-fold (a field line starting with whitespace)", status)
        q = <const unsigned char *>memchr(p + i, 58, <size_t>(e - i))
        if q == NULL:
            raise ProtocolError("field line without a colon", status)
        colon = q - p
        if colon == i or not _all(p, i, colon, 1):
            raise ProtocolError("invalid field name", status)
        vs = colon + 1
        ve = e
        while vs < ve and (p[vs] == 32 or p[vs] == 9):
            vs += 1
        while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
            ve -= 1
        k = colon - i
        name = _bytes(p, i, colon)
        lname = PyBytes_FromStringAndSize(NULL, k)
        low = PyBytes_AS_STRING(lname)
        for j in range(k):
            low[j] = p[i + j] + 32 if 65 <= p[i + j] <= 90 else p[i + j]
        value = _bytes(p, vs, ve)
        fields.append((lname, name, value))
        _gather(g, <const unsigned char *>low, k, value)
        i = e + 2
    return fields


cdef inline void _gather(_G g, const unsigned char *low, Py_ssize_t k, bytes value) except *:
    """head.Gathered.add."""
    if _is(low, k, b"host", 4):
        g.hosts.append(value)
    elif _is(low, k, b"content-length", 14):
        g.lengths.append(value)
    elif _is(low, k, b"transfer-encoding", 17):
        g.codings.append(value)
    elif _is(low, k, b"connection", 10):
        g.connection.append(value)
    elif _is(low, k, b"upgrade", 7):
        g.upgrade = value if not g.upgrade else g.upgrade + b", " + value
    elif _is(low, k, b"expect", 6) and value.lower() == b"100-continue":
        g.expect_continue = True


cdef frozenset _tokens(list values):
    """head.tokens_of: the comma-separated tokens, stripped and lower-cased."""
    cdef list out = []
    cdef bytes v, t
    cdef const unsigned char *p
    cdef const unsigned char *q
    cdef Py_ssize_t n, i, j, a, b, x
    cdef char *low
    if not values:
        return _NO_TOKENS
    for v in values:
        p = <const unsigned char *>PyBytes_AS_STRING(v)
        n = PyBytes_GET_SIZE(v)
        i = 0
        while i <= n:
            q = <const unsigned char *>memchr(p + i, 44, <size_t>(n - i)) if i < n else NULL
            j = n if q == NULL else q - p
            a = i
            b = j
            while a < b and (p[a] == 32 or p[a] == 9):
                a += 1
            while b > a and (p[b - 1] == 32 or p[b - 1] == 9):
                b -= 1
            if b > a:
                t = PyBytes_FromStringAndSize(NULL, b - a)
                low = PyBytes_AS_STRING(t)
                for x in range(b - a):
                    low[x] = p[a + x] + 32 if 65 <= p[a + x] <= 90 else p[a + x]
                out.append(t)
            i = j + 1
    return frozenset(out)


cdef frozenset _NO_TOKENS = frozenset()


cdef inline frozenset _hop(frozenset tokens):
    """head.hop_tokens."""
    if tokens and not tokens.isdisjoint(NOT_HOP_BY_HOP):
        return tokens - NOT_HOP_BY_HOP
    return tokens


cdef inline bint _keep_alive(bint v11, frozenset tokens):
    """head.keep_alive_of."""
    if b"close" in tokens:
        return False
    return v11 or b"keep-alive" in tokens


cdef str _route_host(bytes raw):
    """head.route_host, in C for ASCII hosts (str.lower() lower-cases Latin-1 letters too)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i, cut
    cdef char buf[256]
    if n == 0:
        return ""
    if n > 255:
        return route_host(raw)
    cut = n
    if p[0] == 91:  # "[": an IPv6 literal keeps its brackets
        cut = 0
        for i in range(n):
            if p[i] == 93:
                cut = i + 1
                break
    else:
        for i in range(n):
            if p[i] == 58:
                cut = i
                break
    for i in range(cut):
        if p[i] >= 128:
            return route_host(raw)
        buf[i] = p[i] + 32 if 65 <= p[i] <= 90 else p[i]
    return PyUnicode_DecodeLatin1(buf, cut, NULL)


cdef long long _content_length(list lengths) except -2:
    """One Content-Length of digits, read in C; anything else goes to rules.py for its verdict."""
    cdef bytes v
    cdef const unsigned char *p
    cdef Py_ssize_t n, i
    cdef long long x = 0
    if len(lengths) == 1:
        v = lengths[0]
        n = PyBytes_GET_SIZE(v)
        p = <const unsigned char *>PyBytes_AS_STRING(v)
        if 0 < n <= 18:
            for i in range(n):
                if not (48 <= p[i] <= 57):
                    break
                x = x * 10 + (p[i] - 48)
            else:
                return x
    return parse_content_length(lengths)


# ------------------------------------------------------------------ requests


def parse_request_head(bytes buf not None, limits):
    """The request head at the start of `buf`; None while it is incomplete."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t start = 0, pos, line_end, fields_start
    cdef Py_ssize_t max_uri = limits.max_uri
    while start + 1 < n and p[start] == 13 and p[start + 1] == 10:
        start += 2
        if start > 2 * MAX_EMPTY_LINES:
            raise ProtocolError("too many empty lines before the request line")
    pos = _find_end(p, start, n)
    if pos < 0:
        line_end = _find_crlf(p, start, n)
        if line_end < 0:
            _check_partial_line(p, start, n, max_uri)
            return None
        _request_line(buf, p, start, line_end, max_uri)
        _check_section(p, line_end + 2, n, limits.max_header_size, limits.max_headers, 431, 400,
                       True)
        return None
    line_end = _find_crlf(p, start, n)
    cdef _Line line = _request_line(buf, p, start, line_end, max_uri)
    fields_start = line_end + 2
    cdef Py_ssize_t section_end = pos if pos > line_end else fields_start
    _check_section(p, fields_start, section_end, limits.max_header_size, limits.max_headers, 431,
                   400, False)
    cdef _G g = _G()
    cdef list fields = _split_fields(buf, p, fields_start, section_end, 400, g)
    return _request(line, fields, g, limits, start, fields_start, pos + 4)


cdef _request(_Line line, list fields, _G g, limits, Py_ssize_t start, Py_ssize_t fields_start,
              Py_ssize_t end):
    """head._request: the framing rules, in the same order."""
    cdef list hosts = g.hosts, lengths = g.lengths, codings = g.codings
    cdef const unsigned char *q
    cdef bint v11 = line.version == 11
    cdef int framing = NO_BODY
    cdef long long content_length = -1
    if len(hosts) > 1:
        raise ProtocolError("more than one Host header")
    if not hosts and v11:
        raise ProtocolError("HTTP/1.1 request without Host")
    if codings:
        if lengths:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        if not v11:
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        parse_transfer_encoding(codings)
        framing = CHUNKED
    elif lengths:
        content_length = _content_length(lengths)
        if content_length:
            framing = LENGTH
            limit = limits.max_request_body
            if limit and content_length > limit:
                raise ProtocolError("request body too large", 413)
    cdef bytes target = line.target
    cdef const unsigned char *t = <const unsigned char *>PyBytes_AS_STRING(target)
    cdef Py_ssize_t tn = PyBytes_GET_SIZE(target), qi
    version = "1.1" if v11 else "1.0"
    if t[0] != 47:  # not origin-form: head.finish_request has the rules for the others
        return finish_request(line.method_raw, line.method, target, version, fields,
                              g.as_gathered(), framing, content_length, start, fields_start, end)
    q = <const unsigned char *>memchr(t, 63, <size_t>tn)
    qi = tn if q == NULL else q - t
    tokens = _tokens(g.connection)
    host_raw = hosts[0] if hosts else b""
    return RequestHead(
        line.method_raw, line.method, target, PyUnicode_DecodeLatin1(<const char *>t, qi, NULL),
        PyUnicode_DecodeLatin1(<const char *>t + qi + 1, tn - qi - 1, NULL) if qi < tn else "",
        version, fields, _route_host(host_raw), host_raw, framing, content_length,
        _keep_alive(v11, tokens), g.expect_continue, g.upgrade, _hop(tokens), False, start,
        fields_start, end,
    )


# ------------------------------------------------------------------ responses


cdef tuple _status_line(bytes buf, const unsigned char *p, Py_ssize_t a, Py_ssize_t b):
    """head.status_line over buf[a:b]: (status, reason, version)."""
    cdef int version = _version(p, a, a + 8) if b - a >= 8 else 0
    cdef int status
    if version == 0 or b - a < 9 or p[a + 8] != 32:
        raise ProtocolError("malformed status line", 502)
    if (b - a < 12 or not (48 <= p[a + 9] <= 57 and 48 <= p[a + 10] <= 57
                           and 48 <= p[a + 11] <= 57) or p[a + 9] == 48):
        raise ProtocolError("malformed status line", 502)
    if b - a > 12 and p[a + 12] != 32:
        raise ProtocolError("malformed status line", 502)
    cdef Py_ssize_t rs = a + 13 if b - a > 13 else b
    if not _all(p, rs, b, 4):
        raise ProtocolError("malformed status line", 502)
    status = (p[a + 9] - 48) * 100 + (p[a + 10] - 48) * 10 + (p[a + 11] - 48)
    if status > 599:
        raise ProtocolError("status code out of range", 502)
    return status, _bytes(p, rs, b), "1.1" if version == 11 else "1.0"


cdef void _check_partial_status_line(bytes buf, const unsigned char *p, Py_ssize_t n,
                                     Py_ssize_t max_size) except *:
    cdef Py_ssize_t i
    if n > 0 and p[n - 1] == 13:
        n -= 1
    for i in range(n):
        if p[i] == 13 or p[i] == 10:
            raise ProtocolError("bare CR or LF in the head", 502)
    if n <= 8:
        if not _version_prefix(p, 0, n):
            raise ProtocolError("malformed status line", 502)
        return
    if n > max_size:
        raise ProtocolError("header fields too large", 502)
    cdef bytes line = buf[:n] if n > 12 else buf[:n] + b"200"[n - 9:]
    _status_line(line, <const unsigned char *>PyBytes_AS_STRING(line), 0, PyBytes_GET_SIZE(line))


def parse_response_head(bytes buf not None, str request_method not None,
                        Py_ssize_t max_size=MAX_RESPONSE_HEAD,
                        Py_ssize_t max_fields=MAX_RESPONSE_FIELDS):
    """The response head at the start of `buf`, framed for a request of `request_method`."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t pos = _find_end(p, 0, n)
    cdef Py_ssize_t line_end = _find_crlf(p, 0, n)
    if pos < 0:
        if line_end < 0:
            _check_partial_status_line(buf, p, n, max_size)
        else:
            _status_line(buf, p, 0, line_end)
            _check_section(p, line_end + 2, n, max_size, max_fields, 502, 502, True)
        return None
    status, reason, version = _status_line(buf, p, 0, line_end)
    cdef Py_ssize_t fields_start = line_end + 2
    cdef Py_ssize_t section_end = pos if pos > line_end else fields_start
    _check_section(p, fields_start, section_end, max_size, max_fields, 502, 502, False)
    cdef _G g = _G()
    cdef list fields = _split_fields(buf, p, fields_start, section_end, 502, g)
    return _response(status, reason, version, fields, g, request_method, fields_start, pos + 4)


cdef _response(int status, bytes reason, str version, list fields, _G g, str request_method,
               Py_ssize_t fields_start, Py_ssize_t end):
    """head.finish_response: framing for the request's method, in the same order."""
    cdef bint v11 = version == "1.1"
    framing, content_length = response_framing(g.as_gathered(), version, request_method, status)
    tokens = _tokens(g.connection)
    return ResponseHead(status, reason, version, fields, framing, content_length,
                        framing != UNTIL_CLOSE and _keep_alive(v11, tokens), _hop(tokens),
                        fields_start, end)
