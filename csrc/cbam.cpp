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
// depend on the thread count (they may differ in the last bits between the AVX2 and baseline builds of the workers,
// i.e. between machines). Sums over pixels are accumulated in float blocks of BLK elements added into double.
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

// The per-item workers below are compiled twice where GCC can (x86-64 Linux): baseline x86-64 (SSE2) and AVX2, the
// clone chosen once at load time by the CPU's features. The build itself targets baseline x86-64 and the OpenMP loops
// that call the workers stay baseline code.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

// Sum, max and number of elements equal to the max of v[0..n), n >= 1, merged into (total, mx, cnt).
template <typename T> inline void sum_max_count(const T *RESTRICT v, int64_t n, double &total, T &mx, T &cnt) {
    T s = 0, m = v[0];
#pragma omp simd reduction(+ : s) reduction(max : m)
    for (int64_t j = 0; j < n; ++j) { s += v[j]; m = v[j] > m ? v[j] : m; }
    T c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t j = 0; j < n; ++j) c += v[j] == m ? T(1) : T(0);
    total += s;
    if (m > mx) { mx = m; cnt = c; }
    else if (m == mx) cnt += c;
}

// Running (sum, max, count) of rows updated with row v: the per-lane form, branch-free (GCC keeps float selects as
// branches under -ftrapping-math; these integer masks vectorise). v > m: count 1; v == m: count + 1; else count.
template <typename T> inline void update_smc(const T *RESTRICT v, T *RESTRICT s, T *RESTRICT m, T *RESTRICT c, int64_t n) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        const T vj = v[j], mj = m[j], cj = c[j];
        const int gt = vj > mj, ge = vj >= mj;
        s[j] += vj;
        c[j] = cj * (T)(1 - gt) + (T)ge;
        m[j] = vj > mj ? vj : mj;
    }
}

// ---------------------------------------------------------------- F1 channel_pool
// NCHW: one plane (b, c) per item, reduced in blocks of BLK (float sums added into double).
template <typename T> CLONES void f1_plane(const T *RESTRICT xp, int64_t HW, T *avg, T *mxo, T *cnto) {
    double total = 0;
    T mx = -std::numeric_limits<T>::infinity(), cnt = 0;
    for (int64_t b0 = 0; b0 < HW; b0 += BLK) sum_max_count(xp + b0, std::min(BLK, HW - b0), total, mx, cnt);
    *avg = (T)(total / (double)HW); *mxo = mx; *cnto = cnt;
}

// channels-last: partial (sum, max, count) per channel over pixels [p0, p1) of one image.
template <typename T> CLONES void f1_chunk(const T *RESTRICT x, int64_t C, int64_t n, T *RESTRICT s, T *RESTRICT m, T *RESTRICT c) {
    for (int64_t j = 0; j < C; ++j) { s[j] = x[j]; m[j] = x[j]; c[j] = 1; }
    for (int64_t p = 1; p < n; ++p) update_smc(x + p * C, s, m, c, C);
}

template <typename T> void channel_pool_impl(const Dims &d, const T *x, T *cavg, T *cmax, T *ccnt) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < d.B * C; ++p) f1_plane(x + p * HW, HW, cavg + p, cmax + p, ccnt + p);
        return;
    }
    // fixed pixel chunks (not thread-dependent), combined in chunk order
    const int64_t nch = (HW + CHUNK - 1) / CHUNK;
    std::vector<T> ps(d.B * nch * C), pm(d.B * nch * C), pc(d.B * nch * C);
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < d.B * nch; ++item) {
        const int64_t b = item / nch, p0 = (item % nch) * CHUNK, n = std::min(HW, p0 + CHUNK) - p0;
        f1_chunk(x + (b * HW + p0) * C, C, n, ps.data() + item * C, pm.data() + item * C, pc.data() + item * C);
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
// NCHW: pixels [p0, p0+n) of image b, reduced over the channels (row by row, each row streamed once; the running
// sum, max and count live in s, m, c, L1-resident).
template <typename T>
CLONES void f2_tile(const T *RESTRICT xb, const T *RESTRICT ab, int64_t C, int64_t HW, int64_t n, T *RESTRICT y,
                    T *RESTRICT s, T *RESTRICT m, T *RESTRICT c, T *RESTRICT om, T *RESTRICT ox, T *RESTRICT oc) {
    {
        const T a0 = ab[0];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) { const T v = xb[j] * a0; s[j] = v; m[j] = v; c[j] = 1; }
    }
    for (int64_t ch = 1; ch < C; ++ch) {
        const T *RESTRICT r = xb + ch * HW;
        const T ac = ab[ch];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) y[j] = r[j] * ac;
        update_smc(y, s, m, c, n);
    }
    const T invC = T(1) / (T)C;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) { om[j] = s[j] * invC; ox[j] = m[j]; oc[j] = c[j]; }
}

