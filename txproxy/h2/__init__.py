"""
HTTP/2 for txproxy, on python-hyper's C{h2}: to clients (L{_server}), to
backends (C{h2c://}, C{h2://} routes), and the translation between HTTP/2
streams and the HTTP/1.1 messages the shared HTTP core reads and writes
(L{_translate}).
"""
