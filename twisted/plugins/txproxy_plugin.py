# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin: C{twistd -n txproxy --listen tcp:3128}.

Kept tiny: the options and makeService are imported by name only when the
plugin is used, so plugin discovery stays light.
"""

from twisted.application.service import ServiceMaker

txproxy = ServiceMaker(
    "txproxy",
    "txproxy.runtime.tap",
    "HTTP forward/reverse proxy, TCP relay and SNI router",
    "txproxy",
)
