// tracklstm/network.hpp: the arithmetic of the plain C++ propagator's networks (propagator.hpp).
//
// Dense layers with SiLU in float32, register-tiled with GCC/Clang vector extensions (R windows
// times C vectors of 16 outputs per block: independent chains of multiply-adds that stay in
// registers), a branch-free exp that the compiler vectorizes, the forward-mode tangents of a
// network (its derivatives along a few input directions), and dual numbers for the float64 part
// of a step. Plain C++17, no dependency.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tracklstm {
namespace detail {

constexpr int kMaxWidth = 1024;  // widest layer a file may have

// e^x in float for x in [-87, 87], about 2 ulp, written so that the compiler vectorizes it.
inline float exp_approx(float x) {
  // Branch-free, so that the compiler vectorizes it: clamps as selects, and k = x / ln2
  // rounded to nearest by adding and subtracting 1.5 * 2^23.
  x = x > 87.0f ? 87.0f : x;
  x = x < -87.0f ? -87.0f : x;
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // x - k ln2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// One fully connected layer: y = W x + b, then SiLU (x / (1 + e^-x)) unless it is the last.
// W is stored transposed with each row padded to a multiple of kLanes outputs (zeros), so that
// the kernel below works on whole vectors of kLanes floats that the compiler keeps in registers.
constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
constexpr int kTile = 8;  // windows that share each loaded row of W

struct Dense {
  int n_in = 0;
  int n_out = 0;
  int n_pad = 0;  // n_out rounded up to kLanes
  bool silu = false;
  std::vector<float> wt;  // wt[i * n_pad + j] = W[j][i]
  std::vector<float> bias;  // n_pad values

  // R windows of n_in inputs (x, row stride n_in) -> their outputs j0 .. j0 + C * kLanes
  // (y, row stride n_out): R x C vector accumulators, independent chains of multiply-adds
  // that stay in registers (GCC/Clang vector extensions).
  // With act false: no SiLU; with add_bias false: no bias either (a derivative's rows).
  template <int R, int C>
  void block(const float* __restrict x, float* __restrict y, int j0, bool act, bool add_bias) const {
    Vec acc[R][C];
    for (int c = 0; c < C; ++c) {
      Vec b = {};
      if (add_bias) std::memcpy(&b, bias.data() + j0 + c * kLanes, sizeof b);
      for (int r = 0; r < R; ++r) acc[r][c] = b;
    }
    const float* w = wt.data() + j0;
    for (int i = 0; i < n_in; ++i, w += n_pad) {
      Vec wv[C];
      for (int c = 0; c < C; ++c) std::memcpy(&wv[c], w + c * kLanes, sizeof(Vec));
      for (int r = 0; r < R; ++r) {
        const float v = x[r * n_in + i];
        for (int c = 0; c < C; ++c) acc[r][c] += v * wv[c];
      }
    }
    float out[R][C * kLanes];
    std::memcpy(out, acc, sizeof out);
    if (act && silu)
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < C * kLanes; ++j) out[r][j] = out[r][j] / (1.0f + exp_approx(-out[r][j]));
    const int nj = std::min(C * kLanes, n_out - j0);
    for (int r = 0; r < R; ++r) std::memcpy(y + r * n_out + j0, out[r], nj * sizeof(float));
  }

  template <int R, int C>
  void tile(const float* x, float* y, bool act, bool add_bias) const {
    int j0 = 0;
    for (; j0 + C * kLanes <= n_pad; j0 += C * kLanes) block<R, C>(x, y, j0, act, add_bias);
    for (; j0 < n_pad; j0 += kLanes) block<R, 1>(x, y, j0, act, add_bias);
  }

  // rows inputs of n_in values -> rows outputs of n_out values (act: with the SiLU)
  void apply(const float* x, float* y, int rows, bool act = true, bool add_bias = true) const {
    int r0 = 0;
    for (; r0 + kTile <= rows; r0 += kTile)
      tile<kTile, 2>(x + r0 * n_in, y + r0 * n_out, act, add_bias);
    for (; r0 + 4 <= rows; r0 += 4) tile<4, 4>(x + r0 * n_in, y + r0 * n_out, act, add_bias);
    for (; r0 < rows; ++r0) tile<1, 8>(x + r0 * n_in, y + r0 * n_out, act, add_bias);
  }
};

struct Network {
  std::vector<Dense> layers;
  int n_in() const { return layers.front().n_in; }
  int n_out() const { return layers.back().n_out; }
  // rows inputs -> rows outputs, through two scratch buffers of rows * kMaxWidth floats
  void apply(const float* x, float* out, int rows, float* a, float* b) const {
    const float* in = x;
    for (std::size_t k = 0; k < layers.size(); ++k) {
      float* dst = k + 1 == layers.size() ? out : (k % 2 ? b : a);
      layers[k].apply(in, dst, rows);
      in = dst;
    }
  }
  // One window's outputs y and their derivatives dy along nt directions of its inputs dx
  // (forward mode: dz = W dx, and SiLU'(z) = s (1 + z (1 - s)), s the logistic of z); buf:
  // 2 * (1 + nt) * kMaxWidth floats.
  void tangent(const float* x, const float* dx, int nt, float* y, float* dy, float* buf) const {
    const float* a = x;
    const float* da = dx;
    for (std::size_t k = 0; k < layers.size(); ++k) {
      const Dense& layer = layers[k];
      const bool last = k + 1 == layers.size();
      float* z = last ? y : buf + (k % 2) * (1 + nt) * kMaxWidth;
      float* dz = last ? dy : z + kMaxWidth;
      layer.apply(a, z, 1, false, true);
      layer.apply(da, dz, nt, false, false);
      if (layer.silu) {
        float slope[kMaxWidth];
        for (int j = 0; j < layer.n_out; ++j) {  // loops the compiler vectorizes
          const float sig = 1.0f / (1.0f + exp_approx(-z[j]));
          slope[j] = sig * (1.0f + z[j] * (1.0f - sig));
          z[j] *= sig;
        }
        for (int t = 0; t < nt; ++t)
          for (int j = 0; j < layer.n_out; ++j) dz[t * layer.n_out + j] *= slope[j];
      }
      a = z;
      da = dz;
    }
  }
};

// A number and its derivatives along N directions: the forward-mode derivative of the float64
// part of a step (helix prior and window features) for the transport Jacobian.
template <int N>
struct Dual {
  double v = 0.0;
  double d[N] = {};
  Dual() = default;
  Dual(double x) : v(x) {}  // a constant  NOLINT(google-explicit-constructor)
};
template <int N> inline double value(const Dual<N>& a) { return a.v; }
inline double value(double a) { return a; }
template <int N, class F>
inline Dual<N> chain(const Dual<N>& a, double v, F&& slope) {  // f(a) with f'(a) = slope
  Dual<N> r;
  r.v = v;
  for (int i = 0; i < N; ++i) r.d[i] = slope * a.d[i];
  return r;
}
template <int N> inline Dual<N> operator+(const Dual<N>& a, const Dual<N>& b) {
  Dual<N> r;
  r.v = a.v + b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] + b.d[i];
  return r;
}
template <int N> inline Dual<N> operator-(const Dual<N>& a, const Dual<N>& b) {
  Dual<N> r;
  r.v = a.v - b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] - b.d[i];
  return r;
}
template <int N> inline Dual<N> operator*(const Dual<N>& a, const Dual<N>& b) {
  Dual<N> r;
  r.v = a.v * b.v;
  for (int i = 0; i < N; ++i) r.d[i] = a.d[i] * b.v + a.v * b.d[i];
  return r;
}
template <int N> inline Dual<N> operator/(const Dual<N>& a, const Dual<N>& b) {
  Dual<N> r;
  r.v = a.v / b.v;
  for (int i = 0; i < N; ++i) r.d[i] = (a.d[i] - r.v * b.d[i]) / b.v;
  return r;
}
template <int N> inline Dual<N> operator+(const Dual<N>& a, double b) { return chain(a, a.v + b, 1.0); }
template <int N> inline Dual<N> operator+(double b, const Dual<N>& a) { return a + b; }
template <int N> inline Dual<N> operator-(const Dual<N>& a, double b) { return a + (-b); }
template <int N> inline Dual<N> operator-(double b, const Dual<N>& a) { return chain(a, b - a.v, -1.0); }
template <int N> inline Dual<N> operator*(const Dual<N>& a, double b) { return chain(a, a.v * b, b); }
template <int N> inline Dual<N> operator*(double b, const Dual<N>& a) { return a * b; }
template <int N> inline Dual<N> operator/(const Dual<N>& a, double b) { return a * (1.0 / b); }
template <int N> inline Dual<N> operator/(double b, const Dual<N>& a) {
  return chain(a, b / a.v, -b / (a.v * a.v));
}
template <int N> inline Dual<N> sin(const Dual<N>& a) { return chain(a, std::sin(a.v), std::cos(a.v)); }
template <int N> inline Dual<N> cos(const Dual<N>& a) { return chain(a, std::cos(a.v), -std::sin(a.v)); }
template <int N> inline Dual<N> sqrt(const Dual<N>& a) {
  const double r = std::sqrt(a.v);
  return chain(a, r, r > 0 ? 0.5 / r : 0.0);
}
using std::cos;
using std::sin;
using std::sqrt;

}  // namespace detail
}  // namespace tracklstm
