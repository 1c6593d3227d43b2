// Gaussian-mixture log-likelihood and its gradient on the CPU, one pass each.
//
// The maths is that of torchmdn/fused.py (see its docstring); this file computes the same
// quantities tile by tile instead of as a dozen whole-tensor operations, so the
// per-operation overhead that bounds the mixture loss at training batch sizes disappears.
// Per tile the component densities are laid out component-major, so the log-sum-exp over
// components runs with rows in the vector lanes; exp and log are vectorised (ATen's
// Vectorized, SLEEF from libtorch_cpu, and two faster float versions below).
//
// mixture_forward/backward (checked by torchmdn/kernels.py before calling): value [N, d];
// logits [P, n]; loc [P, n, d]; scale [P, n, d] (diagonal), [P, n] (isotropic), a
// lower-triangular factor [P, n, d, d] (precision factor A with Σ⁻¹ = AᵀA, or Cholesky
// factor L with Σ = LLᵀ, row-major or, with `transposed`, column-major) or a packed precision
// factor [P, n, d(d+1)/2] (kPacked, with floor [d]); all contiguous, one dtype, N a multiple
// of P: value row i uses the parameters of row i % P (a leading sample shape broadcast
// against the batch). head_forward/backward take an MDN head's output rows [P, F] instead
// (gather_head), heads_forward/backward several heads' outputs side by side in one pass. Forward returns log p [N], the responsibilities r and the weights
// softmax(logits) (component-major [n, N] and [n, P]: all the backward needs besides the
// inputs); backward returns the gradients of the inputs (zero above a factor's diagonal).
// Parameter gradients accumulate over the value rows that share them, so the backward splits
// work over parameter rows: no two threads write the same entry.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;
template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t kTile = 2048;    // elements per tile buffer
constexpr int64_t kGrain = 16384;  // work per task: half ATen's grain (our elements cost more)

// kPacked: the precision factor as an MDN head emits it, its lower triangle packed row by
// row, [P, n, d(d+1)/2], with raw diagonal entries x: A_jj = 1 / (softplus(x) + floor_j)
enum Kind : int64_t { kDiagonal = 0, kIsotropic = 1, kPrecision = 2, kCholesky = 3, kPacked = 4 };

// c of the W = Vec<T>::size() lanes at x (c < W only at the end of a buffer)
template <typename T>
Vec<T> load(const T* x, int64_t c) {
  return c == Vec<T>::size() ? Vec<T>::loadu(x) : Vec<T>::loadu(x, c);
}

template <typename T>
void store(const Vec<T>& v, T* x, int64_t c) {
  if (c == Vec<T>::size())
    v.store(x);
  else
    v.store(x, c);
}

// exp of a vector: ATen's polynomial exp_u20 for float where the AVX2 build has it (a few
// times faster than SLEEF's 1-ulp expf, error below 2.5e-6 relative); NaN stays NaN.
template <typename T>
Vec<T> fast_exp(const Vec<T>& v) {
  return v.exp();
}

#if defined(CPU_CAPABILITY_AVX2)
template <>
Vec<float> fast_exp<float>(const Vec<float>& v) {
  const Vec<float> e = v.exp_u20();
  return Vec<float>::blendv(e, v, v != v);  // exp_u20 clamps NaN to a finite number
}
#endif

// log of a vector: for float on AVX2 lanes of normal positive finite numbers,
// log x = e ln 2 + 2 atanh((m − 1)/(m + 1)) with x = m 2^e, m in [√½, √2) (odd series to
// t⁹; error about 1 ulp, several times faster than SLEEF's logf); any other lane (0,
// negative, subnormal, inf, NaN) sends the whole vector to SLEEF.
template <typename T>
Vec<T> fast_log(const Vec<T>& v) {
  return v.log();
}

#if defined(CPU_CAPABILITY_AVX2)
template <>
Vec<float> fast_log<float>(const Vec<float>& v) {
  const __m256 x = v;
  const __m256 normal = _mm256_and_ps(
      _mm256_cmp_ps(x, _mm256_set1_ps(std::numeric_limits<float>::min()), _CMP_GE_OQ),
      _mm256_cmp_ps(x, _mm256_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ));
  if (_mm256_movemask_ps(normal) != 0xFF) return v.log();
  const __m256i bits = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // the mask is −1: e + 1
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
  const __m256 t2 = _mm256_mul_ps(t, t);
  __m256 p = _mm256_fmadd_ps(t2, _mm256_set1_ps(2.0f / 9), _mm256_set1_ps(2.0f / 7));
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(2.0f / 5));
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(2.0f / 3));
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(2.0f));
  const __m256 ef = _mm256_cvtepi32_ps(e);
  // e ln 2 in two parts (the high part exact in float for |e| < 2^8)
  const __m256 lo = _mm256_fmadd_ps(ef, _mm256_set1_ps(-2.12194440e-4f), _mm256_mul_ps(t, p));
  return _mm256_fmadd_ps(ef, _mm256_set1_ps(0.693359375f), lo);
}
#endif

template <typename T>
void vlog(T* x, int64_t n) {
  for (int64_t t = 0, W = Vec<T>::size(); t < n; t += W) {
    const int64_t c = std::min(W, n - t);
    store(fast_log(load(x + t, c)), x + t, c);
  }
}

template <typename T>
T rowsum(const T* x, int64_t n) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