// channels-last: pixels [0, n) each reduced over its contiguous channels.
template <typename T>
CLONES void f2_pixels(const T *RESTRICT x, const T *RESTRICT ab, int64_t C, int64_t n, T *RESTRICT y,
                      T *RESTRICT om, T *RESTRICT ox, T *RESTRICT oc) {
    const T invC = T(1) / (T)C;
    for (int64_t p = 0; p < n; ++p) {
        const T *RESTRICT r = x + p * C;
        double total = 0;
        T mx = -std::numeric_limits<T>::infinity(), cnt = 0;
        for (int64_t c0 = 0; c0 < C; c0 += BLK) {
            const int64_t k = std::min(BLK, C - c0);
#pragma omp simd
            for (int64_t j = 0; j < k; ++j) y[j] = r[c0 + j] * ab[c0 + j];
            sum_max_count(y, k, total, mx, cnt);
        }
        om[p] = (T)total * invC; ox[p] = mx; oc[p] = cnt;
    }
}

template <typename T> void spatial_pool_impl(const Dims &d, const T *x, const T *a, T *smean, T *smax, T *scnt) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
        const int64_t tile = pixel_tile(d), nt = (HW + tile - 1) / tile;
#pragma omp parallel
        {
            std::vector<T> buf(4 * tile);
#pragma omp for schedule(static)
            for (int64_t item = 0; item < d.B * nt; ++item) {
                const int64_t b = item / nt, p0 = (item % nt) * tile, n = std::min(tile, HW - p0), o = b * HW + p0;
                f2_tile(x + b * C * HW + p0, a + b * C, C, HW, n, buf.data(), buf.data() + tile, buf.data() + 2 * tile,
                        buf.data() + 3 * tile, smean + o, smax + o, scnt + o);
            }
        }
        return;
    }
    const int64_t nch = (d.B * HW + CHUNK - 1) / CHUNK;
#pragma omp parallel
    {
        std::vector<T> y(std::min<int64_t>(C, BLK));
#pragma omp for schedule(static)
        for (int64_t item = 0; item < nch; ++item) {
            // a chunk of pixels may span two images: split it at the image boundary
            for (int64_t p = item * CHUNK, end = std::min(d.B * HW, p + CHUNK); p < end;) {
                const int64_t b = p / HW, n = std::min(end, (b + 1) * HW) - p;
                f2_pixels(x + p * C, a + b * C, C, n, y.data(), smean + p, smax + p, scnt + p);
                p += n;
            }
        }
    }
}

// ---------------------------------------------------------------- F3 apply_gates
template <typename T> CLONES void f3_row(const T *RESTRICT x, T ac, const T *RESTRICT s, int64_t n, T *RESTRICT o) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) o[j] = (x[j] * ac) * s[j];
}
template <typename T> CLONES void f3_pixels(const T *RESTRICT x, const T *RESTRICT ab, const T *RESTRICT s, int64_t C, int64_t n, T *RESTRICT o) {
    for (int64_t p = 0; p < n; ++p) {
        const T sp = s[p];
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) o[p * C + j] = (x[p * C + j] * ab[j]) * sp;
    }
}

