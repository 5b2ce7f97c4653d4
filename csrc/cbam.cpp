// CBAM fused passes on raw float buffers (pybind11 + OpenMP, no torch headers).
//
// Maths (timm's CbamModule): a[b,c] = sigmoid(MLP(mean_p x) + MLP(amax_p x)), y1 = x * a,
// m = [mean_c y1, amax_c y1], s = sigmoid(BN(conv(m))), out = y1 * s. The small steps (MLP, conv, BN, sigmoids and
// their backward) run in PyTorch (medrecipes/kernels/cbam.py); these six passes are the ones that read the full
// B x C x H x W tensors:
//   F1 cbam_channel_pool(x)              -> cavg, cmax, ccnt           [B, C]   (ccnt = how many elements equal the max)
//   F2 cbam_spatial_pool(x, a)           -> smean, smax, scnt          [B, H, W] of y1 = x * a
//   F3 cbam_apply_gates(x, a, s)         -> out = (x * a) * s
//   B1 cbam_spatial_gate_grad(g, x, a)   -> ds[b,p] = sum_c g * (x * a)
//   B2 cbam_channel_gate_grad(g, x, a, s, dmean, dmax, smax, scnt) -> da[b,c] = sum_p dy1 * x
//   B3 cbam_input_grad(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt) -> dx
//      with dy1 = g * s + dmean / C + [x * a == smax] * dmax / scnt
//      and  dx  = dy1 * a + dcavg / (H W) + [x == cmax] * dcmax / ccnt
// The max-pool gradients are split evenly among tied maxima, as torch's amax backward does; the tie test recomputes
// x * a exactly as F2 did, so it finds the same elements.
//
// Layouts: the big arrays are C-contiguous, either (B, C, H, W) or, with channels_last=True, (B, H, W, C) (the
// memory of a channels-last NCHW tensor), handled natively: no transposition copy. Small arrays are C-contiguous
// [B, C] and [B, H, W]. Element type: float32 (what the kernels are for) or float64 (for gradcheck); every array of
// one call has the same type, nothing is converted silently.
//
// Determinism: every output element is reduced by one work item in a fixed order; reductions over pixels in the
// channels-last layout use fixed-size pixel chunks whose partial results are combined in chunk order. Results do not
// depend on the thread count. Sums over pixels are accumulated in float blocks of BLK elements added into double.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#if defined(__GNUC__) || defined(__clang__)
#define RESTRICT __restrict__
#else
#define RESTRICT __restrict
#endif

namespace {

constexpr int64_t BLK = 1024;    // float block of a pixel sum (NCHW) before it is added into double
constexpr int64_t CHUNK = 64;    // pixels per partial reduction in the channels-last layout (fixed: determinism)

struct Dims {
    int64_t B, C, H, W, HW;
    bool cl;
};

int threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

std::string shape_str(const py::array &a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) { if (i) s += ", "; s += std::to_string(a.shape(i)); }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string shape_str(const std::vector<int64_t> &v) {
    std::string s = "(";
    for (size_t i = 0; i < v.size(); ++i) { if (i) s += ", "; s += std::to_string(v[i]); }
    return s + (v.size() == 1 ? ",)" : ")");
}

// Checks one argument (type, C-contiguity, shape) and returns its data pointer.
template <typename T>
const T *arg(const char *op, const char *name, const py::array &a, const std::vector<int64_t> &shape) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw std::invalid_argument(std::string(op) + ": " + name + " must be " + (sizeof(T) == 4 ? "float32" : "float64") +
                                    " like x; got dtype " + std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(op) + ": " + name + " must be C-contiguous");
    bool ok = a.ndim() == (py::ssize_t)shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
    if (!ok)
        throw std::invalid_argument(std::string(op) + ": " + name + " must have shape " + shape_str(shape) + "; got " + shape_str(a));
    return static_cast<const T *>(a.data());
}

Dims big_dims(const char *op, const py::array &x, bool cl) {
    if (x.ndim() != 4)
        throw std::invalid_argument(std::string(op) + ": x must be 4-D, (B, C, H, W) or with channels_last=True (B, H, W, C); got shape " + shape_str(x));
    Dims d;
    d.B = x.shape(0); d.cl = cl;
    if (cl) { d.H = x.shape(1); d.W = x.shape(2); d.C = x.shape(3); }
    else    { d.C = x.shape(1); d.H = x.shape(2); d.W = x.shape(3); }
    d.HW = d.H * d.W;
    if (d.B < 1 || d.C < 1 || d.HW < 1)
        throw std::invalid_argument(std::string(op) + ": x must not be empty; got shape " + shape_str(x));
    return d;
}

