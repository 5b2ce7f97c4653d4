"""Seeded data sets in the exact layouts the recipes read (BTXRD radiographs, SAR scenes, digits in class folders)

Generated data sets, so every recipe, test and README snippet runs without downloads; the same arguments give
byte-identical files. One module per kind of data, and this package re-exports every public name of the three:

- `medrecipes.synth.xray`: `make_btxrd` (the BTXRD release's folder, sheet and 37 columns, class and center
  proportions scaled to `n`), `draw_radiograph`, `write_dicom`;
- `medrecipes.synth.sar`: `make_sar` (speckled SAR scenes, single-look or Sentinel-1-like, in `train/valid/test`),
  `make_sar_scene`, `sar_speckle`, `correlated_speckle`;
- `medrecipes.synth.digits`: `make_digits` (an image-folder classification set), `draw_digit`.

`_common.py` holds the argument checks they share. This file is hand-written, like the package's other `__init__.py`
files; `nbs/01_synth.ipynb` (this package's page and the shared checks), `nbs/01a_synth.xray.ipynb`,
`nbs/01b_synth.sar.ipynb` and `nbs/01c_synth.digits.ipynb` document and test the modules.

Docs: `_docs/synth.html` in this repository, built by `make docs` (API reference: `_docs/api/medrecipes.synth.html`)."""
from .xray import (BTXRD_CLASSES, SITE_COLUMNS, BENIGN_SUBTYPES, MALIGNANT_SUBTYPES, SUBTYPE_COLUMNS, LIMB_COLUMNS,
                   VIEW_COLUMNS, BTXRD_COLUMNS, SITE_LIMB, BTXRD_RELEASE_COUNTS, BTXRD_SUBTYPE_COUNTS, LESION_THRESHOLD,
                   LESION_COLUMNS, btxrd_counts, btxrd_metadata, draw_radiograph, write_dicom, make_btxrd)
from .sar import (SAR_TERRAIN_DB, SAR_REALISTIC, SAR_MODES, SAR_SPLITS, sar_speckle, look_correlation, irf_kernel,
                  correlated_speckle, make_sar_scene, make_sar)
from .digits import DIGIT_SPLITS, DIGIT_STROKES, draw_digit, make_digits

# every public name of the three modules (tests/test_synth.py checks that this is their `__all__`, nothing more or less)
__all__ = ['BTXRD_CLASSES', 'SITE_COLUMNS', 'BENIGN_SUBTYPES', 'MALIGNANT_SUBTYPES', 'SUBTYPE_COLUMNS', 'LIMB_COLUMNS',
           'VIEW_COLUMNS', 'BTXRD_COLUMNS', 'SITE_LIMB', 'BTXRD_RELEASE_COUNTS', 'BTXRD_SUBTYPE_COUNTS',
           'LESION_THRESHOLD', 'LESION_COLUMNS', 'SAR_TERRAIN_DB', 'SAR_REALISTIC', 'SAR_MODES', 'SAR_SPLITS',
           'DIGIT_SPLITS', 'DIGIT_STROKES', 'btxrd_counts', 'btxrd_metadata', 'draw_radiograph', 'write_dicom',
           'make_btxrd', 'sar_speckle', 'look_correlation', 'irf_kernel', 'correlated_speckle', 'make_sar_scene',
           'make_sar', 'draw_digit', 'make_digits']
