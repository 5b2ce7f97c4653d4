// pybind11 entry point of the medrecipes C++ CPU kernels (`medrecipes._cpu`).
// Kernels work on raw contiguous float buffers passed from Python; no torch headers are needed.
#include <pybind11/pybind11.h>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

void init_ssim(py::module_ &m);  // csrc/ssim.cpp
void init_cbam(py::module_ &m);  // csrc/cbam.cpp

static int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static bool has_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "medrecipes C++ CPU kernels";
    m.def("has_openmp", &has_openmp, "Whether the extension was compiled with OpenMP");
    m.def("max_threads", &max_threads, "Threads OpenMP will use");
    init_ssim(m);
    init_cbam(m);
}