std::vector<int64_t> big_shape(const Dims &d) {
    return d.cl ? std::vector<int64_t>{d.B, d.H, d.W, d.C} : std::vector<int64_t>{d.B, d.C, d.H, d.W};
}
std::vector<int64_t> bc_shape(const Dims &d) { return {d.B, d.C}; }
std::vector<int64_t> bp_shape(const Dims &d) { return {d.B, d.H, d.W}; }

template <typename T> py::array_t<T> new_array(const std::vector<int64_t> &shape) {
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    return py::array_t<T>(s);
}

// Pixel tile of the NCHW per-pixel passes (F2, B1): large enough to stream each channel row, small enough to give
// every thread work. Results do not depend on it (every pixel is reduced over channels on its own).
int64_t pixel_tile(const Dims &d) {
    int64_t t = (d.B * d.HW) / (4 * (int64_t)threads());
    t = std::max<int64_t>(64, std::min<int64_t>(1024, t));
    return (t + 15) / 16 * 16;
}

// Max and number of elements equal to it of v[0..n), n >= 1: (running max, count) updated block by block.
template <typename T> inline void max_count(const T *RESTRICT v, int64_t n, T &mx, T &cnt) {
    T m = v[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = v[j] > m ? v[j] : m;
    T c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t j = 0; j < n; ++j) c += v[j] == m ? T(1) : T(0);
    if (m > mx) { mx = m; cnt = c; }
    else if (m == mx) cnt += c;
}

// ---------------------------------------------------------------- F1 channel_pool
template <typename T> void channel_pool_impl(const Dims &d, const T *x, T *cavg, T *cmax, T *ccnt) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < d.B * C; ++p) {
            const T *RESTRICT xp = x + p * HW;
            double total = 0;
            T mx = -std::numeric_limits<T>::infinity(), cnt = 0;
            for (int64_t b0 = 0; b0 < HW; b0 += BLK) {
                const int64_t n = std::min(BLK, HW - b0);
                const T *RESTRICT v = xp + b0;
                T s = 0;
#pragma omp simd reduction(+ : s)
                for (int64_t j = 0; j < n; ++j) s += v[j];
                total += s;
                max_count(v, n, mx, cnt);
            }
            cavg[p] = (T)(total / (double)HW); cmax[p] = mx; ccnt[p] = cnt;
        }
        return;
    }
    // channels-last: partial (sum, max, count) over fixed pixel chunks, combined in chunk order
    const int64_t nch = (HW + CHUNK - 1) / CHUNK;
    std::vector<T> ps(d.B * nch * C), pm(d.B * nch * C), pc(d.B * nch * C);
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < d.B * nch; ++item) {
        const int64_t b = item / nch, k = item % nch;
        const int64_t p0 = k * CHUNK, p1 = std::min(HW, p0 + CHUNK);
        T *RESTRICT s = ps.data() + item * C, *RESTRICT m = pm.data() + item * C, *RESTRICT c = pc.data() + item * C;
        const T *RESTRICT r0 = x + (b * HW + p0) * C;
        for (int64_t j = 0; j < C; ++j) { s[j] = r0[j]; m[j] = r0[j]; c[j] = 1; }
        for (int64_t p = p0 + 1; p < p1; ++p) {
            const T *RESTRICT r = x + (b * HW + p) * C;
#pragma omp simd
            for (int64_t j = 0; j < C; ++j) {
                const T v = r[j];
                s[j] += v;
                const bool gt = v > m[j];
                c[j] = gt ? T(1) : c[j] + (v == m[j] ? T(1) : T(0));
                m[j] = gt ? v : m[j];
            }
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < d.B * C; ++bc) {
        const int64_t b = bc / C, j = bc % C;
        double total = 0;
        T mx = -std::numeric_limits<T>::infinity(), cnt = 0;
        for (int64_t k = 0; k < nch; ++k) {
            const int64_t i = (b * nch + k) * C + j;
            total += ps[i];
            if (pm[i] > mx) { mx = pm[i]; cnt = pc[i]; }
            else if (pm[i] == mx) cnt += pc[i];
        }
        cavg[bc] = (T)(total / (double)HW); cmax[bc] = mx; ccnt[bc] = cnt;
    }
}

