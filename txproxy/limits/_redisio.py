# -*- test-case-name: tests.test_redislimiter -*-
"""
Talking to Redis for L{txproxy.limits.redis.RedisLimiter}: the Lua scripts
(one atomic script per decision, with Redis's clock or, in tests, a given
one), the connection pool that fails fast instead of queueing while Redis
is away, and C{redis://} URL parsing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, List, Optional, Tuple, cast
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from txproxy.limits._decision import (
    EPSILON,
)

__all__ = ["RedisUnavailable"]


class RedisUnavailable(Exception):
    """
    No connection to Redis is open (it is down, or not yet reached).
    """


# ---------------------------------------------------------------------------
# Scripts

_NOW_FROM_REDIS = """\
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttlSlack = 0
"""

# Keys still expire in Redis's real time, which a test's fake clock does not
# follow: stretch every TTL so that no key vanishes before the fake time
# says it may.  (A key that outlives its TTL changes nothing: a stored
# time in the past reads as a full bucket, an expired lease is pruned.)
TEST_TTL_SLACK_MS = 60000

_NOW_FROM_ARGUMENT = f"""\
local now = tonumber(ARGV[#ARGV])
local ttlSlack = {TEST_TTL_SLACK_MS}
"""

_FORMAT = """\
local function fmt(x) return string.format('%.17g', x) end
"""

# Replies are status replies ({ok = ...}, "+..." on the wire), never bulk
# strings or arrays: txredisapi parses a bulk reply with more pipelined data
# behind it one reactor iteration at a time, which would cap throughput.
# Numbers travel as text (a Lua number would be truncated to an integer).

# KEYS[1] bucket; ARGV rate, burst, cost, want.  Returns "granted retryAfter".
_TAKE = """\
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local base = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local tat = tonumber(stored)
  if tat and tat > now then base = tat end
end
local available = burst - (base - now) * rate
if available + EPSILON < cost then
  return {ok = '0 ' .. fmt((cost - available) / rate)}
end
local grant = want
if grant > available then grant = cost + math.floor(available - cost + EPSILON) end
local tat = base + grant / rate
redis.call('SET', KEYS[1], fmt(tat), 'PX', math.max(1, math.ceil((tat - now) * 1000)) + ttlSlack)
return {ok = fmt(grant) .. ' 0'}
"""

# Keep a set's TTL at least ms milliseconds.
_EXTEND = """\
local function extend(key, ms)
  ms = ms + ttlSlack
  local left = redis.call('PTTL', key)
  if left < ms then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS[1] scope set, KEYS[2] client set; ARGV id, ttl, maxTotal, maxPerClient
# (0: no cap).  Returns 'ok' or the denial reason.
_ACQUIRE = """\
local ttl = tonumber(ARGV[2])
local maxTotal = tonumber(ARGV[3])
local maxPerClient = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
if maxPerClient > 0 and redis.call('ZCARD', KEYS[2]) >= maxPerClient then
  return {ok = 'max-conns-per-client'}
end
if maxTotal > 0 and redis.call('ZCARD', KEYS[1]) >= maxTotal then
  return {ok = 'max-conns'}
end
local expires = fmt(now + ttl)
local ms = math.ceil(ttl * 1000)
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
extend(KEYS[1], ms)
extend(KEYS[2], ms)
return {ok = 'ok'}
"""

# KEYS: (scope set, client set) pairs; ARGV ttl, then one id per pair.
_REFRESH = """\
local ttl = tonumber(ARGV[1])
local expires = fmt(now + ttl)
local ms = math.ceil(ttl * 1000)
for i = 1, #KEYS, 2 do
  local id = ARGV[(i + 1) / 2 + 1]
  redis.call('ZADD', KEYS[i], expires, id)
  redis.call('ZADD', KEYS[i + 1], expires, id)
  extend(KEYS[i], ms)
  extend(KEYS[i + 1], ms)
end
return {ok = 'ok'}
"""

# KEYS[1] scope set, KEYS[2] client set; ARGV id.
_RELEASE = """\
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {ok = 'ok'}
"""


class _Script:
    """
    A Lua script and its SHA1, as C{EVALSHA} wants it.
    """

    def __init__(self, name: str, body: str, overrideTime: bool) -> None:
        now = _NOW_FROM_ARGUMENT if overrideTime else _NOW_FROM_REDIS
        self.name = name
        self.source = (
            f"-- txproxy limiter: {name}\n" + _FORMAT + now + _EXTEND
            + body.replace("EPSILON", repr(EPSILON))
        )
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()


def _scripts(overrideTime: bool) -> Dict[str, _Script]:
    return {
        name: _Script(name, body, overrideTime)
        for name, body in (("take", _TAKE), ("acquire", _ACQUIRE), ("refresh", _REFRESH), ("release", _RELEASE))
    }


_PRODUCTION_SCRIPTS = _scripts(False)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


# ---------------------------------------------------------------------------
# Connections


def _startQuietly(factory: Any, endpoint: Any, onRetry: Callable[[], None]) -> None:
    """
    C{factory.startConnecting(endpoint)} without a log line per reconnection
    attempt.

    txredisapi reconnects each pool slot with a Twisted C{ClientService},
    which logs C{Scheduling retry N to connect ...} at every attempt: one
    line a second through a Redis outage that the limiter service already
    logged once.  A C{ClientService} takes its logger from its class when it
    is made, and the slots' services are made by C{startConnecting}: for that
    call only, the class's logger is one whose observer drops (and counts,
    through C{onRetry}) those lines and passes every other event on.
    """
    from twisted.application.internet import ClientService
    from twisted.logger import ILogObserver, globalLogPublisher

    def observer(event: Dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith("Scheduling retry"):
            onRetry()
            return
        globalLogPublisher(event)

    saved = ClientService.__dict__["_log"]
    ClientService._log = Logger(observer=cast(ILogObserver, observer))
    try:
        factory.startConnecting(endpoint)
    finally:
        ClientService._log = saved


_EAGER_PROTOCOL: Any = None


def _eagerProtocol() -> Any:
    """
    A txredisapi protocol class that parses every reply it has received
    before returning to the reactor, copying each byte about once.

    txredisapi's pure-Python parser (used when C{hiredis} is not installed),
    having read a bulk reply with more data behind it, pauses the transport
    and parses the rest one reactor iteration later (C{setLineMode} with
    C{callLater(0, ...)}): pipelined bulk replies come back one per reactor
    iteration, each costing a timer and two C{epoll} changes, and the rest
    of the buffer is copied three times per reply (quadratic in the replies
    pipelined).  This subclass replaces C{dataReceived} with a loop over
    one buffer and an offset that hands complete lines to txredisapi's own
    C{lineReceived} and complete bulk bodies to its C{bulkDataReceived}, so
    every reply kind, multi-bulk nesting and error is still txredisapi's
    code; a bulk body still incomplete is gathered as a list of chunks and
    joined once.  With C{hiredis}, txredisapi's own protocol already
    parses everything at once and is returned unchanged.
    (tests.test_cache_redis names the attributes relied on.)
    """
    global _EAGER_PROTOCOL
    import txredisapi

    base = txredisapi.BaseRedisProtocol
    if txredisapi.RedisProtocol is not base:
        return txredisapi.RedisProtocol
    if _EAGER_PROTOCOL is None:

        class EagerRedisProtocol(base):  # type: ignore[misc, valid-type]
            # Data not parsed yet, and how many bytes it must reach before
            # parsing can go on.
            _pending: List[bytes] = []
            _pendingSize = 0
            _wanted = 0
            # txredisapi's (untyped) parser state: 1 between replies and in
            # their lines, 0 in a bulk body; the body's length with its CRLF.
            line_mode: int
            bulk_length: int

            def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
                if self._pending:
                    self._pending.append(data)
                    self._pendingSize += len(data)
                    if self._pendingSize < self._wanted:
                        return None
                    data = b"".join(self._pending)
                    self._pending = []
                    self._pendingSize = 0
                pos = 0
                size = len(data)
                while pos < size and not self.paused:
                    if not self.line_mode:
                        # In a bulk reply: its body and CRLF.
                        need = self.bulk_length
                        if size - pos < need:
                            break
                        body = data[pos : pos + need - 2]
                        pos += need
                        self.bulk_length = 0
                        self.line_mode = 1
                        self.bulkDataReceived(body)
                        continue
                    end = data.find(b"\r\n", pos)
                    if end < 0:
                        if size - pos > self.MAX_LENGTH:
                            return self.lineLengthExceeded(data[pos:])
                        break
                    line = data[pos:end]
                    pos = end + 2
                    why = self.lineReceived(line.decode())
                    transport = self.transport
                    if why or (transport is not None and transport.disconnecting):
                        return why
                if pos < size:
                    rest = data[pos:] if pos else data
                    self._pending = [rest]
                    self._pendingSize = len(rest)
                    self._wanted = self.bulk_length if not self.line_mode else len(rest) + 1
                return None

        _EAGER_PROTOCOL = EagerRedisProtocol
    return _EAGER_PROTOCOL


class _PoolClient:
    """
    A txredisapi connection pool that fails fast.

    txredisapi's lazy handler queues commands while no connection is open;
    behind a dead Redis that queue would grow without bound.  This client
    sends each command on an open connection of the pool (round robin) and
    fails at once with L{RedisUnavailable} when there is none; reconnecting
    (with backoff) is left to txredisapi.

    Replies are decoded with C{charset} (the limiter's text); with L{None}
    bulk replies stay C{bytes} (the cache's binary values).  With
    C{eagerReplies}, pipelined bulk replies are parsed all at once (see
    L{_eagerProtocol}).

    txredisapi is imported only when the pool starts: it imports the global
    reactor at module level.
    """

    def __init__(
        self,
        host: str,
        port: int,
        dbid: Optional[int],
        password: Optional[str],
        username: Optional[str],
        reactor: Any,
        poolSize: int,
        connectTimeout: float,
        replyTimeout: float,
        initialDelay: float,
        maxDelay: float,
        charset: Optional[str] = "utf-8",
        eagerReplies: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self._dbid = dbid
        self._password = password
        self._username = username
        self._reactor = reactor
        self._poolSize = poolSize
        self._connectTimeout = connectTimeout
        self._replyTimeout = replyTimeout
        self._initialDelay = initialDelay
        self._maxDelay = maxDelay
        self._charset = charset
        self._eagerReplies = eagerReplies
        self._factory: Any = None
        self._next = 0

    def start(self) -> None:
        if self._factory is not None:
            return
        import txredisapi
        from twisted.internet.abstract import isIPAddress, isIPv6Address
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )

        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        if isIPAddress(self.host):
            endpoint: Any = TCP4ClientEndpoint(reactor, self.host, self.port, timeout=self._connectTimeout)
        elif isIPv6Address(self.host):
            endpoint = TCP6ClientEndpoint(reactor, self.host, self.port, timeout=self._connectTimeout)
        else:
            endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=self._connectTimeout)
        factory = txredisapi.RedisFactory(
            f"{self.host}:{self.port}",
            self._dbid,
            self._poolSize,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            charset=self._charset,
            password=self._password,
            replyTimeout=self._replyTimeout,
            convertNumbers=False,
            username=self._username,
        )
        if self._eagerReplies:
            factory.protocol = _eagerProtocol()
        factory.initialDelay = self._initialDelay
        factory.maxDelay = self._maxDelay
        # Connection failures are expected during an outage; the limiter
        # service logs those once.  txredisapi would log every attempt.
        factory.noisy = False
        self._factory = factory
        _startQuietly(factory, endpoint, self._retryScheduled)

    #: Reconnection attempts scheduled since start (each one a line
    #: Twisted's ClientService would have logged; see L{_startQuietly}).
    retriesScheduled = 0

    def _retryScheduled(self) -> None:
        self.retriesScheduled += 1

    @property
    def connected(self) -> bool:
        factory = self._factory
        return factory is not None and any(c.connected for c in factory.pool)

    def whenConnected(self) -> "Deferred[None]":
        """
        A Deferred firing once the pool's first connection is up (at once if
        one is open now).  It never fails: a pool that never connects just
        never fires it.
        """
        if self.connected:
            return succeed(None)
        d: "Deferred[None]" = Deferred()
        factory = self._factory
        if factory is not None and factory.deferred is not None:

            def connected(result: Any) -> Any:
                if not d.called:
                    d.callback(None)
                return result

            factory.deferred.addBoth(connected)
        return d

    def execute(self, *args: Any) -> "Deferred[Any]":
        factory = self._factory
        if factory is not None:
            pool = factory.pool
            n = len(pool)
            for _ in range(n):
                self._next = (self._next + 1) % n
                connection = pool[self._next]
                if connection.connected:
                    return connection.execute_command(*args)  # type: ignore[no-any-return]
        return fail(RedisUnavailable(f"not connected to Redis at {self.host}:{self.port}"))

    def stop(self) -> "Deferred[None]":
        factory, self._factory = self._factory, None
        if factory is None:
            return succeed(None)
        d: "Deferred[None]" = factory.disconnect()
        d.addErrback(lambda f: None)
        return d


def _parseURL(url: str) -> Tuple[str, int, Optional[int], Optional[str], Optional[str]]:
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"bad Redis URL {url!r}: expected redis://host:port/db")
    db = parts.path.strip("/")
    return (
        parts.hostname,
        parts.port or 6379,
        int(db) if db else None,
        unquote(parts.password) if parts.password else None,
        unquote(parts.username) if parts.username else None,
    )


# ---------------------------------------------------------------------------
# Leases and local state