// One call's shapes, its factor layout F(i, j) = F[i * rs + j * cs], and its tiling.
struct Plan {
  int64_t kind, N, P, n, d, rs, cs;
  int64_t ld = 0;  // > 0: the parameters are rows of an MDN head's output (see gather_head)
  int64_t reps() const { return P ? N / P : 0; }
  int64_t tri() const { return d * (d + 1) / 2; }
  // scale entries per parameter row
  int64_t per_row() const {
    return kind == kDiagonal ? n * d : kind == kIsotropic ? n : kind == kPacked ? n * tri() : n * d * d;
  }
  // the dense row-major precision factor a packed one is unpacked into
  Plan dense() const { return Plan{kPrecision, N, P, n, d, d, 1, 0}; }
  int64_t tile_rows() const { return std::max<int64_t>(1, kTile / (n * d)); }
  int64_t work() const { return n * (kind >= kPrecision ? d * (d + 1) : d + 1); }
  int64_t tiles_per_task() const {
    return std::max<int64_t>(1, kGrain / (work() * tile_rows()));
  }
};

// Scratch of one task.
template <typename T>
struct Scratch {
  std::vector<T> a, b, c, v1, v2, v3, fac, dfac, x, f;
  std::vector<T> hl, hm, hs, hr, fp, gl, gm, gs;  // a tile of head rows and its gradient
  int64_t fp_rows = 0;                            // rows of fp filled
  explicit Scratch(const Plan& pl) {
    const int64_t R = pl.tile_rows(), E = R * pl.n * pl.d, C = R * pl.n;
    a.resize(E), b.resize(E), c.resize(C);
    v1.resize(pl.d), v2.resize(pl.d), v3.resize(pl.d);
    if (pl.kind == kPacked) {  // a tile of dense factors and its gradient; diagonals
      fac.resize(E * pl.d), dfac.resize(E * pl.d), x.resize(E), f.resize(E);
    }
    if (pl.ld) {
      const int64_t S = R * pl.per_row();
      hl.resize(C), hm.resize(E), hs.resize(S), hr.resize(S), fp.resize(S);
      gl.resize(C), gm.resize(E), gs.resize(S);
    }
  }
};

// ---------------------------------------------------------------- mixing (all kinds)

// Per tile the component log densities are kept component-major, aT [n][rows], so the
// mixing runs over rows in vector lanes (the component counts of MDNs are too small to fill
// them). lT [n][rows] is scratch. Writes log p (out [rows]) and, if not null, the
// responsibilities rT (component k at rT + k * rld) and the weights pT (at pT + k * pld),
// component-major too: the backward reads them back in the same layout.
template <typename T>
void mix(const T* logits, T* aT, T* lT, int64_t rows, int64_t n, T shift, T* out, T* rT,
         int64_t rld, T* pT, int64_t pld) {
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k) lT[k * rows + b] = logits[b * n + k];
  // as in fused.py: the maximum is kept finite and exp's argument is raised to near the log
  // of the smallest normal number (-80: exp_u20 flushes below about -87; the result moves by
  // < 1e-34 relative), so a value beyond every component gets the lowest finite log density
  // and finite gradients instead of 0/0
  const Vec<T> lowest(std::numeric_limits<T>::lowest());
  const Vec<T> floor(sizeof(T) == 4 ? T(-80) : T(-708));
  for (int64_t b = 0, W = Vec<T>::size(); b < rows; b += W) {
    const int64_t c = std::min(W, rows - b);
    Vec<T> m = lowest, m0 = lowest;
    for (int64_t k = 0; k < n; ++k) {
      const Vec<T> l = load(lT + k * rows + b, c), a = load(aT + k * rows + b, c) + l;
      store(a, aT + k * rows + b, c);
      m = at::vec::maximum(m, a);
      m0 = at::vec::maximum(m0, l);
    }
    Vec<T> s(T(0)), sw(T(0));
    for (int64_t k = 0; k < n; ++k) {
      const Vec<T> e = fast_exp(at::vec::maximum(load(aT + k * rows + b, c) - m, floor));
      const Vec<T> ew = fast_exp(at::vec::maximum(load(lT + k * rows + b, c) - m0, floor));
      store(e, aT + k * rows + b, c);
      store(ew, lT + k * rows + b, c);
      s += e;
      sw += ew;
    }
    store(fast_log(s / sw) + (m - m0) - Vec<T>(shift), out + b, c);
    if (rT) {
      const Vec<T> inv = s.reciprocal();
      for (int64_t k = 0; k < n; ++k) store(load(aT + k * rows + b, c) * inv, rT + k * rld + b, c);
    }
    if (pT) {
      const Vec<T> inv = sw.reciprocal();
      for (int64_t k = 0; k < n; ++k) store(load(lT + k * rows + b, c) * inv, pT + k * pld + b, c);
    }
  }
}

// ---------------------------------------------------------------- component densities

// Each writes log N(y_b; μ_bk, Σ_bk) + (d/2) log 2π into a [n][rows] (component-major) for
// parameter rows starting at the given pointers against value rows y [rows, d].

// The diagonal kind's loops over the output dimension j take DD = d as a compile-time
// constant for small d (unrolled; a run-time loop of one or two steps costs more than its
// body), DD = 0 for any other d.
template <typename F>
void with_dims(int64_t d, const F& f) {
  switch (d) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

// y repeated over the components: out [rows, n, d]
template <int DD, typename T>
void spread(const T* y, int64_t rows, int64_t n, int64_t dd, T* out) {
  const int64_t d = DD > 0 ? DD : dd;
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k)
      for (int64_t j = 0; j < d; ++j) out[(b * n + k) * d + j] = y[b * d + j];
}

