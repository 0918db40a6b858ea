"""
Tests for L{txproxy.h2._settings}: C{h2}'s settings without a deque per
setting.
"""

from __future__ import annotations

import collections
from typing import Any, List

from h2.exceptions import InvalidSettingsValueError
from h2.settings import SettingCodes, Settings
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.h2._settings import CompactSettings
from txproxy.testing import FakeConnector, connect, reverseFactory


def current(settings: Any, key: Any) -> Any:
    try:
        return settings[key]
    except KeyError:  # (proposed, never acknowledged)
        return "unset"


def history(settings: Any) -> List[Any]:
    """
    What a settings object holds, as plain data: every setting's values,
    and what the properties C{h2} reads answer.
    """
    return [
        sorted((int(key), list(values)) for key, values in settings._settings.items()),
        sorted((int(key), current(settings, key)) for key in list(settings._settings)),
        settings.header_table_size,
        settings.initial_window_size,
        settings.max_frame_size,
        settings.max_concurrent_streams,
        settings.max_header_list_size,
        settings.enable_push,
    ]


class CompactSettingsTests(SynchronousTestCase):
    def test_sameAsH2(self) -> None:
        """
        Through values proposed, several in flight, acknowledged, deleted
        and refused, a L{CompactSettings} holds and answers what C{h2}'s
        L{Settings} does, and keeps no deque.
        """
        for client, initial in [(True, None), (False, {SettingCodes.MAX_CONCURRENT_STREAMS: 7})]:
            ours, theirs = CompactSettings(client, initial), Settings(client, initial)
            steps: List[Any] = [
                ("set", SettingCodes.INITIAL_WINDOW_SIZE, 1000),
                ("set", SettingCodes.INITIAL_WINDOW_SIZE, 2000),
                ("set", SettingCodes.MAX_HEADER_LIST_SIZE, 8192),
                ("ack",),
                ("set", SettingCodes.MAX_FRAME_SIZE, 32768),
                ("ack",),
                ("ack",),
                ("set", 0x99, 5),
                ("ack",),
                ("del", 0x99),
                ("set", SettingCodes.MAX_FRAME_SIZE, 10),
                ("set", SettingCodes.ENABLE_PUSH, 2),
            ]
            for step in steps:
                results = []
                for settings in (ours, theirs):
                    try:
                        if step[0] == "set":
                            settings[step[1]] = step[2]
                            result: Any = None
                        elif step[0] == "ack":
                            result = sorted((int(k), c.original_value, c.new_value)
                                            for k, c in settings.acknowledge().items())
                        else:
                            del settings[step[1]]
                            result = None
                    except InvalidSettingsValueError as e:
                        result = ("refused", e.error_code)
                    results.append((result, history(settings)))
                self.assertEqual(results[0], results[1], step)
            self.assertFalse(
                any(isinstance(values, collections.deque) for values in ours._settings.values()), ours._settings
            )

    def test_connectionsKeepNoDeque(self) -> None:
        """
        An HTTP/2 client connection's settings, both ways, hold no deque
        once the SETTINGS exchange is done, and the upstream side's neither.
        """
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        from txproxy.h2._client import _GracefulH2Connection

        factory = reverseFactory({"*": "http://192.0.2.1:8001"}, connector=FakeConnector({}), clock=Clock())
        peer = H2Connection(H2Configuration(client_side=True))
        peer.initiate_connection()
        peer.update_settings({SettingCodes.MAX_HEADER_LIST_SIZE: 4096})
        proto, transport = connect(factory)
        proto.dataReceived(peer.data_to_send())
        peer.receive_data(transport.value())
        proto.dataReceived(peer.data_to_send())
        conn = proto._h2conn.h2
        upstream = _GracefulH2Connection(config=H2Configuration(client_side=True))
        for settings in (conn.local_settings, conn.remote_settings, upstream.local_settings, upstream.remote_settings):
            self.assertIsInstance(settings, CompactSettings)
            self.assertFalse(any(isinstance(v, collections.deque) for v in settings._settings.values()))
        self.assertEqual(conn.remote_settings.max_header_list_size, 4096)
        self.assertEqual(upstream.local_settings.max_concurrent_streams, 100)
        self.assertEqual(dict(upstream.local_settings), dict(H2Connection(H2Configuration(client_side=True)).local_settings))
