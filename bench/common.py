"""What the bench scripts share. The timing helper lives in :mod:`cssl.runtime.measure`, where the doctor
(``python -m cssl.doctor``) uses it too."""

from __future__ import annotations

from cssl.runtime.measure import median_seconds

__all__ = ["median_seconds"]
