"""Meta-entity extraction from radiology reports: ontology, spaCy/medspacy pipeline, readers.

    >>> from medtrim_ext.extraction import EntityExtractor
    >>> EntityExtractor()("Small left pleural effusion. No pneumothorax.")
    {'pleural effusion': {'adjs': ['small'], 'dirs': ['left']}}

Importing this package is cheap; spaCy and medspacy load when an extractor is built.
"""

from .ontology import ExtractionOntology
from .pipeline import UNCERTAIN_POLICIES, EntityExtractor
from .readers import Reports, read_reports
from .sections import SectionFilter

__all__ = ["EntityExtractor", "ExtractionOntology", "Reports", "SectionFilter",
           "UNCERTAIN_POLICIES", "read_reports"]
