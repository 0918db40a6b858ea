# -*- python -*-
# test-case-name: tests.test_examples
"""
Run the block-list proxy of examples/blocklist.py under twistd, with
twistd's logging, daemonizing, pidfile and privilege handling:

    PYTHONPATH=.:examples twistd -n --pidfile= -y examples/blocklist.tac

Edit LISTEN and BLOCKED below.  A .tac file is plain Python that defines
a module-level ``application``.
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application
from twisted.internet import reactor

from blocklist import makeFactory
from txproxy.accesslog import openAccessLog
from txproxy.config import ListenerConfig
from txproxy.runtime.service import serverEndpoint

LISTEN = "tcp:3128:interface=127.0.0.1"
BLOCKED = ["example.com", "*.example.net"]

listener = ListenerConfig(listen=(LISTEN,))
factory = makeFactory(BLOCKED, listener, accessLog=openAccessLog("-"))

application = Application("txproxy-blocklist")
StreamServerEndpointService(serverEndpoint(reactor, LISTEN), factory).setServiceParent(application)
