// SSIM forward + hand-written backward on raw float32 or float64 planes (pybind11 + OpenMP, no torch headers).
// The kernels are templates over the scalar type T; the Python functions dispatch on the dtype of x and y
// (float32 -> T=float, float64 -> T=double, anything else is a TypeError). float64 exists for exact checks
// (gradcheck, comparisons with a float64 reference); float32 is the fast path.
//
// Conventions follow pytorch-msssim's `ssim(..., win_size, win_sigma, K)`: a normalised 1-D Gaussian window g
// (size `win`, odd), separable "valid" blur (output (H-win+1) x (W-win+1)), population (co)variances from the
// blurred moments, C1=(K1*L)^2, C2=(K2*L)^2, per-plane value = mean of the SSIM map.
//
// Numerics: every plane is shifted by its own mean (x' = x - cx, y' = y - cy) before the moments are blurred.
// Covariances are shift invariant and the means are shifted back, so the function is unchanged, but
// E[x'^2] - mu_x'^2 cancels far less in float32. The blurs are accumulated in T, row sums of the map in double.
//
// Work layout: one work item is one (plane, output row). Forward item i: vertical blur of the 5 moments
// (x', y', x'^2, y'^2, x'y', products formed on the fly) into 5 rows of width W, horizontal blur into 5 rows of
// width Wo, then the SSIM map row. Backward item r: vertical "transpose blur" (gather form, zero padding) of the
// 4 coefficient maps into 4 padded rows, horizontal transpose blur, then the combination into dx, dy.
//
// Backward, with A1=2mx my+C1, A2=2vxy+C2, B1=mx^2+my^2+C1, B2=vxx+vyy+C2, S=A1A2/(B1B2), s=grad_out/Npix and
// mx = mu_x'+cx, vxx = E[x'^2]-mu_x'^2, vxy = E[x'y']-mu_x' mu_y' (cx, cy held constant: S does not depend on them):
//   dS/dA1 = A2/(B1B2), dS/dA2 = A1/(B1B2), dS/dB1 = -S/B1, dS/dB2 = -S/B2
//   gv = dS/dB2 (coefficient of E[x'^2] and E[y'^2]),  gc = 2 dS/dA2 (coefficient of E[x'y'])
//   ax = 2my dS/dA1 + 2mx dS/dB1 - 2mu_x' gv - mu_y' gc   (coefficient of mu_x'), ay symmetric
//   dL/dx = s (T(ax) + 2x' T(gv) + y' T(gc)),  dL/dy = s (T(ay) + 2y' T(gv) + x' T(gc))
// where T is the transpose of the valid blur (full correlation with zero padding).
// The 4 coefficient maps (ax, ay, gv, gc, unscaled) are what backward needs: they are either recomputed by
// `ssim_backward` or saved by `ssim_forward(..., save=True)` and handed back through `saved=`.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
template <typename T> using tarr = py::array_t<T, py::array::c_style | py::array::forcecast>;

#if defined(__GNUC__) || defined(__clang__)
#define RESTRICT __restrict__
#else
#define RESTRICT __restrict
#endif

