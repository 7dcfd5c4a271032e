"""The browsable output tree: symlinks grouping near-duplicates, swapped in atomically.

What readers see (the compatibility contract with the one-shot script)::

    OUTPUT/<algo>/thr_<TTT>_unclustered_<U>/<CCC>_<size>/<stem>_<hexhash><ext>  -> /abs/image
    OUTPUT/<algo>/thr_<TTT>_unclustered_<U>/unclustered_<U>/<stem>_<hexhash><ext> -> /abs/image

``OUTPUT`` is a symlink to a complete *generation*; folders are shared, content-addressed
directories in a hidden area beside it. The package, one concern per module:

    names       link names, unique names in a folder, folder names (the contract's naming)
    plan        pure: from an :data:`OutputTree` to the objects (directories) it needs
    area        the hidden area: ownership, objects, generations, the atomic swap
    linkstore   one symlink inode per (name, target), hard-linked into every folder
    recycle     the pool of retired objects and spares: a changed folder costs its difference
    retention   which generations stay (keep-N, grace) and what becomes of unreachable objects
    hooks       named points of a write where a test acts (kill, fill the disk)
    writer      :class:`OutputWriter`, the facade the pipeline calls

Readers: ``cd OUTPUT`` (or ``os.path.realpath(OUTPUT)``) pins a generation, which stays intact
for at least ``grace_seconds`` after it is replaced and while it is among the newest
``keep_generations``. A reader that re-resolves ``OUTPUT/...`` path strings across a swap goes
on in the new generation, whose ``thr_*_unclustered_<U>`` names may differ: each folder it opens
is whole (objects are immutable while any kept generation reaches them), and a name the new
generation lacks is ENOENT. The README states this; ``tests/test_output.py`` runs ``find -L``
both ways during swaps to hold it.
"""

from __future__ import annotations

import logging

from .area import area_path
from .delta import FolderPatch, ThresholdPatch, TreeDelta
from .hooks import WriteHooks, set_default_hooks
from .names import Link, folder_links, link_name
from .plan import OutputTree, ThresholdFolder
from .writer import OutputWriter, WriteReport

__all__ = [
    "FolderPatch",
    "Link",
    "OutputTree",
    "OutputWriter",
    "ThresholdFolder",
    "ThresholdPatch",
    "TreeDelta",
    "WriteHooks",
    "WriteReport",
    "area_path",
    "folder_links",
    "link_name",
    "set_default_hooks",
]

log = logging.getLogger(__name__)