template <int DD, typename T>
void diag_density(const T* y, const T* loc, const T* scale, int64_t rows, int64_t n, int64_t dd,
                  T* a, T* buf) {
  const int64_t d = DD > 0 ? DD : dd, E = rows * n * d, W = Vec<T>::size();
  spread<DD>(y, rows, n, d, buf);
  const Vec<T> half(T(0.5));
  for (int64_t t = 0; t < E; t += W) {  // log σ + z²/2
    const int64_t c = std::min(W, E - t);
    const Vec<T> s = load(scale + t, c);
    const Vec<T> z = (load(buf + t, c) - load(loc + t, c)) / s;
    store(fast_log(s) + half * z * z, buf + t, c);
  }
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k) {
      const T* c = buf + (b * n + k) * d;
      T sum = 0;
      for (int64_t j = 0; j < d; ++j) sum += c[j];
      a[k * rows + b] = -sum;
    }
}

template <typename T>
void iso_density(const T* y, const T* loc, const T* scale, int64_t rows, int64_t n, int64_t d,
                 T* a, T* buf) {
  std::copy(scale, scale + rows * n, buf);
  vlog(buf, rows * n);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k) {
      const int64_t e = b * n + k;
      const T* M = loc + e * d;
      const T inv = T(1) / scale[e];
      T q = 0;
      for (int64_t j = 0; j < d; ++j) {
        const T z = (y[b * d + j] - M[j]) * inv;
        q += z * z;
      }
      a[k * rows + b] = -T(d) * buf[e] - T(0.5) * q;
    }
}

// diff = y − μ and z: A diff (precision factor) or L⁻¹ diff (Cholesky, forward substitution)
template <typename T>
void factor_z(const Plan& pl, const T* F, const T* y, const T* mu, T* diff, T* z) {
  const int64_t d = pl.d, rs = pl.rs, cs = pl.cs;
  for (int64_t j = 0; j < d; ++j) diff[j] = y[j] - mu[j];
  if (pl.kind == kCholesky) {
    for (int64_t i = 0; i < d; ++i) {
      T acc = diff[i];
      for (int64_t j = 0; j < i; ++j) acc -= F[i * rs + j * cs] * z[j];
      z[i] = acc / F[i * (rs + cs)];
    }
  } else {
    for (int64_t i = 0; i < d; ++i) {
      T acc = 0;
      for (int64_t j = 0; j <= i; ++j) acc += F[i * rs + j * cs] * diff[j];
      z[i] = acc;
    }
  }
}

template <typename T>
void factor_density(const Plan& pl, const T* y, const T* loc, const T* fac, int64_t rows, T* a,
                    T* buf, Scratch<T>& s) {
  const int64_t n = pl.n, d = pl.d, C = rows * n, dd = d * d;
  for (int64_t e = 0; e < C; ++e)  // the diagonals, for one vectorised log
    for (int64_t j = 0; j < d; ++j) buf[e * d + j] = fac[e * dd + j * (pl.rs + pl.cs)];
  vlog(buf, C * d);
  const T sign = pl.kind == kCholesky ? T(-1) : T(1);  // log|Σ|^{-1/2} = ±Σ log F_jj
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k) {
      const int64_t e = b * n + k;
      factor_z(pl, fac + e * dd, y + b * d, loc + e * d, s.v1.data(), s.v2.data());
      T q = 0;
      for (int64_t j = 0; j < d; ++j) q += s.v2[j] * s.v2[j];
      a[k * rows + b] = sign * rowsum(buf + e * d, d) - T(0.5) * q;
    }
}

// softplus as torch's (x itself above 20) and its slope, sigmoid (1 above 20). For x <= 20:
// max(x, 0) + log1p(exp(−|x|)), with log1p(t) = log(u) t / (u − 1), u = 1 + t (exact to a few
// ulp for t in (0, 1], t itself where u rounds to 1).
template <typename T>
Vec<T> softplus(const Vec<T>& x) {
  const Vec<T> zero(T(0)), one(T(1));
  const Vec<T> t = fast_exp(zero - x.abs()), u = one + t, du = u - one;
  const Vec<T> l1p = Vec<T>::blendv(fast_log(u) * t / du, t, du == zero);
  return Vec<T>::blendv(at::vec::maximum(x, zero) + l1p, x, x > Vec<T>(T(20)));
}

template <typename T>
Vec<T> sigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return Vec<T>::blendv(one / (one + fast_exp(Vec<T>(T(0)) - x)), one, x > Vec<T>(T(20)));
}

// ---------------------------------------------------------------- packed precision factor

// C packed factors [C, d(d+1)/2] into dense row-major ones [C, d, d]; the raw diagonal
// entries are kept in s.x, 1 / (softplus(x) + floor) on the dense diagonal (softplus as
// torch's: x itself above 20).
template <typename T>
void unpack(const T* packed, const T* floor, int64_t C, int64_t d, Scratch<T>& s) {
  const int64_t tri = d * (d + 1) / 2, E = C * d, W = Vec<T>::size();
  T* x = s.x.data();
  T* f = s.f.data();
  for (int64_t e = 0; e < C; ++e)
    for (int64_t i = 0; i < d; ++i) {
      x[e * d + i] = packed[e * tri + i * (i + 3) / 2];
      f[e * d + i] = floor[i];
    }
  const Vec<T> one(T(1));
  for (int64_t t = 0; t < E; t += W) {  // f <- 1 / (softplus(x) + floor)
    const int64_t c = std::min(W, E - t);
    store(one / (softplus(load(x + t, c)) + load(f + t, c)), f + t, c);
  }
  T* F = s.fac.data();
  std::fill(F, F + C * d * d, T(0));
  for (int64_t e = 0; e < C; ++e) {
    const T* src = packed + e * tri;
    T* dst = F + e * d * d;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j < i; ++j) dst[i * d + j] = src[i * (i + 1) / 2 + j];
      dst[i * d + i] = f[e * d + i];
    }
  }
}

