"""``python -m medtrim_ext.train``: the training command (:mod:`medtrim_ext.apps.train`)."""

import sys

from .apps.train import main

if __name__ == "__main__":
    sys.exit(main())
