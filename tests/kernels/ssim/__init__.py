"SSIM: the public API and its dispatch (`test_op.py`), the C++ kernels (`test_cpp.py`), the Triton kernels (`test_triton.py`)."