// The gradient of C dense factors (s.dfac) back to their packed raw entries, using the
// diagonal unpack() left in s.x (raw) and s.f (A_jj): ∂A_jj/∂x = −A_jj² sigmoid(x).
template <typename T>
void pack_grad(int64_t C, int64_t d, Scratch<T>& s, T* dpacked) {
  const int64_t tri = d * (d + 1) / 2, E = C * d, W = Vec<T>::size();
  const T* dF = s.dfac.data();
  T* x = s.x.data();
  const T* f = s.f.data();
  for (int64_t t = 0; t < E; t += W) {  // x <- softplus'(x)
    const int64_t c = std::min(W, E - t);
    store(sigmoid(load(x + t, c)), x + t, c);
  }
  for (int64_t e = 0; e < C; ++e) {
    const T* src = dF + e * d * d;
    T* dst = dpacked + e * tri;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j < i; ++j) dst[i * (i + 1) / 2 + j] = src[i * d + j];
      const T a = f[e * d + i];
      dst[i * (i + 3) / 2] = -src[i * d + i] * a * a * x[e * d + i];
    }
  }
}

// ---------------------------------------------------------------- MDN head output

// An MDN head's output rows [P, ld] hold logits (n), means (n d) and raw scales: diagonal
// n d or isotropic n entries with σ = softplus(raw) + floor, or a packed precision factor.
// gather_head copies one tile of rows into contiguous parameters (s.hl, s.hm, s.hs; the raw
// scales kept in s.hr) so the code above runs unchanged; scatter_head writes the tile's
// gradients (s.gl, s.gm, s.gs, the last with respect to σ or the packed entries) back into
// the gradient of the output rows.
template <typename T>
void gather_head(const Plan& pl, const T* out, const T* floor, int64_t rows, Scratch<T>& s) {
  const int64_t n = pl.n, nd = pl.n * pl.d, sc = pl.per_row(), E = rows * sc;
  for (int64_t b = 0; b < rows; ++b) {
    const T* row = out + b * pl.ld;
    std::copy(row, row + n, s.hl.data() + b * n);
    std::copy(row + n, row + n + nd, s.hm.data() + b * nd);
    std::copy(row + n + nd, row + n + nd + sc, s.hr.data() + b * sc);
  }
  if (pl.kind == kPacked) {
    std::copy(s.hr.data(), s.hr.data() + E, s.hs.data());
    return;
  }
  T* fp = s.fp.data();
  if (s.fp_rows < rows) {  // the floor of every scale entry, the same for every tile
    const int64_t per = pl.kind == kDiagonal ? pl.d : 1;
    for (int64_t t = 0; t < E; t += per)
      for (int64_t j = 0; j < per; ++j) fp[t + j] = floor[j];
    s.fp_rows = rows;
  }
  for (int64_t t = 0, W = Vec<T>::size(); t < E; t += W) {
    const int64_t c = std::min(W, E - t);
    store(softplus(load(s.hr.data() + t, c)) + load(fp + t, c), s.hs.data() + t, c);
  }
}

template <typename T>
void scatter_head(const Plan& pl, int64_t rows, Scratch<T>& s, T* dout) {
  const int64_t n = pl.n, nd = pl.n * pl.d, sc = pl.per_row(), E = rows * sc;
  if (pl.kind != kPacked) {  // ∂σ/∂raw = softplus'(raw)
    for (int64_t t = 0, W = Vec<T>::size(); t < E; t += W) {
      const int64_t c = std::min(W, E - t);
      store(load(s.gs.data() + t, c) * sigmoid(load(s.hr.data() + t, c)), s.gs.data() + t, c);
    }
  }
  for (int64_t b = 0; b < rows; ++b) {
    T* row = dout + b * pl.ld;
    std::copy(s.gl.data() + b * n, s.gl.data() + (b + 1) * n, row);
    std::copy(s.gm.data() + b * nd, s.gm.data() + (b + 1) * nd, row + n);
    std::copy(s.gs.data() + b * sc, s.gs.data() + (b + 1) * sc, row + n + nd);
  }
}

// ---------------------------------------------------------------- forward