// ---------------------------------------------------------------- F2 spatial_pool
template <typename T> void spatial_pool_impl(const Dims &d, const T *x, const T *a, T *smean, T *smax, T *scnt) {
    const int64_t HW = d.HW, C = d.C;
    const T invC = T(1) / (T)C;
    if (!d.cl) {
        const int64_t tile = pixel_tile(d), nt = (HW + tile - 1) / tile;
#pragma omp parallel
        {
            std::vector<T> sb(tile), mb(tile), cb(tile);
            T *RESTRICT s = sb.data(), *RESTRICT m = mb.data(), *RESTRICT c = cb.data();
#pragma omp for schedule(static)
            for (int64_t item = 0; item < d.B * nt; ++item) {
                const int64_t b = item / nt, p0 = (item % nt) * tile, n = std::min(tile, HW - p0);
                const T *RESTRICT ab = a + b * C;
                {
                    const T *RESTRICT r = x + (b * C) * HW + p0;
                    const T ac = ab[0];
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) { const T y = r[j] * ac; s[j] = y; m[j] = y; c[j] = 1; }
                }
                for (int64_t ch = 1; ch < C; ++ch) {
                    const T *RESTRICT r = x + (b * C + ch) * HW + p0;
                    const T ac = ab[ch];
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) {
                        const T y = r[j] * ac;
                        s[j] += y;
                        const bool gt = y > m[j];
                        c[j] = gt ? T(1) : c[j] + (y == m[j] ? T(1) : T(0));
                        m[j] = gt ? y : m[j];
                    }
                }
                T *RESTRICT om = smean + b * HW + p0, *RESTRICT ox = smax + b * HW + p0, *RESTRICT oc = scnt + b * HW + p0;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) { om[j] = s[j] * invC; ox[j] = m[j]; oc[j] = c[j]; }
            }
        }
        return;
    }
    // channels-last: one pixel's channels are contiguous
#pragma omp parallel
    {
        std::vector<T> yb(std::min<int64_t>(C, BLK));
        T *RESTRICT y = yb.data();
#pragma omp for schedule(static)
        for (int64_t bp = 0; bp < d.B * HW; ++bp) {
            const int64_t b = bp / HW;
            const T *RESTRICT r = x + bp * C, *RESTRICT ab = a + b * C;
            T sum = 0, mx = -std::numeric_limits<T>::infinity(), cnt = 0;
            for (int64_t c0 = 0; c0 < C; c0 += BLK) {
                const int64_t n = std::min(BLK, C - c0);
                T s = 0;
#pragma omp simd reduction(+ : s)
                for (int64_t j = 0; j < n; ++j) { y[j] = r[c0 + j] * ab[c0 + j]; s += y[j]; }
                sum += s;
                max_count(y, n, mx, cnt);
            }
            smean[bp] = sum * invC; smax[bp] = mx; scnt[bp] = cnt;
        }
    }
}

// ---------------------------------------------------------------- F3 apply_gates
template <typename T> void apply_gates_impl(const Dims &d, const T *x, const T *a, const T *s, T *out) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < d.B * C; ++p) {
            const int64_t b = p / C;
            const T ac = a[p];
            const T *RESTRICT xr = x + p * HW, *RESTRICT sr = s + b * HW;
            T *RESTRICT o = out + p * HW;
#pragma omp simd
            for (int64_t j = 0; j < HW; ++j) o[j] = (xr[j] * ac) * sr[j];
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t bp = 0; bp < d.B * HW; ++bp) {
        const int64_t b = bp / HW;
        const T sp = s[bp];
        const T *RESTRICT xr = x + bp * C, *RESTRICT ab = a + b * C;
        T *RESTRICT o = out + bp * C;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) o[j] = (xr[j] * ab[j]) * sp;
    }
}

// ---------------------------------------------------------------- B1 spatial_gate_grad
template <typename T> void spatial_gate_grad_impl(const Dims &d, const T *g, const T *x, const T *a, T *ds) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
        const int64_t tile = pixel_tile(d), nt = (HW + tile - 1) / tile;
