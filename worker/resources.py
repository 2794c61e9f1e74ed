"""Files that ship with the code: email templates, migrations, the default policy.

In a checkout (and an editable install) they sit beside the package (``templates/``,
``migrations/``, ``config/``); a wheel copies them into the package as ``_templates``,
``_migrations`` and ``_config`` (see pyproject.toml). A marker file inside the folder decides,
because in site-packages the package's parent is shared with every other distribution
(another one may well ship a top-level ``migrations``).
"""

from __future__ import annotations

from pathlib import Path

import worker

_PACKAGE = Path(worker.__file__).resolve().parent


def bundled(folder: str, marker: str) -> Path:
    """The checkout's ``folder`` if it holds ``marker``, else the wheel's ``_folder``."""
    checkout = _PACKAGE.parent / folder
    return checkout if (checkout / marker).exists() else _PACKAGE / f"_{folder}"