template <typename T> void apply_gates_impl(const Dims &d, const T *x, const T *a, const T *s, T *out) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < d.B * C; ++p) f3_row(x + p * HW, a[p], s + (p / C) * HW, HW, out + p * HW);
        return;
    }
    const int64_t nch = (d.B * HW + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < nch; ++item)
        for (int64_t p = item * CHUNK, end = std::min(d.B * HW, p + CHUNK); p < end;) {
            const int64_t b = p / HW, n = std::min(end, (b + 1) * HW) - p;
            f3_pixels(x + p * C, a + b * C, s + p, C, n, out + p * C);
            p += n;
        }
}

// ---------------------------------------------------------------- B1 spatial_gate_grad
template <typename T>
CLONES void b1_tile(const T *RESTRICT gb, const T *RESTRICT xb, const T *RESTRICT ab, int64_t C, int64_t HW, int64_t n, T *RESTRICT out) {
    {
        const T a0 = ab[0];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) out[j] = gb[j] * (xb[j] * a0);
    }
    for (int64_t ch = 1; ch < C; ++ch) {
        const T *RESTRICT g = gb + ch * HW, *RESTRICT x = xb + ch * HW;
        const T ac = ab[ch];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) out[j] += g[j] * (x[j] * ac);
    }
}
template <typename T>
CLONES void b1_pixels(const T *RESTRICT g, const T *RESTRICT x, const T *RESTRICT ab, int64_t C, int64_t n, T *RESTRICT out) {
    for (int64_t p = 0; p < n; ++p) {
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < C; ++j) acc += g[p * C + j] * (x[p * C + j] * ab[j]);
        out[p] = acc;
    }
}

template <typename T> void spatial_gate_grad_impl(const Dims &d, const T *g, const T *x, const T *a, T *ds) {
    const int64_t HW = d.HW, C = d.C;
    if (!d.cl) {
        const int64_t tile = pixel_tile(d), nt = (HW + tile - 1) / tile;
#pragma omp parallel for schedule(static)
        for (int64_t item = 0; item < d.B * nt; ++item) {
            const int64_t b = item / nt, p0 = (item % nt) * tile, n = std::min(tile, HW - p0);
            b1_tile(g + b * C * HW + p0, x + b * C * HW + p0, a + b * C, C, HW, n, ds + b * HW + p0);
        }
        return;
    }
    const int64_t nch = (d.B * HW + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < nch; ++item)
        for (int64_t p = item * CHUNK, end = std::min(d.B * HW, p + CHUNK); p < end;) {
            const int64_t b = p / HW, n = std::min(end, (b + 1) * HW) - p;
            b1_pixels(g + p * C, x + p * C, a + b * C, C, n, ds + p);
            p += n;
        }
}

// Per-pixel coefficients of dy1 shared by B2 and B3: dmC = dmean / C, dmx = dmax / scnt.
template <typename T>
void pixel_coefs(const Dims &d, const T *dmean, const T *dmax, const T *scnt, std::vector<T> &dmC, std::vector<T> &dmx) {
    const int64_t n = d.B * d.HW;
    dmC.resize(n); dmx.resize(n);
    const T C = (T)d.C;
    T *RESTRICT pc = dmC.data(), *RESTRICT px = dmx.data();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) { pc[i] = dmean[i] / C; px[i] = dmax[i] / scnt[i]; }
}

// dy1 = g s + dmean / C + [x a == smax] dmax / scnt, with the tie test on x * a computed as in F2.
#define CBAM_DY1(gv, xv, av, sv, cv, xmv, mv) ((gv) * (sv) + (cv) + ((xv) * (av) == (xmv) ? (mv) : T(0)))