#pragma omp parallel
        {
            std::vector<T> sb(tile);
            T *RESTRICT s = sb.data();
#pragma omp for schedule(static)
            for (int64_t item = 0; item < d.B * nt; ++item) {
                const int64_t b = item / nt, p0 = (item % nt) * tile, n = std::min(tile, HW - p0);
                std::fill(s, s + n, T(0));
                for (int64_t ch = 0; ch < C; ++ch) {
                    const int64_t off = (b * C + ch) * HW + p0;
                    const T *RESTRICT xr = x + off, *RESTRICT gr = g + off;
                    const T ac = a[b * C + ch];
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) s[j] += gr[j] * (xr[j] * ac);
                }
                std::copy(s, s + n, ds + b * HW + p0);
            }
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t bp = 0; bp < d.B * HW; ++bp) {
        const int64_t b = bp / HW;
        const T *RESTRICT xr = x + bp * C, *RESTRICT gr = g + bp * C, *RESTRICT ab = a + b * C;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < C; ++j) acc += gr[j] * (xr[j] * ab[j]);
        ds[bp] = acc;
    }
}

// Per-pixel coefficients of dy1 shared by B2 and B3: dmC = dmean / C, dmx = dmax / scnt.
template <typename T>
void pixel_coefs(const Dims &d, const T *dmean, const T *dmax, const T *scnt, std::vector<T> &dmC, std::vector<T> &dmx) {
    const int64_t n = d.B * d.HW;
    dmC.resize(n); dmx.resize(n);
    const T C = (T)d.C;
    for (int64_t i = 0; i < n; ++i) { dmC[i] = dmean[i] / C; dmx[i] = dmax[i] / scnt[i]; }
}

// ---------------------------------------------------------------- B2 channel_gate_grad
template <typename T>
void channel_gate_grad_impl(const Dims &d, const T *g, const T *x, const T *a, const T *s, const T *dmean, const T *dmax,
                            const T *smax, const T *scnt, T *da) {
    const int64_t HW = d.HW, C = d.C;
    std::vector<T> dmCv, dmxv;
    pixel_coefs(d, dmean, dmax, scnt, dmCv, dmxv);
    const T *dmC = dmCv.data(), *dmx = dmxv.data();
    if (!d.cl) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < d.B * C; ++p) {
            const int64_t b = p / C;
            const T ac = a[p];
            const T *RESTRICT xr = x + p * HW, *RESTRICT gr = g + p * HW;
            const T *RESTRICT sr = s + b * HW, *RESTRICT cr = dmC + b * HW, *RESTRICT mr = dmx + b * HW, *RESTRICT xm = smax + b * HW;
            double total = 0;
            for (int64_t b0 = 0; b0 < HW; b0 += BLK) {
                const int64_t n = std::min(BLK, HW - b0);
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = b0; j < b0 + n; ++j) {
                    const T xv = xr[j];
                    const T dy = gr[j] * sr[j] + cr[j] + (xv * ac == xm[j] ? mr[j] : T(0));
                    acc += dy * xv;
                }
                total += acc;
            }
            da[p] = (T)total;
        }
        return;
    }
    const int64_t nch = (HW + CHUNK - 1) / CHUNK;
    std::vector<T> part(d.B * nch * C);
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < d.B * nch; ++item) {
        const int64_t b = item / nch, k = item % nch;
        const int64_t p0 = k * CHUNK, p1 = std::min(HW, p0 + CHUNK);
        T *RESTRICT acc = part.data() + item * C;
        const T *RESTRICT ab = a + b * C;
        std::fill(acc, acc + C, T(0));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t bp = b * HW + p;
            const T *RESTRICT xr = x + bp * C, *RESTRICT gr = g + bp * C;
            const T sp = s[bp], cp = dmC[bp], mp = dmx[bp], xm = smax[bp];
#pragma omp simd
            for (int64_t j = 0; j < C; ++j) {
                const T xv = xr[j];
                const T dy = gr[j] * sp + cp + (xv * ab[j] == xm ? mp : T(0));
                acc[j] += dy * xv;
            }
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < d.B * C; ++bc) {
        const int64_t b = bc / C, j = bc % C;
        double total = 0;
        for (int64_t k = 0; k < nch; ++k) total += part[(b * nch + k) * C + j];
        da[bc] = (T)total;
    }
}

