# -*- test-case-name: tests.test_admin -*-
"""
The C{/status} page for people: the plain data L{txproxy.runtime.admin}
gathers (one process, or a supervisor and its workers), rendered as one
small HTML page with labels in words, plus the totals across workers.
"""

from __future__ import annotations

import html
import time
from typing import Any, Dict, Optional, Sequence

__all__ = ["renderStatusHTML", "workerTotals"]


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#1d2330;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d8dde6}
table{border-collapse:collapse;margin:.3em 0 1em;background:#fff}
th,td{border:1px solid #d8dde6;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#0a7d32;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#6b7385}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;color:#fff;font-weight:600}
.badge.ok{background:#0a7d32;color:#fff}.badge.bad{background:#b3261e;color:#fff}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _health(ok: bool, yes: str = "healthy", no: str = "down") -> str:
    return f'<span class="{"ok" if ok else "bad"}">{yes if ok else no}</span>'


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


#: What the C{/status} page calls the listener limits and limiter counters
#: its JSON form names with their attribute names.
_LIMIT_LABELS = {
    "rate": "rate",
    "burst": "burst",
    "maxConns": "max connections",
    "maxConnsPerClient": "max connections per client",
    "connectTimeout": "connect timeout (s)",
    "idleTimeout": "idle timeout (s)",
}


_LIMITER_LABELS = {
    "redis": "Redis",
    "bucketCount": "rate buckets in memory",
    "leaseCount": "connection slots held",
    "redisErrors": "Redis errors",
    "fallbacks": "switches to in-memory limits",
    "recoveries": "switches back to Redis",
}


_DECISION_LABELS = {
    "allowed": "allowed",
    "rate": "refused: over the rate",
    "max-conns": "refused: max connections",
    "max-conns-per-client": "refused: max connections per client",
}


def _checkText(check: Optional[Dict[str, Any]]) -> str:
    """
    A backend's active health check for a person: C{http GET /healthz every
    5s}, or that it has none.
    """
    if not check:
        return '<span class=muted>none (passive only)</span>'
    what = f"http GET {check.get('path') or '/'}" if check.get("kind") == "http" else "tcp connect"
    every = check.get("interval")
    return _e(what + (f" every {every:g}s" if isinstance(every, (int, float)) else ""))


def _backendRows(pool: Dict[str, Any]) -> str:
    rows = []
    for b in pool.get("backends", ()):
        ok = b.get("healthy", True) and not b.get("ejected", False)
        rows.append(
            f"<tr><td>{_e(b.get('address'))}</td><td>{_health(ok, 'up', 'ejected' if b.get('ejected') else 'down')}</td>"
            f"<td>{_checkText(b.get('healthCheck'))}</td>"
            f"<td class=num>{_e(b.get('weight'))}</td><td class=num>{_e(b.get('activeConnections'))}</td>"
            f"<td class=num>{_e(b.get('totalConnections'))}</td><td class=num>{_e(b.get('totalFailures'))}</td>"
            f"<td>{_e(b.get('lastCheckError') or '')}</td></tr>"
        )
    head = ("<tr><th>backend</th><th>health</th><th>health check</th><th>weight</th><th>open connections</th>"
            "<th>connections</th><th>failed connects</th><th>last check error</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _processSection(data: Dict[str, Any]) -> str:
    out = []
    draining = data.get("draining")
    badge = '<span class="badge bad">draining</span>' if draining else '<span class="badge ok">serving</span>'
    worker = data.get("worker")
    who = (f"txproxy {_e(data.get('version'))}; " if data.get("version") else "") + f"pid {_e(data.get('pid'))}" + (
        f", worker {_e(worker)}" if worker is not None else "")
    out.append(f"<p>{badge} <span class=muted>{who}; up {_e(_duration(data.get('uptime')))}; "
               f"reloads {_e(data.get('reloads', 0))} ok / {_e(data.get('reloadFailures', 0))} rejected</span></p>")
    out.append("<h2>Listeners</h2><table><tr><th>name</th><th>mode</th><th>addresses</th>"
               "<th>open connections</th><th>open tunnels</th><th>requests</th><th>limits</th></tr>")
    for lst in data.get("listeners", ()):
        addrs = "<br>".join(
            f"{_e(a['endpoint'])} <span class=muted>{_e(a.get('bound'))}</span>"
            + ("" if a.get("listening", True) else ' <span class="bad">closed</span>')
            for a in lst.get("addresses", ())
        )
        limits = ", ".join(f"{_e(_LIMIT_LABELS.get(k, k))}: {_e(v)}" for k, v in lst.get("limits", {}).items())
        out.append(
            f"<tr><td>{_e(lst.get('name'))}</td><td>{_e(lst.get('mode'))}</td><td>{addrs}</td>"
            f"<td class=num>{_e(lst.get('openConnections'))}</td><td class=num>{_e(lst.get('openTunnels'))}</td>"
            f"<td class=num>{_e(lst.get('requestsTotal'))}</td><td>{limits}</td></tr>"
        )
    out.append("</table>")
    caches = [lst for lst in data.get("listeners", ()) if lst.get("cache")]
    if caches:
        out.append("<h2>Caches</h2><table><tr><th>listener</th><th>entries</th><th>bytes</th><th>of at most</th>"
                   "<th>hit ratio</th><th>hit / miss / stale / revalidated / bypass</th></tr>")
        for lst in caches:
            c = lst["cache"]
            counts = " / ".join(str(c["requests"].get(r, 0)) for r in ("hit", "miss", "stale", "revalidated", "bypass"))
            out.append(f"<tr><td>{_e(lst.get('name'))}</td><td class=num>{_e(c.get('entries'))}</td>"
                       f"<td class=num>{_e(c.get('bytes'))}</td><td class=num>{_e(c.get('maxBytes'))}</td>"
                       f"<td class=num>{_e(c.get('hitRatio'))}</td><td>{_e(counts)}</td></tr>")
        out.append("</table>")
    router = data.get("router")
    if router and router.get("listeners"):
        out.append("<h2>Routes and backends</h2>")
        for lst in router["listeners"]:
            if "pool" in lst:
                out.append(f"<h3>{_e(lst.get('name'))} <span class=muted>({_e(lst.get('mode'))}, "
                           f"{_e(lst['pool'].get('balance'))})</span></h3>{_backendRows(lst['pool'])}")
            for r in lst.get("routes", ()):
                pool = r.get("pool", {})
                out.append(f"<h3>{_e(lst.get('name'))}: {_e(r.get('host'))}{_e(r.get('prefix') if r.get('prefix') != '/' else '')} "
                           f"<span class=muted>({_e(pool.get('balance'))})</span></h3>{_backendRows(pool)}")
    limiter = data.get("limiter")
    if limiter:
        out.append("<h2>Limiter</h2><table>")
        backend = limiter.get("backend")
        if limiter.get("usingFallback"):
            backend = f'{_e(backend)} <span class="bad">(Redis unreachable: in-memory fallback)</span>'
        else:
            backend = _e(backend)
        out.append(f"<tr><th>backend</th><td>{backend}</td></tr>")
        for k, label in _LIMITER_LABELS.items():
            if limiter.get(k) is not None:
                out.append(f"<tr><th>{_e(label)}</th><td class=num>{_e(limiter[k])}</td></tr>")
        for reason, n in sorted(limiter.get("decisions", {}).items()):
            label = _DECISION_LABELS.get(reason, f"refused: {reason}")
            out.append(f"<tr><th>decisions, {_e(label)}</th><td class=num>{_e(n)}</td></tr>")
        out.append("</table>")
    return "".join(out)


def workerTotals(workers: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """
    Sums over the workers' statuses (those that answered): open
    connections, open tunnels and requests, overall and per listener name.

    @param workers: the supervisor's worker entries, each with the worker's
        own L{proxyStatus} under C{status} when it answered.
    """
    keys = ("openConnections", "openTunnels", "requestsTotal")
    overall: Dict[str, Any] = {k: 0 for k in keys}
    byListener: Dict[str, Dict[str, Any]] = {}
    reporting = 0
    for w in workers:
        status = w.get("status")
        if not status:
            continue
        reporting += 1
        for lst in status.get("listeners", ()):
            one = byListener.setdefault(str(lst.get("name")), {"mode": lst.get("mode"), **{k: 0 for k in keys}})
            for k in keys:
                n = lst.get(k)
                if isinstance(n, int):
                    one[k] += n
                    overall[k] += n
    return {"workersReporting": reporting, "listeners": byListener, **overall}


def _totalsSection(totals: Dict[str, Any]) -> str:
    out = [f"<h2>Totals across workers <span class=muted>({_e(totals.get('workersReporting'))} reporting)</span></h2>"
           "<table><tr><th>listener</th><th>mode</th><th>open connections</th><th>open tunnels</th>"
           "<th>requests</th></tr>"]
    for name, t in sorted(totals.get("listeners", {}).items()):
        out.append(f"<tr><td>{_e(name)}</td><td>{_e(t.get('mode'))}</td><td class=num>{_e(t['openConnections'])}</td>"
                   f"<td class=num>{_e(t['openTunnels'])}</td><td class=num>{_e(t['requestsTotal'])}</td></tr>")
    out.append(f"<tr><th>all listeners</th><td></td><td class=num>{_e(totals.get('openConnections'))}</td>"
               f"<td class=num>{_e(totals.get('openTunnels'))}</td><td class=num>{_e(totals.get('requestsTotal'))}</td></tr>"
               "</table>")
    return "".join(out)


def renderStatusHTML(data: Dict[str, Any]) -> str:
    """
    The C{/status} page for a person.  C{data} is a L{proxyStatus} result,
    or a supervisor's (with a C{workers} list).
    """
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>txproxy status</title>",
        f"<style>{_CSS}</style></head><body><h1>txproxy status</h1>",
    ]
    workers = data.get("workers")
    if workers is None:
        parts.append(_processSection(data))
    else:
        draining = data.get("draining")
        badge = '<span class="badge bad">draining</span>' if draining else '<span class="badge ok">serving</span>'
        version = f"txproxy {_e(data.get('version'))}; " if data.get("version") else ""
        parts.append(f"<p>{badge} <span class=muted>{version}supervisor pid {_e(data.get('pid'))}; "
                     f"{len(workers)} workers; up {_e(_duration(data.get('uptime')))}</span></p>")
        parts.append("<h2>Workers</h2><table><tr><th>worker</th><th>pid</th><th>state</th>"
                     "<th>restarts</th><th>up</th></tr>")
        for w in workers:
            parts.append(f"<tr><td>{_e(w.get('id'))}</td><td>{_e(w.get('pid'))}</td>"
                         f"<td>{_health(w.get('running', False), 'running', 'restarting')}</td>"
                         f"<td class=num>{_e(w.get('restarts'))}</td><td>{_e(_duration(w.get('uptime')))}</td></tr>")
        parts.append("</table>")
        parts.append(_totalsSection(workerTotals(workers)))
        for w in workers:
            status = w.get("status")
            if status:
                parts.append(f"<h2 style='border:0;font-size:1.2em'>Worker {_e(w.get('id'))}</h2>")
                parts.append(_processSection(status))
    parts.append(f"<p class=muted>{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(data.get('time') or time.time())))}"
                 " &middot; <a href='metrics'>metrics</a> &middot; <a href='healthz'>healthz</a> &middot; "
                 "<a href='status?format=json'>json</a></p></body></html>\n")
    return "".join(parts)