namespace {

template <typename T> struct Geom {
    int64_t P, H, W;
    int win, Ho, Wo;
    T c1, c2;
    std::vector<T> g;
};

template <typename T> std::vector<T> gaussian(int win, double sigma) {
    std::vector<double> d(win);
    double s = 0;
    for (int t = 0; t < win; ++t) { double c = t - win / 2; d[t] = std::exp(-(c * c) / (2 * sigma * sigma)); s += d[t]; }
    std::vector<T> g(win);
    for (int t = 0; t < win; ++t) g[t] = (T)(d[t] / s);
    return g;
}

std::string shape_str(const py::array &a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) { if (i) s += ", "; s += std::to_string(a.shape(i)); }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

template <typename T> Geom<T> check_args(const tarr<T> &x, const tarr<T> &y, int win, double c1, double c2, double sigma) {
    if (x.ndim() != 3 || y.ndim() != 3)
        throw std::invalid_argument("ssim: x and y must have shape (planes, H, W); got x " + shape_str(x) + " and y " + shape_str(y));
    for (int i = 0; i < 3; ++i)
        if (x.shape(i) != y.shape(i))
            throw std::invalid_argument("ssim: x and y must have the same shape; got x " + shape_str(x) + " and y " + shape_str(y));
    if (win < 1 || win % 2 == 0)
        throw std::invalid_argument("ssim: win must be a positive odd integer; got " + std::to_string(win));
    if (!(sigma > 0)) throw std::invalid_argument("ssim: sigma must be > 0; got " + std::to_string(sigma));
    if (!(c1 >= 0) || !(c2 >= 0)) throw std::invalid_argument("ssim: c1 and c2 must be >= 0");
    Geom<T> G;
    G.P = x.shape(0); G.H = x.shape(1); G.W = x.shape(2);
    if (G.H < win || G.W < win)
        throw std::invalid_argument("ssim: image size " + std::to_string(G.H) + "x" + std::to_string(G.W) +
                                    " (HxW) is smaller than the window size " + std::to_string(win) + "; H and W must be >= win");
    G.win = win; G.Ho = (int)(G.H - win + 1); G.Wo = (int)(G.W - win + 1);
    G.c1 = (T)c1; G.c2 = (T)c2;
    G.g = gaussian<T>(win, sigma);
    return G;
}

// Per-plane means (the shifts cx, cy).
template <typename T> void plane_means(const Geom<T> &G, const T *x, const T *y, T *shift) {
    const int64_t n = G.H * G.W;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < G.P; ++p) {
        const T *xp = x + p * n, *yp = y + p * n;
        double sx = 0, sy = 0;
        for (int64_t k = 0; k < n; ++k) { sx += xp[k]; sy += yp[k]; }
        shift[2 * p] = (T)(sx / n); shift[2 * p + 1] = (T)(sy / n);
    }
}

