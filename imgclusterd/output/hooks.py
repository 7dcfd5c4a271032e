"""Named points in a write where a test can act: kill the process, fill the disk, pause.

The writer calls ``hooks.at(point)`` at each of these moments; the default :class:`WriteHooks`
does nothing. A fault test passes its own hooks to :class:`~imgclusterd.output.OutputWriter`
(``hooks=``), or, when the writer is made deep inside the real CLI, installs them as the
process default with :func:`set_default_hooks` before calling it. Either way nothing private
is patched, and a refactoring that moves a step keeps the point where it belongs.
"""

from __future__ import annotations

import logging

__all__ = [
    "ALGORITHM_WRITTEN",
    "GENERATION_BUILT",
    "IDLE_FLUSHED",
    "IDLE_SLICE_FLUSHED",
    "OBJECT_STAGED",
    "POINTS",
    "SWAP_LINK_MADE",
    "WriteHooks",
    "default_hooks",
    "set_default_hooks",
]

log = logging.getLogger(__name__)

#: A new object is complete in ``tmp/``, not yet renamed into ``objects/``.
OBJECT_STAGED = "object-staged"
#: A whole-tree write built one algorithm's folders (planned, built, dropped: see writer);
#: the next algorithm's are not planned yet, the generation not built.
ALGORITHM_WRITTEN = "algorithm-written"
#: The generation directory is renamed into ``generations/``; ``OUTPUT`` not swapped yet.
GENERATION_BUILT = "generation-built"
#: The temporary symlink to the new generation exists; ``os.replace`` over ``OUTPUT`` not done.
SWAP_LINK_MADE = "swap-link-made"

#: Idle work (spares, the purge of unused pool entries) is done and flushed to disk.
IDLE_FLUSHED = "idle-flushed"
#: Idle work still going on flushed what it dirtied so far (see OutputWriter.idle_flush_every).
IDLE_SLICE_FLUSHED = "idle-slice-flushed"

POINTS = (
    OBJECT_STAGED, ALGORITHM_WRITTEN, GENERATION_BUILT, SWAP_LINK_MADE, IDLE_FLUSHED,
    IDLE_SLICE_FLUSHED,
)


class WriteHooks:
    """Called by the writer at each point of :data:`POINTS`. Subclass and override :meth:`at`."""

    def at(self, point: str) -> None:
        """``point`` was reached (one of :data:`POINTS`). The default does nothing."""


_default = WriteHooks()


def default_hooks() -> WriteHooks:
    """The hooks a writer made without ``hooks=`` uses (normally: do nothing)."""
    return _default


def set_default_hooks(hooks: WriteHooks | None) -> WriteHooks:
    """Make ``hooks`` (None: do nothing) the process default; return the previous default."""
    global _default
    previous, _default = _default, hooks or WriteHooks()
    return previous