template <typename T>
void forward_impl(const Plan& pl, const T* logits, const T* loc, const T* scale, const T* floor,
                  const T* y, T* out, T* r, T* p) {
  const int64_t n = pl.n, d = pl.d, R = pl.tile_rows();
  const int64_t qtiles = (pl.P + R - 1) / R;
  const int64_t sc = pl.per_row();
  const T shift = T(0.5) * T(d) * T(1.8378770664093454836);  // (d/2) log 2π
  // tiles of value rows, each within one repetition of the parameter rows
  at::parallel_for(0, pl.reps() * qtiles, pl.tiles_per_task(), [&](int64_t t0, int64_t t1) {
    Scratch<T> s(pl);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rep = t / qtiles, q0 = (t % qtiles) * R, rows = std::min(R, pl.P - q0);
      const int64_t i0 = rep * pl.P + q0;
      const T* Y = y + i0 * d;
      const T *L, *M, *S;
      if (pl.ld) {  // logits points at the head's output rows
        gather_head(pl, logits + q0 * pl.ld, floor, rows, s);
        L = s.hl.data(), M = s.hm.data(), S = s.hs.data();
      } else {
        L = logits + q0 * n, M = loc + q0 * n * d, S = scale + q0 * sc;
      }
      T* a = s.c.data();
      if (pl.kind == kDiagonal)
        with_dims(d, [&](auto D) { diag_density<decltype(D)::value>(Y, M, S, rows, n, d, a, s.a.data()); });
      else if (pl.kind == kIsotropic)
        iso_density(Y, M, S, rows, n, d, a, s.a.data());
      else if (pl.kind == kPacked) {
        unpack(S, floor, rows * n, d, s);
        factor_density(pl.dense(), Y, M, s.fac.data(), rows, a, s.a.data(), s);
      } else
        factor_density(pl, Y, M, S, rows, a, s.a.data(), s);
      mix(L, a, s.b.data(), rows, n, shift, out + i0, r ? r + i0 : nullptr, pl.N,
          p && rep == 0 ? p + q0 : nullptr, pl.P);
    }
  });
}

// ---------------------------------------------------------------- backward

// ∂/∂μ = g r z/σ and ∂/∂σ = g r (z² − 1)/σ added to dloc, dscale; ∂/∂y = −Σ_k ∂/∂μ_k into dy
template <int DD, typename T>
void diag_backward(const T* gr, const T* loc, const T* scale, const T* y, int64_t rows,
                   int64_t n, int64_t dd, T* dloc, T* dscale, T* dy, Scratch<T>& s) {
  const int64_t d = DD > 0 ? DD : dd, E = rows * n * d, W = Vec<T>::size();
  T* yb = s.a.data();  // y, then ∂/∂μ
  T* gb = s.b.data();  // g r
  spread<DD>(y, rows, n, d, yb);
  for (int64_t e = 0; e < rows * n; ++e)
    for (int64_t j = 0; j < d; ++j) gb[e * d + j] = gr[e];
  for (int64_t t = 0; t < E; t += W) {
    const int64_t c = std::min(W, E - t);
    const Vec<T> inv = load(scale + t, c).reciprocal();
    const Vec<T> z = (load(yb + t, c) - load(loc + t, c)) * inv;
    const Vec<T> gi = load(gb + t, c) * inv;
    const Vec<T> dm = gi * z;
    store(load(dloc + t, c) + dm, dloc + t, c);
    store(load(dscale + t, c) + dm * z - gi, dscale + t, c);
    store(dm, yb + t, c);
  }
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k)
      for (int64_t j = 0; j < d; ++j) dy[b * d + j] -= yb[(b * n + k) * d + j];
}

// Gradients for one tile; parameter gradients are added to dlogits/dloc/dscale (zeroed by
// the caller before the first repetition), value gradients written to dy [rows, d].
template <typename T>
void backward_tile(const Plan& pl, const T* g, const T* r, const T* p, const T* loc,
                   const T* scale, const T* y, int64_t rows, T* dl, T* dloc, T* dscale, T* dy,
                   Scratch<T>& s) {
  const int64_t n = pl.n, d = pl.d;
  T* gr = s.c.data();  // g r, row-major [rows, n]
  for (int64_t k = 0; k < n; ++k)
    for (int64_t b = 0; b < rows; ++b) {
      const T v = g[b] * r[k * pl.N + b];
      gr[b * n + k] = v;
      dl[b * n + k] += v - g[b] * p[k * pl.P + b];
    }
  std::fill(dy, dy + rows * d, T(0));
  if (pl.kind == kDiagonal) {
    with_dims(d, [&](auto D) {
      diag_backward<decltype(D)::value>(gr, loc, scale, y, rows, n, d, dloc, dscale, dy, s);
    });
    return;
  }
  if (pl.kind == kIsotropic) {
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t k = 0; k < n; ++k) {
        const int64_t e = b * n + k;
        const T* M = loc + e * d;
        const T inv = T(1) / scale[e], gi = gr[e] * inv;
        T q = 0;
        for (int64_t j = 0; j < d; ++j) {
          const T z = (y[b * d + j] - M[j]) * inv, dm = gi * z;
          q += z * z;
          dloc[e * d + j] += dm;
          dy[b * d + j] -= dm;
        }
        dscale[e] += gi * (q - T(d));
      }
    return;
  }
  const int64_t dd = d * d, rs = pl.rs, cs = pl.cs;
  T* diff = s.v1.data();
  T* z = s.v2.data();
  T* w = s.v3.data();
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t k = 0; k < n; ++k) {
      const int64_t e = b * n + k;
      const T* F = scale + e * dd;
      T* dF = dscale + e * dd;
      factor_z(pl, F, y + b * d, loc + e * d, diff, z);
      if (pl.kind == kCholesky) {
        // w = L⁻ᵀ (g r z): ∂/∂μ = w, ∂/∂L = tril(w zᵀ) − g r diag(1/L_jj)
        for (int64_t i = d - 1; i >= 0; --i) {
          T acc = gr[e] * z[i];
          for (int64_t j = i + 1; j < d; ++j) acc -= F[j * rs + i * cs] * w[j];
          w[i] = acc / F[i * (rs + cs)];
        }
        for (int64_t i = 0; i < d; ++i) {
          for (int64_t j = 0; j <= i; ++j) dF[i * rs + j * cs] += w[i] * z[j];
          dF[i * (rs + cs)] -= gr[e] / F[i * (rs + cs)];
        }
      } else {
        // g r z: ∂/∂μ = Aᵀ(g r z), ∂/∂A = −tril((g r z)(y − μ)ᵀ) + g r diag(1/A_jj)
        for (int64_t j = 0; j < d; ++j) w[j] = 0;
        for (int64_t i = 0; i < d; ++i) {
          const T gz = gr[e] * z[i];
          for (int64_t j = 0; j <= i; ++j) {
            w[j] += F[i * rs + j * cs] * gz;
            dF[i * rs + j * cs] -= gz * diff[j];
          }
          dF[i * (rs + cs)] += gr[e] / F[i * (rs + cs)];
        }
      }
      for (int64_t j = 0; j < d; ++j) {
        dloc[e * d + j] += w[j];
        dy[b * d + j] -= w[j];
      }
    }
}