// Forward for every (plane, valid row): row sums of the SSIM map into rowsum[P*Ho]; if coef != nullptr the 4
// unscaled coefficient maps are written to coef laid out (P, 4, Ho, Wo).
template <typename T>
void forward_rows(const Geom<T> &G, const T *x, const T *y, const T *shift, double *rowsum, T *coef) {
    const int64_t W = G.W, Wo = G.Wo, Ho = G.Ho, HW = G.H * G.W, map = Ho * Wo;
    const int win = G.win;
    const T C1 = G.c1, C2 = G.c2;
    const T *g = G.g.data();
#pragma omp parallel
    {
        std::vector<T> vb(5 * W), hb(5 * Wo);
        T *RESTRICT v0 = vb.data(), *RESTRICT v1 = v0 + W, *RESTRICT v2 = v1 + W, *RESTRICT v3 = v2 + W, *RESTRICT v4 = v3 + W;
        T *RESTRICT h0 = hb.data(), *RESTRICT h1 = h0 + Wo, *RESTRICT h2 = h1 + Wo, *RESTRICT h3 = h2 + Wo, *RESTRICT h4 = h3 + Wo;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < G.P * Ho; ++item) {
            const int64_t p = item / Ho, i = item % Ho;
            const T cx = shift[2 * p], cy = shift[2 * p + 1];
            // vertical blur of the 5 moments over rows i .. i+win-1
            std::fill(vb.begin(), vb.end(), T(0));
            for (int t = 0; t < win; ++t) {
                const T *RESTRICT xr = x + p * HW + (i + t) * W;
                const T *RESTRICT yr = y + p * HW + (i + t) * W;
                const T gt = g[t];
                for (int64_t c = 0; c < W; ++c) {
                    const T a = xr[c] - cx, b = yr[c] - cy;
                    v0[c] += gt * a; v1[c] += gt * b;
                    v2[c] += gt * (a * a); v3[c] += gt * (b * b); v4[c] += gt * (a * b);
                }
            }
            // horizontal blur
            std::fill(hb.begin(), hb.end(), T(0));
            for (int u = 0; u < win; ++u) {
                const T gu = g[u];
                for (int64_t j = 0; j < Wo; ++j) {
                    h0[j] += gu * v0[j + u]; h1[j] += gu * v1[j + u]; h2[j] += gu * v2[j + u];
                    h3[j] += gu * v3[j + u]; h4[j] += gu * v4[j + u];
                }
            }
            // SSIM map row (+ coefficient maps)
            T sum = T(0);
            if (coef) {
                T *RESTRICT ax = coef + p * 4 * map + i * Wo, *RESTRICT ay = ax + map, *RESTRICT gv = ay + map, *RESTRICT gc = gv + map;
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < Wo; ++j) {
                    const T ux = h0[j], uy = h1[j];
                    const T vxx = h2[j] - ux * ux, vyy = h3[j] - uy * uy, vxy = h4[j] - ux * uy;
                    const T mx = ux + cx, my = uy + cy;
                    const T A1 = T(2) * mx * my + C1, A2 = T(2) * vxy + C2;
                    const T B1 = mx * mx + my * my + C1, B2 = vxx + vyy + C2;
                    const T invD = T(1) / (B1 * B2);
                    const T S = A1 * A2 * invD;
                    sum += S;
                    const T dA1 = A2 * invD, dA2 = A1 * invD, dB1 = -S / B1, dB2 = -S / B2;
                    const T c = T(2) * dA2;
                    gv[j] = dB2; gc[j] = c;
                    ax[j] = T(2) * (my * dA1 + mx * dB1) - T(2) * ux * dB2 - uy * c;
                    ay[j] = T(2) * (mx * dA1 + my * dB1) - T(2) * uy * dB2 - ux * c;
                }
            } else {
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < Wo; ++j) {
                    const T ux = h0[j], uy = h1[j];
                    const T vxx = h2[j] - ux * ux, vyy = h3[j] - uy * uy, vxy = h4[j] - ux * uy;
                    const T mx = ux + cx, my = uy + cy;
                    const T A1 = T(2) * mx * my + C1, A2 = T(2) * vxy + C2;
                    const T B1 = mx * mx + my * my + C1, B2 = vxx + vyy + C2;
                    sum += (A1 * A2) / (B1 * B2);
                }
            }
            rowsum[item] = sum;
        }
    }
}