// ---------------------------------------------------------------- B3 input_grad
template <typename T>
void input_grad_impl(const Dims &d, const T *g, const T *x, const T *a, const T *s, const T *dmean, const T *dmax,
                     const T *smax, const T *scnt, const T *dcavg, const T *dcmax, const T *cmax, const T *ccnt, T *dx) {
    const int64_t HW = d.HW, C = d.C;
    std::vector<T> dmCv, dmxv;
    pixel_coefs(d, dmean, dmax, scnt, dmCv, dmxv);
    const T *dmC = dmCv.data(), *dmx = dmxv.data();
    std::vector<T> avgc(d.B * C), maxc(d.B * C);  // dcavg / HW and dcmax / ccnt per (b, c)
    for (int64_t i = 0; i < d.B * C; ++i) { avgc[i] = dcavg[i] / (T)HW; maxc[i] = dcmax[i] / ccnt[i]; }
    if (!d.cl) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < d.B * C; ++p) {
            const int64_t b = p / C;
            const T ac = a[p], av = avgc[p], mv = maxc[p], cm = cmax[p];
            const T *RESTRICT xr = x + p * HW, *RESTRICT gr = g + p * HW;
            const T *RESTRICT sr = s + b * HW, *RESTRICT cr = dmC + b * HW, *RESTRICT mr = dmx + b * HW, *RESTRICT xm = smax + b * HW;
            T *RESTRICT o = dx + p * HW;
#pragma omp simd
            for (int64_t j = 0; j < HW; ++j) {
                const T xv = xr[j];
                const T dy = gr[j] * sr[j] + cr[j] + (xv * ac == xm[j] ? mr[j] : T(0));
                o[j] = dy * ac + av + (xv == cm ? mv : T(0));
            }
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t bp = 0; bp < d.B * HW; ++bp) {
        const int64_t b = bp / HW;
        const T *RESTRICT xr = x + bp * C, *RESTRICT gr = g + bp * C, *RESTRICT ab = a + b * C;
        const T *RESTRICT av = avgc.data() + b * C, *RESTRICT mv = maxc.data() + b * C, *RESTRICT cm = cmax + b * C;
        const T sp = s[bp], cp = dmC[bp], mp = dmx[bp], xm = smax[bp];
        T *RESTRICT o = dx + bp * C;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) {
            const T xv = xr[j];
            const T dy = gr[j] * sp + cp + (xv * ab[j] == xm ? mp : T(0));
            o[j] = dy * ab[j] + av[j] + (xv == cm[j] ? mv[j] : T(0));
        }
    }
}

// ---------------------------------------------------------------- bindings: check, dispatch on the element type

bool is_f64(const char *op, const py::array &x) {
    if (x.dtype().is(py::dtype::of<float>())) return false;
    if (x.dtype().is(py::dtype::of<double>())) return true;
    throw std::invalid_argument(std::string(op) + ": x must be float32 (or float64); got dtype " + std::string(py::str(x.dtype())));
}

template <typename T> py::tuple channel_pool_t(const py::array &xa, bool cl) {
    const char *op = "cbam_channel_pool";
    Dims d = big_dims(op, xa, cl);
    const T *x = arg<T>(op, "x", xa, big_shape(d));
    auto cavg = new_array<T>(bc_shape(d)), cmax = new_array<T>(bc_shape(d)), ccnt = new_array<T>(bc_shape(d));
    T *p0 = cavg.mutable_data(), *p1 = cmax.mutable_data(), *p2 = ccnt.mutable_data();
    { py::gil_scoped_release nogil; channel_pool_impl<T>(d, x, p0, p1, p2); }
    return py::make_tuple(cavg, cmax, ccnt);
}

template <typename T> py::tuple spatial_pool_t(const py::array &xa, const py::array &aa, bool cl) {
    const char *op = "cbam_spatial_pool";
    Dims d = big_dims(op, xa, cl);
    const T *x = arg<T>(op, "x", xa, big_shape(d)), *a = arg<T>(op, "a", aa, bc_shape(d));
    auto sm = new_array<T>(bp_shape(d)), sx = new_array<T>(bp_shape(d)), sc = new_array<T>(bp_shape(d));
    T *p0 = sm.mutable_data(), *p1 = sx.mutable_data(), *p2 = sc.mutable_data();
    { py::gil_scoped_release nogil; spatial_pool_impl<T>(d, x, a, p0, p1, p2); }
    return py::make_tuple(sm, sx, sc);
}

