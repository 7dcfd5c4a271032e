"""``python -m imgclusterd`` is the ``imgclusterd`` command."""

from .cli import main

raise SystemExit(main())