// Backward from the coefficient maps (P, 4, Ho, Wo): dx, dy (P, H, W).
template <typename T>
void backward_rows(const Geom<T> &G, const T *x, const T *y, const T *shift, const T *coef,
                   const T *grad, T *dx, T *dy) {
    const int64_t W = G.W, Wo = G.Wo, Ho = G.Ho, H = G.H, HW = G.H * G.W, map = Ho * Wo;
    const int win = G.win;
    const int64_t PW = W + win - 1;  // padded row: (win-1) zeros, Wo values, (win-1) zeros
    const T *g = G.g.data();
    const T inv_n = T(1) / T(map);
#pragma omp parallel
    {
        std::vector<T> pb(4 * PW, T(0)), ob(4 * W);
        T *RESTRICT p0 = pb.data(), *RESTRICT p1 = p0 + PW, *RESTRICT p2 = p1 + PW, *RESTRICT p3 = p2 + PW;
        T *RESTRICT o0 = ob.data(), *RESTRICT o1 = o0 + W, *RESTRICT o2 = o1 + W, *RESTRICT o3 = o2 + W;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < G.P * H; ++item) {
            const int64_t p = item / H, r = item % H;
            const T s = grad[p] * inv_n;
            const T cx = shift[2 * p], cy = shift[2 * p + 1];
            const T *m0 = coef + p * 4 * map, *m1 = m0 + map, *m2 = m1 + map, *m3 = m2 + map;
            // vertical transpose blur (gather): row r collects valid rows i = r - t, 0 <= i < Ho
            T *RESTRICT q0 = p0 + (win - 1), *RESTRICT q1 = p1 + (win - 1), *RESTRICT q2 = p2 + (win - 1), *RESTRICT q3 = p3 + (win - 1);
            std::fill(q0, q0 + Wo, T(0)); std::fill(q1, q1 + Wo, T(0)); std::fill(q2, q2 + Wo, T(0)); std::fill(q3, q3 + Wo, T(0));
            const int t0 = (int)std::max<int64_t>(0, r - (Ho - 1)), t1 = (int)std::min<int64_t>(win - 1, r);
            for (int t = t0; t <= t1; ++t) {
                const int64_t off = (r - t) * Wo;
                const T *RESTRICT a0 = m0 + off, *RESTRICT a1 = m1 + off, *RESTRICT a2 = m2 + off, *RESTRICT a3 = m3 + off;
                const T gt = g[t];
                for (int64_t j = 0; j < Wo; ++j) { q0[j] += gt * a0[j]; q1[j] += gt * a1[j]; q2[j] += gt * a2[j]; q3[j] += gt * a3[j]; }
            }
            // horizontal transpose blur: o[c] = sum_u g[u] * q[c - u]  (= p[c + win-1 - u])
            std::fill(ob.begin(), ob.end(), T(0));
            for (int u = 0; u < win; ++u) {
                const T gu = g[u];
                const int64_t sh = win - 1 - u;
                for (int64_t c = 0; c < W; ++c) {
                    o0[c] += gu * p0[c + sh]; o1[c] += gu * p1[c + sh]; o2[c] += gu * p2[c + sh]; o3[c] += gu * p3[c + sh];
                }
            }
            const T *RESTRICT xr = x + p * HW + r * W, *RESTRICT yr = y + p * HW + r * W;
            T *RESTRICT dxr = dx + p * HW + r * W, *RESTRICT dyr = dy + p * HW + r * W;
            for (int64_t c = 0; c < W; ++c) {
                const T a = xr[c] - cx, b = yr[c] - cy;
                dxr[c] = s * (o0[c] + T(2) * a * o2[c] + b * o3[c]);
                dyr[c] = s * (o1[c] + T(2) * b * o2[c] + a * o3[c]);
            }
        }
    }
}

template <typename T> py::array_t<T> reduce_planes(const Geom<T> &G, const std::vector<double> &rowsum) {
    py::array_t<T> out(G.P);
    T *o = out.mutable_data();
    const double n = (double)G.Ho * G.Wo;
    for (int64_t p = 0; p < G.P; ++p) {
        double s = 0;
        for (int64_t i = 0; i < G.Ho; ++i) s += rowsum[p * G.Ho + i];
        o[p] = (T)(s / n);
    }
    return out;
}

template <typename T>
py::object ssim_forward_t(const tarr<T> &x, const tarr<T> &y, int win, double c1, double c2, double sigma, bool save) {
    Geom<T> G = check_args(x, y, win, c1, c2, sigma);
    std::vector<double> rowsum(G.P * G.Ho);
    py::array_t<T> shift({(py::ssize_t)G.P, (py::ssize_t)2});
    py::array_t<T> coef;
    if (save) coef = py::array_t<T>({(py::ssize_t)G.P, (py::ssize_t)4, (py::ssize_t)G.Ho, (py::ssize_t)G.Wo});
    const T *xp = x.data(), *yp = y.data();
    T *sp = shift.mutable_data(), *cp = save ? coef.mutable_data() : nullptr;
    {
        py::gil_scoped_release nogil;
        plane_means(G, xp, yp, sp);
        forward_rows(G, xp, yp, sp, rowsum.data(), cp);
    }
    py::array_t<T> vals = reduce_planes(G, rowsum);
    if (!save) return std::move(vals);
    return py::make_tuple(vals, py::make_tuple(coef, shift));
}

