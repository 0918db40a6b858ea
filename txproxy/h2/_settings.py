# -*- test-case-name: tests.test_h2_server -*-
"""
C{h2}'s connection settings (L{h2.settings.Settings}) without a
C{collections.deque} per setting.

C{h2} keeps each setting's values (the current one first, then those sent
and not yet acknowledged) in a deque: on CPython a deque allocates a
64-slot block however little it holds, about 760 bytes, and a connection
has two settings objects of five to seven settings each.  That was over
half the memory of an idle HTTP/2 connection (tracemalloc, 18.8 KiB per
connection).  L{CompactSettings} keeps the same values in a one- or
two-item list with the one deque method C{h2} calls (C{popleft});
everything else is C{h2}'s own code.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from h2.settings import Settings

__all__ = ["CompactSettings"]


class _Values(List[Any]):
    """
    A setting's values, current first: what C{h2} keeps in a deque.
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class CompactSettings(Settings):
    """
    L{h2.settings.Settings}, each setting's values in a L{_Values} list.
    """

    def __init__(self, client: bool = True, initial_values: Optional[Dict[Any, int]] = None) -> None:
        super().__init__(client=client, initial_values=initial_values)
        self._settings = {key: _Values(values) for key, values in self._settings.items()}  # type: ignore[misc]

    def __setitem__(self, key: Any, value: int) -> None:
        super().__setitem__(key, value)
        values = self._settings[key]
        if values.__class__ is not _Values:
            # (A setting that had no value: h2 made it a deque.)
            self._settings[key] = _Values(values)  # type: ignore[assignment]