template <typename T> py::array apply_gates_t(const py::array &xa, const py::array &aa, const py::array &sa, bool cl) {
    const char *op = "cbam_apply_gates";
    Dims d = big_dims(op, xa, cl);
    const T *x = arg<T>(op, "x", xa, big_shape(d)), *a = arg<T>(op, "a", aa, bc_shape(d)), *s = arg<T>(op, "s", sa, bp_shape(d));
    auto out = new_array<T>(big_shape(d));
    T *o = out.mutable_data();
    { py::gil_scoped_release nogil; apply_gates_impl<T>(d, x, a, s, o); }
    return std::move(out);
}

template <typename T> py::array spatial_gate_grad_t(const py::array &ga, const py::array &xa, const py::array &aa, bool cl) {
    const char *op = "cbam_spatial_gate_grad";
    Dims d = big_dims(op, xa, cl);
    const T *g = arg<T>(op, "g", ga, big_shape(d)), *x = arg<T>(op, "x", xa, big_shape(d)), *a = arg<T>(op, "a", aa, bc_shape(d));
    auto ds = new_array<T>(bp_shape(d));
    T *o = ds.mutable_data();
    { py::gil_scoped_release nogil; spatial_gate_grad_impl<T>(d, g, x, a, o); }
    return std::move(ds);
}

template <typename T>
py::array channel_gate_grad_t(const py::array &ga, const py::array &xa, const py::array &aa, const py::array &sa,
                              const py::array &dmeana, const py::array &dmaxa, const py::array &smaxa, const py::array &scnta, bool cl) {
    const char *op = "cbam_channel_gate_grad";
    Dims d = big_dims(op, xa, cl);
    const auto B = big_shape(d), BC = bc_shape(d), BP = bp_shape(d);
    const T *g = arg<T>(op, "g", ga, B), *x = arg<T>(op, "x", xa, B), *a = arg<T>(op, "a", aa, BC), *s = arg<T>(op, "s", sa, BP);
    const T *dmean = arg<T>(op, "dmean", dmeana, BP), *dmax = arg<T>(op, "dmax", dmaxa, BP);
    const T *smax = arg<T>(op, "smax", smaxa, BP), *scnt = arg<T>(op, "scnt", scnta, BP);
    auto da = new_array<T>(BC);
    T *o = da.mutable_data();
    { py::gil_scoped_release nogil; channel_gate_grad_impl<T>(d, g, x, a, s, dmean, dmax, smax, scnt, o); }
    return std::move(da);
}

template <typename T>
py::array input_grad_t(const py::array &ga, const py::array &xa, const py::array &aa, const py::array &sa,
                       const py::array &dmeana, const py::array &dmaxa, const py::array &smaxa, const py::array &scnta,
                       const py::array &dcavga, const py::array &dcmaxa, const py::array &cmaxa, const py::array &ccnta, bool cl) {
    const char *op = "cbam_input_grad";
    Dims d = big_dims(op, xa, cl);
    const auto B = big_shape(d), BC = bc_shape(d), BP = bp_shape(d);
    const T *g = arg<T>(op, "g", ga, B), *x = arg<T>(op, "x", xa, B), *a = arg<T>(op, "a", aa, BC), *s = arg<T>(op, "s", sa, BP);
    const T *dmean = arg<T>(op, "dmean", dmeana, BP), *dmax = arg<T>(op, "dmax", dmaxa, BP);
    const T *smax = arg<T>(op, "smax", smaxa, BP), *scnt = arg<T>(op, "scnt", scnta, BP);
    const T *dcavg = arg<T>(op, "dcavg", dcavga, BC), *dcmax = arg<T>(op, "dcmax", dcmaxa, BC);
    const T *cmax = arg<T>(op, "cmax", cmaxa, BC), *ccnt = arg<T>(op, "ccnt", ccnta, BC);
    auto dx = new_array<T>(B);
    T *o = dx.mutable_data();
    { py::gil_scoped_release nogil; input_grad_impl<T>(d, g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt, o); }
    return std::move(dx);
}