// A saved array must already have the kernel's dtype: converting float32 maps for the float64 kernel would silently
// lose precision, so a mismatch is an error rather than a cast.
template <typename T> tarr<T> saved_array(py::handle h, const char *what, const std::string &dtype) {
    py::array a = py::array::ensure(h);
    if (!a) throw py::type_error(std::string("ssim_backward: saved ") + what + " must be a numpy array");
    if (!(a.dtype().kind() == 'f' && a.dtype().itemsize() == (py::ssize_t)sizeof(T)))
        throw py::type_error(std::string("ssim_backward: saved ") + what + " have dtype " + py::str(a.dtype()).cast<std::string>() +
                             " but x and y are " + dtype + "; pass the saved tuple from ssim_forward(..., save=True) on the same arrays");
    return a.cast<tarr<T>>();
}

template <typename T>
py::tuple ssim_backward_t(const tarr<T> &x, const tarr<T> &y, int win, double c1, double c2, const tarr<T> &grad_out,
                          double sigma, py::object saved, const std::string &dtype) {
    Geom<T> G = check_args(x, y, win, c1, c2, sigma);
    if (grad_out.ndim() != 1 || grad_out.shape(0) != G.P)
        throw std::invalid_argument("ssim_backward: grad_out must have shape (" + std::to_string(G.P) + ",) (one value per plane); got " + shape_str(grad_out));
    tarr<T> coef, shift;
    const bool have_saved = !saved.is_none();
    if (have_saved) {
        auto t = saved.cast<py::tuple>();
        if (t.size() != 2) throw std::invalid_argument("ssim_backward: saved must be the (coef, shift) tuple returned by ssim_forward(..., save=True)");
        coef = saved_array<T>(t[0], "coefficient maps", dtype); shift = saved_array<T>(t[1], "shifts", dtype);
        if (coef.ndim() != 4 || coef.shape(0) != G.P || coef.shape(1) != 4 || coef.shape(2) != G.Ho || coef.shape(3) != G.Wo)
            throw std::invalid_argument("ssim_backward: saved coefficient maps must have shape (" + std::to_string(G.P) + ", 4, " +
                                        std::to_string(G.Ho) + ", " + std::to_string(G.Wo) + "); got " + shape_str(coef));
        if (shift.ndim() != 2 || shift.shape(0) != G.P || shift.shape(1) != 2)
            throw std::invalid_argument("ssim_backward: saved shifts must have shape (" + std::to_string(G.P) + ", 2); got " + shape_str(shift));
    }
    py::array_t<T> dx({(py::ssize_t)G.P, (py::ssize_t)G.H, (py::ssize_t)G.W});
    py::array_t<T> dy({(py::ssize_t)G.P, (py::ssize_t)G.H, (py::ssize_t)G.W});
    const T *xp = x.data(), *yp = y.data(), *gp = grad_out.data();
    T *dxp = dx.mutable_data(), *dyp = dy.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::vector<T> cbuf, sbuf;
        const T *cp, *sp;
        if (have_saved) { cp = coef.data(); sp = shift.data(); }
        else {  // recompute the coefficient maps
            cbuf.resize(G.P * 4 * G.Ho * G.Wo); sbuf.resize(2 * G.P);
            std::vector<double> rowsum(G.P * G.Ho);
            plane_means(G, xp, yp, sbuf.data());
            forward_rows(G, xp, yp, sbuf.data(), rowsum.data(), cbuf.data());
            cp = cbuf.data(); sp = sbuf.data();
        }
        backward_rows(G, xp, yp, sp, cp, gp, dxp, dyp);
    }
    return py::make_tuple(dx, dy);
}

