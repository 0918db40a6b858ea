# -*- test-case-name: tests.test_httpproxy,tests.test_forward,tests.test_auth -*-
"""
The policy half of the HTTP core: what L{txproxy.httpproxy.HTTPProxyProtocol}
checks before a request may go anywhere (authentication, with bcrypt off the
event loop; the rate limit, with failed logins charged to it; the
C{checkBeforeRate} and C{rateKey} hooks), in the order the docs give.

L{HTTPPolicy} is a base class of L{txproxy.httpproxy.HTTPProxyProtocol}, not
a protocol of its own: its methods use the connection's factory, limits,
client and clock.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from txproxy._common import overrides
from txproxy.auth import VerificationBusy, parseBasic
from txproxy.exchange import (
    WAIT,
)
from txproxy.hooks import ClientInfo, Refuse
from txproxy.http import (
    RequestHead,
)
from txproxy.limits._decision import ALLOWED, Decision

__all__ = ["HTTPPolicy"]

log = Logger(namespace="txproxy.httpproxy")


class HTTPPolicy:
    """
    Policy checks and their hooks, mixed into the HTTP connection layer.
    """

    # What the connection layer provides (see HTTPProxyProtocol).
    factory: Any
    client: ClientInfo
    _state: Any
    _admission: Any


    def checkPolicy(self, head: RequestHead) -> Optional[defer.Deferred]:
        """
        The configured policy, in the order a user expects: client ACL,
        connection caps, authentication, rate limit.

        @raise Refuse: when refused.
        @return: L{None} when decided, or a Deferred when the limiter or a
            bcrypt password check (run in a thread pool) has to be waited
            for (it fails with L{Refuse} when refused).
        """
        factory = self.factory
        if not factory.clientAllowed(self.client.host):
            raise Refuse(403, "client not allowed")
        admission = self._admission
        if admission is not None and admission is not ALLOWED:
            if admission.__class__ is not Decision:
                # Still a Deferred: the limiter has not answered yet.
                return admission.addCallback(lambda _: self.checkPolicy(head))  # type: ignore[no-any-return]
            if not admission.allowed:
                raise self._limitRefusal(admission)
        htpasswd = factory.htpasswd
        if htpasswd is not None:
            creds = parseBasic(head.get(b"proxy-authorization"))
            if creds is None:
                raise Refuse(407, "proxy authentication required")
            blocked = factory._guessing
            if blocked and self._bucketIsAddress():
                # This client's bucket was found empty by a wrong password:
                # refuse until it refills, without a costly check.
                until = blocked.get(self.client.host)
                if until is not None:
                    left = until - factory.clock.seconds()
                    if left > 0:
                        refusal = Refuse(429, "too many requests")
                        refusal.retryAfter = left  # type: ignore[attr-defined]
                        raise refusal
                    del blocked[self.client.host]
            try:
                verdict = htpasswd.verify(*creds)
            except VerificationBusy:
                raise Refuse(503, "too many password checks waiting")
            if verdict is True:
                self._authenticated(creds[0])
            elif verdict is False:
                return self._authFailed(head)
            else:
                # A bcrypt hash, checked in a thread: the decision waits
                # (bounded by the connect timer, like any decision).
                user = creds[0]

                def verified(ok: bool) -> Optional[defer.Deferred]:
                    if self._state is not WAIT:
                        return None  # answered meanwhile (timed out)
                    if not ok:
                        return self._authFailed(head)
                    self._authenticated(user)
                    return self._checkRate(head)

                waiting: defer.Deferred = verdict.addCallback(verified)
                return waiting
        return self._checkRate(head)

    def _authenticated(self, user: str) -> None:
        if self.client.user != user:
            self.client = ClientInfo(self.client.host, self.client.port, user)

    def _authFailed(self, head: RequestHead) -> Optional[defer.Deferred]:
        """
        Wrong credentials: C{407}, after taking a token from the client's
        C{--rate} bucket, so that guessing passwords ends in C{429}.
        (Missing credentials cost nothing: browsers ask without them
        first.)

        @raise Refuse: C{407}, or C{429} when the bucket is empty.
        @return: a Deferred failing with one of those when the limiter has
            to be waited for.
        """
        if self.client.user is not None:
            # Authenticated earlier on this connection as someone else.
            self.client = ClientInfo(self.client.host, self.client.port, None)
        factory = self.factory
        limits = factory.limits
        if limits is not None and factory.listener.rate is not None and factory.listener.rateKey != "route":
            decision = limits.checkRequest(self.rateKey(head))
            if decision is not ALLOWED:
                if decision.__class__ is not Decision:

                    def checked(decision: Any) -> None:
                        if not decision.allowed:
                            raise self._guessingRefusal(decision)
                        raise Refuse(407, "proxy authentication required")

                    return decision.addCallback(checked)  # type: ignore[no-any-return]
                if not decision.allowed:
                    raise self._guessingRefusal(decision)
        raise Refuse(407, "proxy authentication required")

    def _bucketIsAddress(self) -> bool:
        # Whether a request's rate bucket is its client address, whoever
        # it authenticates as.
        return self.factory.listener.rateKey == "client" and not overrides(self, "rateKey", HTTPPolicy)

    def _guessingRefusal(self, decision: Any) -> Refuse:
        """
        The refusal of a wrong password over the rate limit; the client's
        next requests with credentials are refused without a password
        check until its bucket refills (the limiter would refuse them
        anyway; a shared limiter's bucket can only be emptier).
        """
        refusal = self._limitRefusal(decision)
        retryAfter = getattr(refusal, "retryAfter", None)
        if refusal.status == 429 and retryAfter and self._bucketIsAddress():
            blocked = self.factory._guessing
            if len(blocked) >= 10000:
                blocked.clear()
            blocked[self.client.host] = self.factory.clock.seconds() + retryAfter
        return refusal

    def _checkRate(self, head: RequestHead) -> Optional[defer.Deferred]:
        """
        The rest of L{checkPolicy} once authentication passed: the
        mode's own refusals (L{checkBeforeRate}), then the rate limit.
        """
        factory = self.factory
        self.checkBeforeRate(head)
        limits = factory.limits
        if limits is not None and factory.listener.rate is not None and factory.listener.rateKey != "route":
            # Usually answered at once (memory, or tokens held locally for
            # Redis): the shared ALLOWED, no Deferred.
            decision = limits.checkRequest(self.rateKey(head))
            if decision is ALLOWED:
                return None
            if decision.__class__ is Decision:
                if not decision.allowed:
                    raise self._limitRefusal(decision)
                return None

            def checked(decision: Any) -> None:
                if not decision.allowed:
                    raise self._limitRefusal(decision)

            return decision.addCallback(checked)  # type: ignore[no-any-return]
        return None

    def rateKey(self, head: RequestHead) -> str:
        """
        The token bucket a request is counted in (C{--rate}).  Runs once per
        request when a rate is set; synchronous.  The default follows
        C{--rate-key}: the client address, or the authenticated user name
        (the address for anonymous requests).  Override to count by anything
        else (an API key header, say).
        """
        if self.factory.listener.rateKey == "user" and self.client.user is not None:
            return "user:" + self.client.user
        return self.client.host

    def checkBeforeRate(self, head: RequestHead) -> None:
        """
        Mode-specific refusals that must not cost a rate-limit token (the
        forward proxy's C{--connect-ports}).

        @raise Refuse: when refused.
        """

    def _limitRefusal(self, decision: Any) -> Refuse:
        if decision.reason == "max-conns":
            return Refuse(503, "proxy at capacity")
        refusal = Refuse(429, "too many requests")
        refusal.retryAfter = decision.retryAfter  # type: ignore[attr-defined]
        return refusal
