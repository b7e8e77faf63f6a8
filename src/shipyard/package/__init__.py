"""Model packages: ``shipyard.yaml``, turning a MODEL argument into a servable source, and making packages.

``shipyard.package(obj, DIR, sample_input=...)`` packages a trained object, although
``shipyard.package`` is this subpackage: the module's class is swapped for one whose instances
are callable, so the subpackage and the function share the name users expect, and importing
``shipyard`` stays cheap (the packaging code is imported on the first call).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


class _CallablePackageModule(types.ModuleType):
    def __call__(self, obj: Any, directory: str | Path, sample_input: Any = None, **options: Any) -> Path:
        """Package a trained object: see :func:`shipyard.package.from_object.package`."""
        from shipyard.package.from_object import package

        return package(obj, directory, sample_input, **options)


sys.modules[__name__].__class__ = _CallablePackageModule
