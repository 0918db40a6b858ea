"""
txproxy's tests (trial).

Under C{trial -j}, a worker's standard input is a pipe its manager never
writes nor closes; a tool that reads standard input (curl's C{@-}, openssl
s_client) would wait on it forever.  Every process the tests start inherits
an empty standard input instead.
"""

import os as _os

_devnull = _os.open(_os.devnull, _os.O_RDONLY)
_os.dup2(_devnull, 0)
_os.close(_devnull)
