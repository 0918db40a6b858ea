# -*- test-case-name: tests.test_slim -*-
"""
TCP transports without a per-connection attribute dictionary.

Twisted's L{twisted.internet.tcp.Server} (and every L{tcp.Connection})
keeps its state in the instance C{__dict__}: about 16 attributes at accept
time, more as a connection is relayed (C{producer}, C{streamingProducer},
C{bufferSize}) and closed.  On CPython 3.11+ an instance keeps its
attributes in a compact array shared-key layout only while its class has
seen fewer than 30 attribute names; Twisted's classes see more than that
over a process's life (every listener, TLS, the close paths), so each
transport soon carries a full dictionary of its own: about 1.3 KB for an
idle connection, a quarter of an idle tunnel's memory (measured with
C{bench/bench_idle_memory.py}).

L{SlimServer} (accepted connections) and L{txproxy._dial.DirectClient}
(dialled upstreams) declare C{__slots__} for every attribute Twisted's
transport code sets on a connection during its life, so none of them goes
to a dictionary; anything else (a rare path, such as C{abortConnection}
replacing C{doRead}) still works, through the C{__dict__} the base classes
keep.  Because a slot hides the base class's default of the same name,
L{initSlots} gives every slot its default before Twisted's constructor
runs; C{fileno} is a property over a slot (L{slotFileno}) because Twisted
deletes it when a connection closes (reading it afterwards must give the
base class's C{-1}, as without slots).

L{slimPort} makes a listening port build L{SlimServer}s; the listener
service calls it on every plain TCP port it opens.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Optional, Tuple

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address

__all__ = ["TRANSPORT_SLOTS", "SlimServer", "initSlots", "slimPort", "slotFileno"]

#: Attributes Twisted's L{tcp.Connection} and its bases set on a connection
#: during its life, and their defaults (the base classes' class attributes,
#: or L{None} for those that have none); C{_fileno} backs C{fileno}.
_DEFAULTS: Tuple[Tuple[str, Any], ...] = (
    ("reactor", None),
    ("_tempDataBuffer", None),
    ("_tempDataLen", 0),
    ("socket", None),
    ("_fileno", None),
    ("protocol", None),
    ("connected", 0),
    ("disconnected", 0),
    ("disconnecting", 0),
    ("_writeDisconnecting", False),
    ("_writeDisconnected", False),
    ("dataBuffer", b""),
    ("offset", 0),
    ("producer", None),
    ("producerPaused", False),
    ("streamingProducer", False),
    ("bufferSize", tcp.Connection.bufferSize),
    ("_shouldShutdown", True),
    ("_aborting", False),
)

_BUFFER_SIZE = tcp.Connection.bufferSize
_IPV4 = IPv4Address
_IPV6 = IPv6Address

#: The slot names, for a class's C{__slots__}.
TRANSPORT_SLOTS: Tuple[str, ...] = tuple(name for name, _ in _DEFAULTS)


def initSlots(transport: Any) -> None:
    """
    Give every slot of L{TRANSPORT_SLOTS} its default (what the base class
    would have answered), before the base constructor runs.  (Spelled out:
    a loop of C{setattr} costs three times as much, on every connection.)
    """
    t = transport
    t.reactor = None
    t._tempDataBuffer = None
    t._tempDataLen = 0
    t.socket = None
    t._fileno = _closedFileno
    t.protocol = None
    t.connected = 0
    t.disconnected = 0
    t.disconnecting = 0
    t._writeDisconnecting = False
    t._writeDisconnected = False
    t.dataBuffer = b""
    t.offset = 0
    t.producer = None
    t.producerPaused = False
    t.streamingProducer = False
    t.bufferSize = _BUFFER_SIZE
    t._shouldShutdown = True
    t._aborting = False


def _closedFileno() -> int:
    """
    What C{fileno()} answers once the socket is gone (as
    L{twisted.internet.abstract.FileDescriptor.fileno} does).
    """
    return -1


def _delFileno(self: Any) -> None:
    self._fileno = _closedFileno


def slotFileno(cls: type) -> None:
    """
    Give C{cls} (which has a C{_fileno} slot) its C{fileno}: a property
    over that slot, read and set by C code (the reactor reads it whenever
    it starts or stops watching a connection), deleted as Twisted deletes
    it when the connection closes (then it answers C{-1}).
    """
    slot = cls.__dict__["_fileno"]
    cls.fileno = property(attrgetter("_fileno"), slot.__set__, _delFileno)  # type: ignore[attr-defined]


class SlimServer(tcp.Server):
    """
    An accepted TCP connection, as L{tcp.Server}, with its state in slots
    (see the module docstring).

    Its constructor does what L{tcp.Server}'s does, but for the two
    strings Twisted builds for every connection, C{logstr} (the legacy log
    context) and C{repstr} (C{repr}), which are built when first read
    instead (C{tests/test_slim.py} compares every attribute with a
    L{tcp.Server}'s, so a Twisted upgrade that changes the constructor
    shows there).
    """

    __slots__ = TRANSPORT_SLOTS + (
        "server",
        "client",
        "sessionno",
        "hostname",
        "_addressType",
        "_logstr",
        "_repstr",
        "_protocolClass",
    )

    def __init__(self, sock: Any, protocol: Any, client: Any, server: Any, sessionno: int, reactor: Any) -> None:
        initSlots(self)
        # FileDescriptor.__init__ and Connection.__init__:
        if not reactor:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.reactor = reactor
        self._tempDataBuffer = []
        self.socket = sock
        sock.setblocking(False)
        self.fileno = sock.fileno
        self.protocol = protocol
        # Server.__init__, but for the strings:
        self._addressType = _IPV4 if len(client) == 2 else _IPV6
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self._logstr: Optional[str] = None
        self._repstr: Optional[str] = None
        self._protocolClass = protocol.__class__
        self.startReading()
        self.connected = 1

    @property
    def logstr(self) -> str:
        """
        C{"<log prefix>,<session number>,<client host>"}, as L{tcp.Server}
        sets it; built when first read.  (Read only after the connection
        closed, the prefix is the protocol class's name.)
        """
        logstr = self._logstr
        if logstr is None:
            try:
                prefix = self._getLogPrefix(self.protocol)
            except AttributeError:  # (closed: Twisted deleted the protocol)
                prefix = self._protocolClass.__name__
            logstr = self._logstr = f"{prefix},{self.sessionno},{self.hostname}"
        return logstr

    @logstr.setter
    def logstr(self, value: str) -> None:
        self._logstr = value

    @property
    def repstr(self) -> str:
        """
        C{"<ProtocolClass #session on port>"}, as L{tcp.Server} sets it
        (built when read, unless set).
        """
        repstr = self._repstr
        if repstr is not None:
            return repstr
        if self.server is None:
            return object.__repr__(self)
        return f"<{self._protocolClass.__name__} #{self.sessionno} on {self.server._realPortNumber}>"

    @repstr.setter
    def repstr(self, value: str) -> None:
        self._repstr = value

    def __repr__(self) -> str:
        return self.repstr


slotFileno(SlimServer)


def slimPort(port: Any) -> bool:
    """
    Make C{port}, when it is a plain L{tcp.Port} that builds L{tcp.Server}s,
    build L{SlimServer}s instead.

    @return: whether it was changed.
    """
    if type(port) is tcp.Port and port.transport is tcp.Server:
        port.transport = SlimServer
        return True
    return False
