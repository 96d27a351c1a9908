"""Meta-entity extraction from radiology reports: ontology, spaCy/medspacy pipeline, readers.

    >>> from medtrim_ext.extraction import EntityExtractor
    >>> EntityExtractor()("Small left pleural effusion. No pneumothorax.")
    {'pleural effusion': {'adjs': ['small'], 'dirs': ['left']}}

Importing this package is cheap; spaCy and medspacy load when an extractor is built.
"""

from ..utils.extras import require_extra

# a clear ImportError naming the extra, before any import of it fails bare
require_extra("extract", "medtrim_ext.extraction (entity extraction)", ["spacy", "medspacy"])

from .normalize import normalize_text
from .ontology import ExtractionOntology
from .pipeline import UNCERTAIN_POLICIES, EntityExtractor, ExtractionWarning
from .readers import Reports, read_reports
from .sections import SectionFilter

__all__ = ["EntityExtractor", "ExtractionOntology", "ExtractionWarning", "Reports", "SectionFilter",
           "UNCERTAIN_POLICIES", "normalize_text", "read_reports"]