// ---------------------------------------------------------------- B2 channel_gate_grad
template <typename T>
CLONES T b2_plane(const T *RESTRICT g, const T *RESTRICT x, T ac, const T *RESTRICT s, const T *RESTRICT dmC,
                  const T *RESTRICT dmx, const T *RESTRICT smax, int64_t HW) {
    double total = 0;
    for (int64_t b0 = 0; b0 < HW; b0 += BLK) {
        const int64_t e = std::min(HW, b0 + BLK);
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = b0; j < e; ++j) {
            const T xv = x[j], mj = dmx[j];
            acc += CBAM_DY1(g[j], xv, ac, s[j], dmC[j], smax[j], mj) * xv;
        }
        total += acc;
    }
    return (T)total;
}
template <typename T>
CLONES void b2_chunk(const T *RESTRICT g, const T *RESTRICT x, const T *RESTRICT ab, const T *RESTRICT s, const T *RESTRICT dmC,
                     const T *RESTRICT dmx, const T *RESTRICT smax, int64_t C, int64_t n, T *RESTRICT acc) {
    for (int64_t j = 0; j < C; ++j) acc[j] = 0;
    for (int64_t p = 0; p < n; ++p) {
        const T sp = s[p], cp = dmC[p], mp = dmx[p], xm = smax[p];
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) {
            const T xv = x[p * C + j], aj = ab[j];
            acc[j] += CBAM_DY1(g[p * C + j], xv, aj, sp, cp, xm, mp) * xv;
        }
    }
}

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
            const int64_t o = (p / C) * HW;
            da[p] = b2_plane(g + p * HW, x + p * HW, a[p], s + o, dmC + o, dmx + o, smax + o, HW);
        }
        return;
    }
    const int64_t nch = (HW + CHUNK - 1) / CHUNK;
    std::vector<T> part(d.B * nch * C);
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < d.B * nch; ++item) {
        const int64_t b = item / nch, p0 = b * HW + (item % nch) * CHUNK, n = std::min((b + 1) * HW, p0 + CHUNK) - p0;
        b2_chunk(g + p0 * C, x + p0 * C, a + b * C, s + p0, dmC + p0, dmx + p0, smax + p0, C, n, part.data() + item * C);
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
// dx = dy1 a + dcavg / HW + [x == cmax] dcmax / ccnt
template <typename T>
CLONES void b3_row(const T *RESTRICT g, const T *RESTRICT x, T ac, T av, T mv, T cm, const T *RESTRICT s, const T *RESTRICT dmC,
                   const T *RESTRICT dmx, const T *RESTRICT smax, int64_t n, T *RESTRICT o) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        const T xv = x[j], mj = dmx[j];
        o[j] = CBAM_DY1(g[j], xv, ac, s[j], dmC[j], smax[j], mj) * ac + av + (xv == cm ? mv : T(0));
    }
}
template <typename T>
CLONES void b3_pixels(const T *RESTRICT g, const T *RESTRICT x, const T *RESTRICT ab, const T *RESTRICT av, const T *RESTRICT mv,
                      const T *RESTRICT cm, const T *RESTRICT s, const T *RESTRICT dmC, const T *RESTRICT dmx,
                      const T *RESTRICT smax, int64_t C, int64_t n, T *RESTRICT o) {
    for (int64_t p = 0; p < n; ++p) {
        const T sp = s[p], cp = dmC[p], mp = dmx[p], xm = smax[p];
#pragma omp simd
        for (int64_t j = 0; j < C; ++j) {
            const T xv = x[p * C + j], aj = ab[j], avj = av[j], mvj = mv[j], cmj = cm[j];
            o[p * C + j] = CBAM_DY1(g[p * C + j], xv, aj, sp, cp, xm, mp) * aj + avj + (xv == cmj ? mvj : T(0));
        }
    }
}

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
            const int64_t o = (p / C) * HW;
            b3_row(g + p * HW, x + p * HW, a[p], avgc[p], maxc[p], cmax[p], s + o, dmC + o, dmx + o, smax + o, HW, dx + p * HW);
        }
        return;
    }
    const int64_t nch = (d.B * HW + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < nch; ++item)
        for (int64_t p = item * CHUNK, end = std::min(d.B * HW, p + CHUNK); p < end;) {
            const int64_t b = p / HW, n = std::min(end, (b + 1) * HW) - p, bc = b * C;
            b3_pixels(g + p * C, x + p * C, a + bc, avgc.data() + bc, maxc.data() + bc, cmax + bc, s + p, dmC + p, dmx + p,
                      smax + p, C, n, dx + p * C);
            p += n;
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