template <typename T>
void backward_impl(const Plan& pl, const T* g, const T* r, const T* p, const T* loc,
                   const T* scale, const T* floor, const T* y, T* dl, T* dloc, T* dscale, T* dy) {
  const int64_t n = pl.n, d = pl.d, R = pl.tile_rows();
  const int64_t qtiles = (pl.P + R - 1) / R;
  const int64_t sc = pl.per_row();
  const bool packed = pl.kind == kPacked;
  const int64_t grain = std::max<int64_t>(1, pl.tiles_per_task() / std::max<int64_t>(1, pl.reps()));
  // tasks own parameter rows; the repetitions that share them run inside one task
  at::parallel_for(0, qtiles, grain, [&](int64_t t0, int64_t t1) {
    Scratch<T> s(pl);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t q0 = t * R, rows = std::min(R, pl.P - q0);
      const T *M, *S;
      T *dL, *dM, *dS;
      if (pl.ld) {  // loc points at the head's output rows, dl at their gradient
        gather_head(pl, loc + q0 * pl.ld, floor, rows, s);
        M = s.hm.data(), S = s.hs.data(), dL = s.gl.data(), dM = s.gm.data(), dS = s.gs.data();
      } else {
        M = loc + q0 * n * d, S = scale + q0 * sc;
        dL = dl + q0 * n, dM = dloc + q0 * n * d, dS = dscale + q0 * sc;
      }
      std::fill(dL, dL + rows * n, T(0));
      std::fill(dM, dM + rows * n * d, T(0));
      T* dP = dS;  // where the packed gradient goes
      if (packed) {  // work on the dense factors; pack their gradient at the end
        unpack(S, floor, rows * n, d, s);
        S = s.fac.data();
        dS = s.dfac.data();
        std::fill(dS, dS + rows * n * d * d, T(0));
      } else {
        std::fill(dS, dS + rows * sc, T(0));
      }
      for (int64_t rep = 0; rep < pl.reps(); ++rep) {
        const int64_t i0 = rep * pl.P + q0;
        backward_tile(packed ? pl.dense() : pl, g + i0, r + i0, p + q0, M, S, y + i0 * d, rows,
                      dL, dM, dS, dy + i0 * d, s);
      }
      if (packed) pack_grad(rows * n, d, s, dP);
      if (pl.ld) scatter_head(pl, rows, s, dl + q0 * pl.ld);
    }
  });
}

// ---------------------------------------------------------------- operators

Plan plan(const Tensor& logits, const Tensor& loc, const Tensor& scale, const Tensor& floor,
          const Tensor& value, int64_t kind, bool transposed) {
  TORCH_CHECK(kind >= kDiagonal && kind <= kPacked, "torchmdn kernel: unknown kind ", kind);
  for (const Tensor* t : {&logits, &loc, &scale, &floor, &value}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == value.scalar_type(),
                "torchmdn kernel: expects contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(logits.dim() == 2 && loc.dim() == 3 && value.dim() == 2,
              "torchmdn kernel: expects logits [P, n], loc [P, n, d], value [N, d]");
  Plan pl{kind, value.size(0), logits.size(0), logits.size(1), loc.size(2), 0, 0};
  pl.rs = transposed ? 1 : pl.d;
  pl.cs = transposed ? pl.d : 1;
  TORCH_CHECK(pl.n > 0 && pl.d > 0 && loc.size(0) == pl.P && loc.size(1) == pl.n &&
                  value.size(1) == pl.d && (pl.P == 0 ? pl.N == 0 : pl.N % pl.P == 0),
              "torchmdn kernel: inconsistent shapes");
  TORCH_CHECK(scale.size(0) == pl.P && scale.numel() == pl.P * pl.per_row(),
              "torchmdn kernel: scale has the wrong shape");
  TORCH_CHECK(floor.numel() == (kind == kPacked ? pl.d : 0),
              "torchmdn kernel: floor must have d entries (packed factors) or none");
  return pl;
}