py::tuple channel_pool(const py::array &x, bool cl) {
    return is_f64("cbam_channel_pool", x) ? channel_pool_t<double>(x, cl) : channel_pool_t<float>(x, cl);
}
py::tuple spatial_pool(const py::array &x, const py::array &a, bool cl) {
    return is_f64("cbam_spatial_pool", x) ? spatial_pool_t<double>(x, a, cl) : spatial_pool_t<float>(x, a, cl);
}
py::array apply_gates(const py::array &x, const py::array &a, const py::array &s, bool cl) {
    return is_f64("cbam_apply_gates", x) ? apply_gates_t<double>(x, a, s, cl) : apply_gates_t<float>(x, a, s, cl);
}
py::array spatial_gate_grad(const py::array &g, const py::array &x, const py::array &a, bool cl) {
    return is_f64("cbam_spatial_gate_grad", x) ? spatial_gate_grad_t<double>(g, x, a, cl) : spatial_gate_grad_t<float>(g, x, a, cl);
}
py::array channel_gate_grad(const py::array &g, const py::array &x, const py::array &a, const py::array &s, const py::array &dmean,
                            const py::array &dmax, const py::array &smax, const py::array &scnt, bool cl) {
    return is_f64("cbam_channel_gate_grad", x) ? channel_gate_grad_t<double>(g, x, a, s, dmean, dmax, smax, scnt, cl)
                                               : channel_gate_grad_t<float>(g, x, a, s, dmean, dmax, smax, scnt, cl);
}
py::array input_grad(const py::array &g, const py::array &x, const py::array &a, const py::array &s, const py::array &dmean,
                     const py::array &dmax, const py::array &smax, const py::array &scnt, const py::array &dcavg,
                     const py::array &dcmax, const py::array &cmax, const py::array &ccnt, bool cl) {
    return is_f64("cbam_input_grad", x) ? input_grad_t<double>(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt, cl)
                                        : input_grad_t<float>(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt, cl);
}

}  // namespace

#define CBAM_LAYOUT "\nBig arrays are C-contiguous (B, C, H, W), or (B, H, W, C) with channels_last=True; small ones are " \
                    "(B, C) and (B, H, W); all float32 (or all float64)."

void init_cbam(py::module_ &m) {
    m.def("cbam_channel_pool", &channel_pool, py::arg("x"), py::arg("channels_last") = false,
          "CBAM F1: per (b, c) mean, max and number of maxima of x over the pixels -> (cavg, cmax, ccnt)." CBAM_LAYOUT);
    m.def("cbam_spatial_pool", &spatial_pool, py::arg("x"), py::arg("a"), py::arg("channels_last") = false,
          "CBAM F2: per (b, h, w) mean, max and number of maxima of x * a over the channels -> (smean, smax, scnt)." CBAM_LAYOUT);
    m.def("cbam_apply_gates", &apply_gates, py::arg("x"), py::arg("a"), py::arg("s"), py::arg("channels_last") = false,
          "CBAM F3: out = (x * a[b, c]) * s[b, h, w], in x's layout." CBAM_LAYOUT);
    m.def("cbam_spatial_gate_grad", &spatial_gate_grad, py::arg("g"), py::arg("x"), py::arg("a"), py::arg("channels_last") = false,
          "CBAM B1: ds[b, h, w] = sum_c g * (x * a)." CBAM_LAYOUT);
    m.def("cbam_channel_gate_grad", &channel_gate_grad, py::arg("g"), py::arg("x"), py::arg("a"), py::arg("s"), py::arg("dmean"),
          py::arg("dmax"), py::arg("smax"), py::arg("scnt"), py::arg("channels_last") = false,
          "CBAM B2: da[b, c] = sum_p dy1 * x, dy1 = g s + dmean / C + [x a == smax] dmax / scnt." CBAM_LAYOUT);
    m.def("cbam_input_grad", &input_grad, py::arg("g"), py::arg("x"), py::arg("a"), py::arg("s"), py::arg("dmean"), py::arg("dmax"),
          py::arg("smax"), py::arg("scnt"), py::arg("dcavg"), py::arg("dcmax"), py::arg("cmax"), py::arg("ccnt"),
          py::arg("channels_last") = false,
          "CBAM B3: dx = dy1 a + dcavg / (H W) + [x == cmax] dcmax / ccnt." CBAM_LAYOUT);
}
