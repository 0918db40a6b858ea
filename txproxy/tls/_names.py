# -*- test-case-name: tests.test_tls -*-
"""
The names a certificate is valid for (DNS and IP subjectAltNames, the CN
only without them) and matching a requested host against them, wildcards
included, the way RFC 6125 and service_identity do.
"""

from __future__ import annotations

import ipaddress
from typing import FrozenSet, Iterable, Optional

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

log = Logger(namespace="txproxy.tls")


# ---------------------------------------------------------------------------
# Names


def _normalizeName(name: str) -> str:
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    return name


def _canonicalIP(host: str) -> Optional[str]:
    """
    C{host} as an IP address in one canonical text form (IPv6 compressed,
    lower-case, without brackets; an IPv4-mapped IPv6 address as IPv4), or
    L{None} when it is not an IP literal (a zone index, C{fe80::1%eth0},
    is not one here).
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def certificateNames(certificate: x509.Certificate) -> FrozenSet[str]:
    """
    The names a certificate is valid for (RFC 6125, as service_identity
    reads them): its DNS subjectAltNames, lower-case, and its iPAddress
    subjectAltNames, as IP literals in canonical form (L{_canonicalIP});
    or its subject common names when it has no subjectAltName extension
    (RFC 6125 section 6.4.4).  Wildcard names are kept as written
    (C{*.example.com}).  A DNS name or common name that is written as an
    IP address is left out: an IP address is matched only by an iPAddress
    subjectAltName, so every IP literal among the names is one.

    @param certificate: a leaf certificate.
    @return: the names; empty when it has a subjectAltName extension with
        neither a DNS name nor an IP address in it.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = (_normalizeName(str(cn.value)) for cn in cns if str(cn.value).strip())
        return frozenset(n for n in names if _canonicalIP(n) is None)
    dns = (_normalizeName(n) for n in san.get_values_for_type(x509.DNSName) if n.strip())
    ips = (_canonicalIP(str(ip)) for ip in san.get_values_for_type(x509.IPAddress))
    return frozenset([n for n in dns if _canonicalIP(n) is None] + [ip for ip in ips if ip is not None])


def _wildcardSuffix(name: str) -> Optional[str]:
    """
    C{"example.com"} for the wildcard name C{"*.example.com"}; L{None} for
    any other name (partial-label wildcards like C{f*.example.com} are not
    honoured).
    """
    if name.startswith("*.") and len(name) > 2 and "*" not in name[2:]:
        return name[2:]
    return None


def _hostOnly(host: str) -> Optional[str]:
    """
    The host part of a C{Host} header value: port removed, brackets of an
    IPv6 literal removed, lower-case, no trailing dot; L{None} when empty
    or malformed.
    """
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return host[1:end].lower() or None
    if host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return None
    elif ":" in host:
        return None
    host = _normalizeName(host)
    return host or None


def hostMatchesNames(host: str, names: Iterable[str]) -> bool:
    """
    Whether the host of a request's C{Host} header (a port, if any, is
    ignored) is one of C{names}: exactly, ignoring case and a trailing dot,
    or by a wildcard name C{*.example.com} covering exactly one more label.
    An IP literal (C{127.0.0.1}, C{[::1]:443}) matches only the same
    address among the names (an iPAddress subjectAltName, see
    L{certificateNames}), never a wildcard.

    @param host: the C{Host} header value, e.g. C{"a.test:8443"}.
    @param names: certificate names, as from L{servedNames}.
    @return: L{False} for a malformed or empty host.
    """
    bare = _hostOnly(host)
    if bare is None:
        return False
    names = names if isinstance(names, (set, frozenset)) else frozenset(names)
    address = _canonicalIP(bare)
    if address is not None:
        return address in names
    if bare in names:
        return True
    first, dot, parent = bare.partition(".")
    return bool(dot and first and parent and ("*." + parent) in names)


# ---------------------------------------------------------------------------
# Certificate files
