# -*- test-case-name: tests.test_h2_translate -*-
"""
HTTP/2 (RFC 9113) for txproxy, as shims around the HTTP/1.1 core: each
stream is translated to and from HTTP/1.1 messages
(L{txproxy.h2._translate}), so policy, hooks, limits and logging are the
HTTP/1.1 core's own.
"""