// An MDN head's output [P, n + n d + scales] (see gather_head) as the parameters: all of
// out's columns, or (heads_forward/backward) the head's columns from `offset` on.
Plan plan_head(const Tensor& out, const Tensor& floor, const Tensor& value, int64_t kind,
               int64_t n, int64_t offset = -1) {
  TORCH_CHECK(kind == kDiagonal || kind == kIsotropic || kind == kPacked,
              "torchmdn kernel: a head emits diagonal, isotropic or packed factors");
  for (const Tensor* t : {&out, &floor, &value}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == value.scalar_type(),
                "torchmdn kernel: expects contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(out.dim() == 2 && value.dim() == 2 && n > 0, "torchmdn kernel: expects out [P, F], value [N, d]");
  Plan pl{kind, value.size(0), out.size(0), n, value.size(1), value.size(1), 1, out.size(1)};
  const int64_t width = n + n * pl.d + pl.per_row();
  TORCH_CHECK(pl.d > 0 && (offset < 0 ? pl.ld == width : offset + width <= pl.ld) &&
                  (pl.P == 0 ? pl.N == 0 : pl.N % pl.P == 0),
              "torchmdn kernel: inconsistent head output shape");
  TORCH_CHECK(floor.numel() == (kind == kIsotropic ? 1 : pl.d),
              "torchmdn kernel: floor must have d entries (1 for isotropic)");
  return pl;
}

std::tuple<Tensor, Tensor, Tensor> head_forward(const Tensor& out, const Tensor& floor,
                                                const Tensor& value, int64_t kind, int64_t n,
                                                bool save) {
  const Plan pl = plan_head(out, floor, value, kind, n);
  Tensor lp = at::empty({pl.N}, value.options());
  Tensor r = at::empty({pl.n, save ? pl.N : 0}, value.options());  // component-major
  Tensor p = at::empty({pl.n, save ? pl.P : 0}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "torchmdn_head_forward", [&] {
    forward_impl<scalar_t>(pl, out.const_data_ptr<scalar_t>(), nullptr, nullptr,
                           floor.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                           lp.mutable_data_ptr<scalar_t>(),
                           save ? r.mutable_data_ptr<scalar_t>() : nullptr,
                           save ? p.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {lp, r, p};
}

std::tuple<Tensor, Tensor> head_backward(const Tensor& grad, const Tensor& r, const Tensor& p,
                                         const Tensor& out, const Tensor& floor,
                                         const Tensor& value, int64_t kind, int64_t n) {
  const Plan pl = plan_head(out, floor, value, kind, n);
  const Tensor g = grad.contiguous();
  TORCH_CHECK(g.numel() == pl.N && r.numel() == pl.N * pl.n && p.numel() == pl.P * pl.n &&
                  r.is_contiguous() && p.is_contiguous(),
              "torchmdn kernel: saved tensors have the wrong shape");
  Tensor dout = at::empty_like(out), dy = at::empty_like(value);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "torchmdn_head_backward", [&] {
    backward_impl<scalar_t>(pl, g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
                            p.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), nullptr,
                            floor.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                            dout.mutable_data_ptr<scalar_t>(), nullptr, nullptr,
                            dy.mutable_data_ptr<scalar_t>());
  });
  return {dout, dy};
}

// Several heads' outputs side by side in out [P, W] (head h: the next n_h + n_h d + scales
// columns), each against the same values: log p [H, N] and each head's r and p.
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> heads_forward(
    const Tensor& out, at::TensorList floors, const Tensor& value, at::IntArrayRef kinds,
    at::IntArrayRef ns, bool save) {
  const int64_t H = static_cast<int64_t>(kinds.size());
  TORCH_CHECK(H > 0 && floors.size() == kinds.size() && ns.size() == kinds.size(),
              "torchmdn kernel: one floor, kind and component count per head");
  Tensor lp = at::empty({H, value.size(0)}, value.options());
  std::vector<Tensor> rs, ps;
  int64_t offset = 0;
  for (int64_t h = 0; h < H; ++h) {
    const Plan pl = plan_head(out, floors[h], value, kinds[h], ns[h], offset);
    Tensor r = at::empty({pl.n, save ? pl.N : 0}, value.options());
    Tensor p = at::empty({pl.n, save ? pl.P : 0}, value.options());
    AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "torchmdn_heads_forward", [&] {
      forward_impl<scalar_t>(pl, out.const_data_ptr<scalar_t>() + offset, nullptr, nullptr,
                             floors[h].const_data_ptr<scalar_t>(),
                             value.const_data_ptr<scalar_t>(),
                             lp.mutable_data_ptr<scalar_t>() + h * pl.N,
                             save ? r.mutable_data_ptr<scalar_t>() : nullptr,
                             save ? p.mutable_data_ptr<scalar_t>() : nullptr);
    });
    rs.push_back(r);
    ps.push_back(p);
    offset += pl.n + pl.n * pl.d + pl.per_row();
  }
  TORCH_CHECK(offset == out.size(1), "torchmdn kernel: the heads' widths must add up to out's");
  return {lp, rs, ps};
}

// The gradients of heads_forward's inputs from the gradient of its log p [H, N].
std::tuple<Tensor, Tensor> heads_backward(const Tensor& grad, at::TensorList r, at::TensorList p,
                                          const Tensor& out, at::TensorList floors,
                                          const Tensor& value, at::IntArrayRef kinds,
                                          at::IntArrayRef ns) {
  const int64_t H = static_cast<int64_t>(kinds.size());
  TORCH_CHECK(H > 0 && floors.size() == kinds.size() && ns.size() == kinds.size() &&
                  r.size() == kinds.size() && p.size() == kinds.size(),
              "torchmdn kernel: one floor, kind, component count, r and p per head");
  const Tensor g = grad.contiguous();
  TORCH_CHECK(g.dim() == 2 && g.size(0) == H && g.size(1) == value.size(0) &&
                  g.scalar_type() == value.scalar_type(),
              "torchmdn kernel: the gradient must be [heads, N]");
  Tensor dout = at::empty_like(out), dy = at::zeros_like(value), dyh = at::empty_like(value);
  int64_t offset = 0;
  for (int64_t h = 0; h < H; ++h) {
    const Plan pl = plan_head(out, floors[h], value, kinds[h], ns[h], offset);
    TORCH_CHECK(r[h].numel() == pl.N * pl.n && p[h].numel() == pl.P * pl.n &&
                    r[h].is_contiguous() && p[h].is_contiguous(),
                "torchmdn kernel: saved tensors have the wrong shape");
    AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "torchmdn_heads_backward", [&] {
      backward_impl<scalar_t>(pl, g.const_data_ptr<scalar_t>() + h * pl.N,
                              r[h].const_data_ptr<scalar_t>(), p[h].const_data_ptr<scalar_t>(),
                              out.const_data_ptr<scalar_t>() + offset, nullptr,
                              floors[h].const_data_ptr<scalar_t>(),
                              value.const_data_ptr<scalar_t>(),
                              dout.mutable_data_ptr<scalar_t>() + offset, nullptr, nullptr,
                              dyh.mutable_data_ptr<scalar_t>());
    });
    dy.add_(dyh);
    offset += pl.n + pl.n * pl.d + pl.per_row();
  }
  TORCH_CHECK(offset == out.size(1), "torchmdn kernel: the heads' widths must add up to out's");
  return {dout, dy};
}

