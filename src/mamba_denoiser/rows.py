"""A (n, width) float64 array grown by appending rows in place: live serving holds its
history and its outputs this way, one row longer at each update, without copying them."""

from __future__ import annotations

import numpy as np


class Rows:
    """Amortised capacity (x2 or x1.25 when full): appending k rows costs O(k), not O(n).
    ``view()`` and ``rows(a, b)`` are views; a view handed out before a growth keeps the
    old buffer, whose first rows never change."""

    def __init__(self, width: int):
        self._a, self.n = np.empty((16, width)), 0

    def staged(self, new: np.ndarray) -> np.ndarray:
        """The held rows and ``new`` after them, as one view; not held until ``commit``."""
        k = len(new)
        if self.n + k > len(self._a):
            cap = max(2 * len(self._a), (self.n + k) * 5 // 4)
            bigger = np.empty((cap, self._a.shape[1]))
            bigger[: self.n] = self._a[: self.n]
            self._a = bigger
        self._a[self.n : self.n + k] = new
        return self._a[: self.n + k]

    def commit(self, k: int) -> None:
        self.n += k

    def append(self, new: np.ndarray) -> None:
        self.staged(new)
        self.commit(len(new))

    def rows(self, a: int, b: int) -> np.ndarray:
        return self._a[a:b]

    def view(self, *, read_only: bool = False) -> np.ndarray:
        v = self._a[: self.n]
        if read_only:
            v.flags.writeable = False
        return v

    @property
    def nbytes(self) -> int:
        return self._a.nbytes
