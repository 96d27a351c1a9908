"""Synthetic chest-radiograph phantoms with known findings and matching reports.

The built-in data of the demo: a seeded generator of frontal (PA) chest "radiographs" with known
pathology attributes, so that fine-grained retrieval (disease + side + size/severity + zone) can
be scored exactly from the ground truth.

Image convention: radiological, the patient faces the viewer, so the patient's **left** lung is
on the image's **right**. Bright = dense (bone, fluid, soft tissue), dark = air.

Each image is rendered from an additive density map in "anatomical" coordinates ``x, y`` in
``[-1, 1]`` (``y`` down), which a per-sample affine (patient position, rotation, size) maps to
pixels; then exposure, contrast, gamma, a smooth exposure gradient and noise are applied:

- anatomy: body outline, two lung fields with diaphragm domes and costophrenic angles, heart
  (its width is the cardiothoracic ratio), mediastinum, trachea, spine, clavicles, rib arcs of a
  random strength, vascular markings radiating from the hila, an optional corner marker;
- findings (about 30% of studies are normal, the others have 1-2 findings):

  ==================  ==========================  =======================================
  disease             attributes                  what it looks like
  ==================  ==========================  =======================================
  pleural effusion    side, size (small/moderate  fluid level from the costophrenic angle
                      /large)                     up, meniscus rising laterally
  consolidation       side, zone (upper/mid/      dense homogeneous region ("dense")
                      lower)
  lung opacity        side (also bilateral), zone  faint patchy puffs ("patchy")
  cardiomegaly        severity (mild/moderate/    a wider heart
                      severe)
  lung lesion         side, zone, size (small/    a round nodule or mass
                      large)
  pneumothorax        side, size (small/large)    lucent rim without markings at the apex
                                                  and lateral wall, a thin pleural line
  atelectasis         side (also bilateral),      a thin linear band above the dome
                      zone lower ("linear")
  edema               bilateral, severity         perihilar haze on both sides
  ==================  ==========================  =======================================

  The renderer also draws what the real IU reports need (:data:`RENDER_SPACE`, any number of
  findings per image; used by :mod:`medtrim_ext.datasets.iu_phantoms`, never sampled here):

  ==========================  ==========================  ===================================
  disease                     attributes                  what it looks like
  ==========================  ==========================  ===================================
  pneumonia                   side, zone                  a soft-edged, mottled region (unlike
                                                          the dense, even consolidation)
  pleural other (thickening)  side, zone, size (small /   upper: a cap over the apex; mid /
                              large thickness)            lower: a band along the lateral wall
  fracture (rib)              side, zone                  a short bright rib segment at the
                                                          lateral wall with a gap and a step
  enlarged cardiomediastinum  none                        a wide dense band above the heart
  lung opacity                also size small / large     4 fainter / 12 wider puffs
  lung lesion                 also form calcified         1-3 small, very bright, sharp nodules
                                                          (granulomas)
  atelectasis                 also zone upper / mid       the linear band at that height
  pneumothorax                also size moderate          a rim between small and large
  ==========================  ==========================  ===================================

  Consolidation, lung lesion and pneumothorax may also be bilateral, and a zone may be a tuple
  (one region per side and zone).

Sample ``i`` depends only on ``(seed, i)``: a larger ``n`` gives the same first samples.

Modules: :mod:`.attributes` (the ground-truth model and its sampling), :mod:`.scene` (nuisance
and finding geometry of one image), :mod:`.render` (anatomy and one painter per finding),
:mod:`.reports` (report text), :mod:`.generate`, :mod:`.export` (files) and :mod:`.dataset`.
"""

from .attributes import (ATTRIBUTE_KEYS, ATTRIBUTE_SPACE, DISEASES, NORMAL_SHARE, PREVALENCE,
                         RENDER_SPACE, TWO_FINDINGS_SHARE, _streams, describe, sample_attributes,
                         split_seed, validate_attributes, validate_render_attributes)
from .dataset import PhantomDataset
from .export import save_montage, write_phantom_dataset
from .generate import PhantomSet, generate_phantoms
from .reports import MORPHOLOGY, SENTENCES, attributes_to_record, compose_report
from .scene import CTR_RANGES

__all__ = ["ATTRIBUTE_KEYS", "ATTRIBUTE_SPACE", "CTR_RANGES", "DISEASES", "MORPHOLOGY",
           "NORMAL_SHARE", "PREVALENCE", "PhantomDataset", "PhantomSet", "RENDER_SPACE", "SENTENCES",
           "TWO_FINDINGS_SHARE", "attributes_to_record", "compose_report", "describe",
           "generate_phantoms", "sample_attributes", "save_montage", "split_seed",
           "validate_attributes", "validate_render_attributes", "write_phantom_dataset"]