std::tuple<Tensor, Tensor, Tensor> mixture_forward(const Tensor& logits, const Tensor& loc,
                                                   const Tensor& scale, const Tensor& floor,
                                                   const Tensor& value, int64_t kind,
                                                   bool transposed, bool save) {
  const Plan pl = plan(logits, loc, scale, floor, value, kind, transposed);
  Tensor out = at::empty({pl.N}, value.options());
  Tensor r = at::empty({pl.n, save ? pl.N : 0}, value.options());  // component-major
  Tensor p = at::empty({pl.n, save ? pl.P : 0}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "torchmdn_mixture_forward", [&] {
    forward_impl<scalar_t>(pl, logits.const_data_ptr<scalar_t>(), loc.const_data_ptr<scalar_t>(),
                           scale.const_data_ptr<scalar_t>(), floor.const_data_ptr<scalar_t>(),
                           value.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                           save ? r.mutable_data_ptr<scalar_t>() : nullptr,
                           save ? p.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {out, r, p};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mixture_backward(
    const Tensor& grad, const Tensor& r, const Tensor& p, const Tensor& logits, const Tensor& loc,
    const Tensor& scale, const Tensor& floor, const Tensor& value, int64_t kind,
    bool transposed) {
  const Plan pl = plan(logits, loc, scale, floor, value, kind, transposed);
  const Tensor g = grad.contiguous();  // often an expanded scalar (the gradient of a mean)
  for (const Tensor* t : {&g, &r, &p}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == value.scalar_type(),
                "torchmdn kernel: expects contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(g.numel() == pl.N && r.numel() == pl.N * pl.n && p.numel() == pl.P * pl.n,
              "torchmdn kernel: saved tensors have the wrong shape");
  Tensor dl = at::empty_like(logits), dloc = at::empty_like(loc);
  Tensor dscale = at::empty_like(scale), dy = at::empty_like(value);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "torchmdn_mixture_backward", [&] {
    backward_impl<scalar_t>(pl, g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
                            p.const_data_ptr<scalar_t>(), loc.const_data_ptr<scalar_t>(),
                            scale.const_data_ptr<scalar_t>(), floor.const_data_ptr<scalar_t>(),
                            value.const_data_ptr<scalar_t>(), dl.mutable_data_ptr<scalar_t>(), dloc.mutable_data_ptr<scalar_t>(),
                            dscale.mutable_data_ptr<scalar_t>(), dy.mutable_data_ptr<scalar_t>());
  });
  return {dl, dloc, dscale, dy};
}

}  // namespace

TORCH_LIBRARY(torchmdn, m) {
  m.def("mixture_forward(Tensor logits, Tensor loc, Tensor scale, Tensor floor, Tensor value, "
        "int kind, bool transposed, bool save) -> (Tensor, Tensor, Tensor)");
  m.def("mixture_backward(Tensor g, Tensor r, Tensor p, Tensor logits, Tensor loc, "
        "Tensor scale, Tensor floor, Tensor value, int kind, bool transposed) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("head_forward(Tensor out, Tensor floor, Tensor value, int kind, int n, bool save) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("head_backward(Tensor g, Tensor r, Tensor p, Tensor out, Tensor floor, Tensor value, "
        "int kind, int n) -> (Tensor, Tensor)");
  m.def("heads_forward(Tensor out, Tensor[] floors, Tensor value, int[] kinds, int[] ns, "
        "bool save) -> (Tensor, Tensor[], Tensor[])");
  m.def("heads_backward(Tensor g, Tensor[] r, Tensor[] p, Tensor out, Tensor[] floors, "
        "Tensor value, int[] kinds, int[] ns) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchmdn, CPU, m) {
  m.impl("mixture_forward", &mixture_forward);
  m.impl("mixture_backward", &mixture_backward);
  m.impl("head_forward", &head_forward);
  m.impl("head_backward", &head_backward);
  m.impl("heads_forward", &heads_forward);
  m.impl("heads_backward", &heads_backward);
}