// Dispatch on the dtype of x and y: 'f' for float32, 'd' for float64. Anything else (float16, integers, mixed
// dtypes) is a TypeError naming the dtypes; other inputs (lists, tensors) are converted with numpy.asarray first.
char scalar_kind(const char *fn, py::array &x, py::array &y, const py::object &xo, const py::object &yo) {
    x = py::array::ensure(xo); y = py::array::ensure(yo);
    if (!x || !y) { throw py::type_error(std::string(fn) + ": x and y must be numpy arrays (or convertible to one)"); }
    auto name = [](const py::array &a) { return py::str(a.dtype()).cast<std::string>(); };
    auto kind = [](const py::array &a) -> char {
        if (a.dtype().kind() != 'f') return 0;
        return a.dtype().itemsize() == 4 ? 'f' : a.dtype().itemsize() == 8 ? 'd' : 0;
    };
    const char kx = kind(x), ky = kind(y);
    if (!kx) throw py::type_error(std::string(fn) + ": x must be a float32 or float64 array; got dtype " + name(x));
    if (!ky) throw py::type_error(std::string(fn) + ": y must be a float32 or float64 array; got dtype " + name(y));
    if (kx != ky) throw py::type_error(std::string(fn) + ": x and y must have the same dtype; got x " + name(x) + " and y " + name(y));
    return kx;
}

py::object ssim_forward(const py::object &xo, const py::object &yo, int win, double c1, double c2, double sigma, bool save) {
    py::array x, y;
    if (scalar_kind("ssim_forward", x, y, xo, yo) == 'f')
        return ssim_forward_t<float>(x.cast<tarr<float>>(), y.cast<tarr<float>>(), win, c1, c2, sigma, save);
    return ssim_forward_t<double>(x.cast<tarr<double>>(), y.cast<tarr<double>>(), win, c1, c2, sigma, save);
}

// grad_out (one weight per plane) is converted to the dtype of x and y.
py::tuple ssim_backward(const py::object &xo, const py::object &yo, int win, double c1, double c2, const py::object &grad_out,
                        double sigma, py::object saved) {
    py::array x, y;
    if (scalar_kind("ssim_backward", x, y, xo, yo) == 'f')
        return ssim_backward_t<float>(x.cast<tarr<float>>(), y.cast<tarr<float>>(), win, c1, c2, grad_out.cast<tarr<float>>(),
                                      sigma, saved, "float32");
    return ssim_backward_t<double>(x.cast<tarr<double>>(), y.cast<tarr<double>>(), win, c1, c2, grad_out.cast<tarr<double>>(),
                                   sigma, saved, "float64");
}

}  // namespace

void init_ssim(py::module_ &m) {
    m.def("ssim_forward", &ssim_forward, py::arg("x"), py::arg("y"), py::arg("win"), py::arg("c1"), py::arg("c2"),
          py::arg("sigma") = 1.5, py::arg("save") = false,
          "Per-plane mean SSIM of (P, H, W) arrays x, y, both float32 or both float64 (Gaussian window `win`, `sigma`;\n"
          "valid blur); computed in that dtype (another dtype is a TypeError). Returns a (P,) array of the same dtype, or\n"
          "(values, saved) with save=True, where saved = (coef (P,4,Ho,Wo), shift (P,2)) can be passed to\n"
          "ssim_backward(saved=...) to skip recomputing the forward pass.");
    m.def("ssim_backward", &ssim_backward, py::arg("x"), py::arg("y"), py::arg("win"), py::arg("c1"), py::arg("c2"),
          py::arg("grad_out"), py::arg("sigma") = 1.5, py::arg("saved") = py::none(),
          "Gradients (dx, dy), each (P, H, W) in the dtype of x and y (float32 or float64), of\n"
          "sum_p grad_out[p] * ssim_p(x, y). Recomputes the forward moments unless `saved` from\n"
          "ssim_forward(..., save=True) on the same arrays is given.");
}
