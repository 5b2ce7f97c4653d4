"The kernel tests: one folder per op, one file per backend, the helpers they share in `_harness.py`."
