"""The pool's zygote and its standby: which one forks workers now, and who
takes over when one dies.

The zygote keeps a standby: a fork of itself, the program as it was at
``Pool()``.  When the zygote dies (its workers die with it), the standby is
promoted and asked for a standby of its own; a warning says it once.  Only
when neither is left can no worker be started (``broken``).  Nothing here
waits for either process: what they say is read when the supervisor's loop
sees their socket or pidfd readable (``fds``).
"""
from __future__ import annotations

import socket
import time
import warnings
from typing import Dict, List, Optional

from ...errors import HelperDiedWarning
from ...wire import private_fds
from ...worker.starting import StartError
from .zygote_helper import Helper, close_all

STANDBY_RETRY = 1.0           # seconds between two requests for a standby


class ZygotePair:
    """The zygote (None while its standby takes over, or once both are
    gone) and its standby (None until the zygote could fork one)."""

    def __init__(self, zygote: Helper, standby: Helper):
        self.zygote: Optional[Helper] = zygote
        self.standby: Optional[Helper] = standby
        self.broken: Optional[str] = None     # why no worker can be started any more
        self._death = ""                      # how the last zygote ended
        self._standby_asked_at = time.monotonic()

    @property
    def replacing(self) -> bool:
        """Is the zygote dead, its standby about to take over?"""
        return self.zygote is None and self.standby is not None

    def pids(self) -> Dict[str, int]:
        """The pids of the zygote and the standby there are now."""
        return {name: helper.pid for name, helper in (("zygote", self.zygote),
                                                      ("standby", self.standby))
                if helper is not None and helper.pid is not None}

    def fds(self) -> List[int]:
        """The descriptors the supervisor's loop must watch for them now."""
        out = []
        for helper in (self.zygote, self.standby):
            if helper is not None:
                if (helper is self.zygote or helper.pid is None) and not helper.eof:
                    out.append(helper.sock.fileno())   # answers / the standby's "ready"
                if helper.pidfd is not None:
                    out.append(helper.pidfd)
        return out

    def to_ask(self) -> Helper:
        """The zygote to ask for a worker (StartError if there is none now);
        a standby is asked for again if none came of the last request."""
        zygote = self.zygote
        if zygote is None:
            raise StartError(self.broken or "the pool's zygote is being replaced")
        if self.standby is None and time.monotonic() > self._standby_asked_at + STANDBY_RETRY:
            self._ask_standby()
        return zygote

    def zygote_died(self, zygote: Helper) -> None:
        """Its pidfd is readable (the launcher has read its last answers)."""
        how = zygote.how_it_died()
        zygote.close(0)
        self.zygote = None
        text = f"the pool's zygote, the process that forks its workers (pid {zygote.pid}), {how}"
        self._death = text
        if self.standby is None:
            self.broken = (f"{text}, and it had no standby; no new worker can be started. "
                           f"Create a new pool")
            _warn(self.broken)
            return
        _warn(f"{text}; the workers it had forked die with it; its standby takes over")
        if self.standby.pid is not None:
            self._promote()

    def standby_said(self, standby: Helper) -> None:
        """Its socket is readable: it is ready (its pid comes), or gone."""
        for message, fds in standby.receive():
            close_all(fds)
            if message[0] == "ready":
                standby.know(message[1])
                if self.zygote is None:
                    self._promote()
                return
            if message[0] == "eof":   # it could not be forked, or died unannounced
                standby.close(0)
                self.standby = None
                if self.zygote is None:
                    self.broken = (f"{self._death}, and its standby could not take over (not "
                                   f"forked yet, or dead too); no new worker can be started. "
                                   f"Create a new pool")
                    _warn(self.broken)
                return

    def standby_died(self, standby: Helper) -> None:
        how = standby.how_it_died()
        self.standby = None
        _warn(f"the pool's standby zygote (pid {standby.pid}) {how}; another is made")
        standby.close(0)
        self._ask_standby()

    def _promote(self) -> None:
        standby = self.standby
        assert standby is not None
        try:
            standby.send(("promote",))
        except OSError:
            return   # dead already: its pidfd says so next
        self.zygote, self.standby = standby, None
        self._ask_standby()

    def _ask_standby(self) -> None:
        """Have the zygote fork a standby; if that cannot be done now, the
        next worker start tries again (STANDBY_RETRY)."""
        self._standby_asked_at = time.monotonic()
        if self.zygote is None or self.standby is not None:
            return
        try:
            with private_fds.making():
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                private_fds.keep(ours.fileno())
        except OSError:
            return   # out of descriptors: later
        try:
            self.zygote.send(("standby",), [theirs.fileno()])
        except OSError:
            private_fds.release(ours.fileno())
            ours.close()
            return
        finally:
            theirs.close()
        self.standby = Helper(ours)

    def close(self, grace: float) -> None:
        """Tell both to end; wait *grace* seconds for each, kill it if it
        does not go."""
        for helper in (self.zygote, self.standby):
            if helper is not None:
                helper.close(grace)
        self.zygote = self.standby = None


def _warn(text: str) -> None:
    warnings.warn(f"poolguard: {text}", HelperDiedWarning, stacklevel=2)
