"""Real IU report language with phantom images of each report's own findings (``iu_phantoms``).

:mod:`.descriptors`: the table from the extractor's descriptors to the renderer's side, size,
zone and form; :mod:`.dataset`: :class:`IUPhantomDataset` (reports read at run time from the
installed ``torchxrayvision`` package); :mod:`.montage`: report text beside its rendered image.
"""

from .dataset import IUPhantomDataset, find_iu_reports, rendered_attributes, truth_of
from .descriptors import ADJECTIVES, APPLIES, NO_PICTURE, SIZE_SCALES, map_finding
from .montage import caption, coverage_markdown, save_report_montage

__all__ = ["ADJECTIVES", "APPLIES", "IUPhantomDataset", "NO_PICTURE", "SIZE_SCALES", "caption",
           "coverage_markdown", "find_iu_reports", "map_finding", "rendered_attributes",
           "save_report_montage", "truth_of"]
