"""Progress bars that the core install can do without: tqdm where installed, else none."""

from __future__ import annotations

import contextlib


class _NoBar(contextlib.AbstractContextManager):
    """Stands in for a tqdm bar when tqdm is missing or the bar is off."""

    def __exit__(self, *exc):
        return None

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)`` when ``enabled`` and tqdm is installed (it comes with the
    ``extract`` and ``train`` extras, not with the core). Otherwise ``iterable`` itself, or, without
    one, an object with tqdm's ``update``/``set_postfix``/``close`` that does nothing."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, **kwargs)
    return iterable if iterable is not None else _NoBar()
