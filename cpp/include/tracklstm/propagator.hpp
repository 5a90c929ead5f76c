// tracklstm/propagator.hpp: the trained residual propagator in plain C++17, without libtorch.
//
// A reconstruction links nothing but this header. It reads the file that the export stage writes
// beside the TorchScript model (model.weights.txt, written by tracklstm.export.plain) and
// computes, for one track state (or a window of states) at a detector plane, the state at the
// next plane, the 5x5 covariance of its x, y, px, py, pz, and the transport Jacobian:
//
//   auto prop = tracklstm::Propagator::load("results/demo/residual_markov/model.weights.txt");
//   tracklstm::State s = {x, y, z, px, py, pz};              // cm, GeV/c, at a plane
//   tracklstm::Covariance q;                                  // row-major 5x5, cm and GeV/c
//   tracklstm::Jacobian j;                                    // d next / d s, 5x5
//   tracklstm::State next = prop.next(s, &q, &j);             // one plane step, Q and J
//   tracklstm::Covariance c = ...;                            // s's covariance, carried:
//   tracklstm::State far = prop.propagate(s, 343.405, &c);    // plane by plane, C' = J C J^T + Q
//
// The arithmetic is the exported model's: a float64 helix step in the model's field to the
// next plane (the prior), the network's correction computed in float32 from the float64
// features, added in float64. The export stage checks this header against the TorchScript file
// (tracklstm.export.plain). A model that sees earlier states (history > 0) takes windows of
// states_per_step() states through step(); next() and propagate() need a one-state (Markov)
// model.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tracklstm/network.hpp"

namespace tracklstm {

using State = std::array<double, 6>;       // x, y, z [cm], px, py, pz [GeV/c]
using Covariance = std::array<double, 25>;  // row-major 5x5 of x, y, px, py, pz
using Jacobian = std::array<double, 25>;    // d next / d state, x, y, px, py, pz, row-major

// A file that is not a propagator file, or a broken one: the message names the file and line.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

constexpr int kCorrected[5] = {0, 1, 3, 4, 5};  // x, y, px, py, pz
constexpr int kStatic = 16;                     // the window features of the residual model

// Reads the whitespace-separated tokens of a propagator file, keeping the line of each.
class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    std::ifstream in(path);
    if (!in) throw FormatError(path + ": cannot open the propagator file");
    std::string line;
    int number = 0;
    while (std::getline(in, line)) {
      ++number;
      if (number == 2) {  // the metadata JSON, kept whole
        if (line.rfind("metadata ", 0) != 0) fail(number, "expected the metadata line");
        metadata_ = line.substr(9);
        continue;
      }
      std::istringstream words(line);
      std::string word;
      while (words >> word) tokens_.push_back({word, number});
    }
  }
  const std::string& metadata() const { return metadata_; }
  [[noreturn]] void fail(int line, const std::string& what) const {
    throw FormatError(path_ + ":" + std::to_string(line) + ": " + what);
  }
  std::string word() {
    if (pos_ >= tokens_.size()) fail(last_line(), "the file ends early");
    return tokens_[pos_++].first;
  }
  void expect(const std::string& key) {
    const int line = pos_ < tokens_.size() ? tokens_[pos_].second : last_line();
    const std::string got = word();
    if (got != key) fail(line, "expected '" + key + "', found '" + got + "'");
  }
  double number() {
    const int line = pos_ < tokens_.size() ? tokens_[pos_].second : last_line();
    const std::string w = word();
    char* end = nullptr;
    const double v = std::strtod(w.c_str(), &end);
    if (end != w.c_str() + w.size() || !std::isfinite(v)) fail(line, "not a number: '" + w + "'");
    return v;
  }
  int count(int lo, int hi) {
    const int line = pos_ < tokens_.size() ? tokens_[pos_].second : last_line();
    const double v = number();
    if (v != std::floor(v) || v < lo || v > hi)
      fail(line, "expected a count in " + std::to_string(lo) + ".." + std::to_string(hi));
    return static_cast<int>(v);
  }
  std::vector<double> values(const std::string& key, int n) {
    expect(key);
    const int got = count(n, n);
    std::vector<double> out(got);
    for (double& v : out) v = number();
    return out;
  }
  bool done() const { return pos_ == tokens_.size(); }
  int line() const { return pos_ < tokens_.size() ? tokens_[pos_].second : last_line(); }

 private:
  int last_line() const { return tokens_.empty() ? 1 : tokens_.back().second; }
  std::string path_;
  std::string metadata_;
  std::vector<std::pair<std::string, int>> tokens_;
  std::size_t pos_ = 0;
};

inline Network read_network(Reader& r, const std::string& key, int n_in, int n_out) {
  Network net;
  r.expect(key);
  const int n_layers = r.count(1, 16);
  int width = n_in;
  for (int k = 0; k < n_layers; ++k) {
    const int line = r.line();
    r.expect("dense");
    Dense d;
    d.n_in = r.count(1, kMaxWidth);
    d.n_out = r.count(1, kMaxWidth);
    d.silu = k + 1 < n_layers;
    if (d.n_in != width) r.fail(line, key + " layer " + std::to_string(k) + ": wrong input size");
    std::vector<double> w(static_cast<std::size_t>(d.n_in) * d.n_out);
    for (double& v : w) v = r.number();  // W row by row: n_out rows of n_in
    d.n_pad = (d.n_out + kLanes - 1) / kLanes * kLanes;
    d.wt.assign(static_cast<std::size_t>(d.n_in) * d.n_pad, 0.0f);
    for (int j = 0; j < d.n_out; ++j)
      for (int i = 0; i < d.n_in; ++i)
        d.wt[static_cast<std::size_t>(i) * d.n_pad + j] =
            static_cast<float>(w[static_cast<std::size_t>(j) * d.n_in + i]);
    d.bias.assign(d.n_pad, 0.0f);
    for (int j = 0; j < d.n_out; ++j) d.bias[j] = static_cast<float>(r.number());
    width = d.n_out;
    net.layers.push_back(std::move(d));
  }
  if (width != n_out) r.fail(r.line(), key + ": the last layer must have " + std::to_string(n_out) +
                                           " outputs");
  return net;
}

}  // namespace detail

class Propagator {
 public:
  static constexpr const char* kMagic = "tracklstm-propagator";
  // Version 4: the covariance's transform and energy-loss term; version 3 (neither), version 2
  // (no scale mixture either) and version 1 (one scale for every |p|) are read too.
  static constexpr int kVersion = 4;
  // Windows per batch call of the network (scratch memory: 2 * kBlock * kMaxWidth floats).
  static constexpr int kBlock = 64;

  static Propagator load(const std::string& path) {
    detail::Reader r(path);
    Propagator p;
    r.expect(kMagic);
    const int version = r.count(0, 1 << 20);
    if (version < 1 || version > kVersion)
      r.fail(1, "unsupported version (this header reads versions 1 to " + std::to_string(kVersion) +
                    ")");
    p.metadata_ = r.metadata();
    r.expect("history");
    p.history_ = r.count(0, 6);
    r.expect("window");
    p.window_ = r.count(p.history_ + 1, 64);
    r.expect("field");
    const int n_regions = r.count(1, 1000);
    for (int k = 0; k < n_regions; ++k) {
      p.field_z_.push_back(r.number());
      p.field_qbz_.push_back(r.number());
    }
    r.expect("planes");
    const int n_planes = r.count(2, 1000);
    for (int k = 0; k < n_planes; ++k) p.plane_z_.push_back(r.number());
    p.curvature_ = r.values("curvature", 1)[0];
    p.series_below_ = r.values("sin_over_x_series_below", 1)[0];
    p.step_mean_ = r.values("step_mean", 6);
    p.step_std_ = r.values("step_std", 6);
    p.static_mean_ = r.values("static_mean", detail::kStatic);
    p.static_std_ = r.values("static_std", detail::kStatic);
    p.corr_mean_ = r.values("corr_mean", 5);
    p.corr_std_ = r.values("corr_std", 5);
    p.body_ = detail::read_network(r, "body", 6 * p.history_ + detail::kStatic, 5);
    r.expect("covariance");
    if (r.count(0, 1) == 1) {
      p.max_unit_ = r.values("max_unit_entry", 1)[0];
      p.min_diagonal_ = r.values("min_cholesky_diagonal", 1)[0];
      if (version >= 2) {
        r.expect("covariance_scale_momentum");
        const int n_knots = r.count(1, 64);
        for (int k = 0; k < n_knots; ++k) p.cov_knots_.push_back(r.number());
        for (int k = 1; k < n_knots; ++k)
          if (!(p.cov_knots_[k] > p.cov_knots_[k - 1]))
            r.fail(r.line(), "covariance_scale_momentum: the knots must increase");
      } else {
        p.cov_knots_ = {0.0};
      }
      p.cov_scale_ = r.values("covariance_scale", 5 * static_cast<int>(p.cov_knots_.size()));
      if (version >= 3) {
        r.expect("covariance_mixture_weight");
        const int n_components = r.count(1, 16);
        double total = 0.0;
        for (int k = 0; k < n_components; ++k) {
          p.mix_weight_.push_back(r.number());
          total += p.mix_weight_.back();
          if (!(p.mix_weight_.back() >= 0.0))
            r.fail(r.line(), "covariance_mixture_weight: a weight must be >= 0");
        }
        if (!(std::abs(total - 1.0) < 1e-6))
          r.fail(r.line(), "covariance_mixture_weight: the weights must add up to 1");
        p.mix_scale_ = r.values("covariance_mixture_scale", n_components);
        for (double s : p.mix_scale_)
          if (!(s > 0.0)) r.fail(r.line(), "covariance_mixture_scale: a scale must be > 0");
      } else {
        p.mix_weight_ = {1.0};
        p.mix_scale_ = {1.0};
      }
      if (version >= 4) {
        p.cov_transform_ = r.values("covariance_transform", 25);
        for (int i = 0; i < 5; ++i) {
          if (!(p.cov_transform_[i * 5 + i] > 0.0))
            r.fail(r.line(), "covariance_transform: a diagonal entry must be > 0");
          for (int j = i + 1; j < 5; ++j)
            if (p.cov_transform_[i * 5 + j] != 0.0)
              r.fail(r.line(), "covariance_transform: must be lower-triangular");
        }
        p.loss_variance_ = r.values("covariance_loss_variance", 1)[0];
        if (!(p.loss_variance_ >= 0.0))
          r.fail(r.line(), "covariance_loss_variance: a variance must be >= 0");
      }
      p.cov_head_ = detail::read_network(r, "covariance_head", detail::kStatic, 15);
      p.has_covariance_ = true;
    }
    r.expect("end");
    if (!r.done()) r.fail(r.line(), "text after 'end'");
    return p;
  }

  int history() const { return history_; }
  // The states a step() reads per track: history() + 1 (the exported files take more, the
  // window length of the training data, and use only these last ones).
  int states_per_step() const { return history_ + 1; }
  int window_length() const { return window_; }
  bool has_covariance() const { return has_covariance_; }
  const std::vector<double>& plane_z() const { return plane_z_; }
  const std::string& metadata_json() const { return metadata_; }
  // The shape of the errors around the covariance Q of next()/step(): sum_k w_k N(0, s_k Q), a
  // scale mixture fitted on the calibration windows (tracklstm.models.scale_mixture) that
  // describes the tails of scattering and energy loss: the components of a Gaussian-sum filter.
  // Weights add up to 1 (components of weight 0 are unused); one component of scale 1 for a
  // version 1 or 2 file.
  const std::vector<double>& covariance_mixture_weights() const { return mix_weight_; }
  const std::vector<double>& covariance_mixture_scales() const { return mix_scale_; }
  // The variance (GeV/c)^2 that energy-loss straggling adds to the momentum along its own
  // direction u, beyond the head's: Q = (s L T)(s L T)^T + v u u^T (0 in a version 1 to 3 file).
  double covariance_loss_variance() const { return loss_variance_; }

  // n tracks: states (n, states_per_step(), 6), oldest first, the last at a plane -> next
  // (n, 6) at the next plane; covariance (n, 25) when not null (needs has_covariance());
  // jacobian (n, 25) when not null: d next / d last state, x, y, px, py, pz both, row-major.
  void step(std::size_t n, const double* states, double* next, double* covariance = nullptr,
            double* jacobian_out = nullptr) const {
    if (covariance && !has_covariance_)
      throw std::logic_error("tracklstm::Propagator: this model has no covariance head");
    const int per = states_per_step();
    const int n_in = body_.n_in();
    // Scratch kept per thread: inputs and two layer buffers for one block of windows.
    thread_local std::vector<float> scratch;
    const std::size_t need = static_cast<std::size_t>(kBlock) * (2 * detail::kMaxWidth + 32 + n_in);
    // a, b: layer buffers; out: 16 per window (5 body, 15 covariance); in: the body's inputs;
    // stat: the normalized window features (the covariance head's inputs)
    if (scratch.size() < need) scratch.resize(need);
    float* a = scratch.data();
    float* b = a + kBlock * detail::kMaxWidth;
    float* out = b + kBlock * detail::kMaxWidth;
    float* stat = out + kBlock * 16;
    float* in = stat + kBlock * 16;
    double prior[kBlock][6];
    for (std::size_t start = 0; start < n; start += kBlock) {
      const int rows = static_cast<int>(std::min<std::size_t>(kBlock, n - start));
      for (int r = 0; r < rows; ++r) {
        const double* s = states + (start + r) * per * 6;
        features(s, prior[r], in + r * n_in, stat + r * detail::kStatic);
      }
      body_.apply(in, out, rows, a, b);
      for (int r = 0; r < rows; ++r) {
        double* o = next + (start + r) * 6;
        for (int k = 0; k < 6; ++k) o[k] = prior[r][k];
        for (int k = 0; k < 5; ++k)
          o[detail::kCorrected[k]] += static_cast<double>(out[r * 5 + k]) * corr_std_[k] + corr_mean_[k];
      }
      if (covariance) {
        cov_head_.apply(stat, out, rows, a, b);
        for (int r = 0; r < rows; ++r) {
          const double* last = states + ((start + r) * per + per - 1) * 6;
          const double p = std::sqrt(last[3] * last[3] + last[4] * last[4] + last[5] * last[5]);
          double* c = covariance + (start + r) * 25;
          cholesky_product(out + r * 15, p, c);
          const double v = loss_variance_ / (p * p);  // the energy-loss term v u u^T, u = p / |p|
          for (int i = 2; i < 5; ++i)
            for (int j = 2; j < 5; ++j) c[i * 5 + j] += v * last[i + 1] * last[j + 1];
        }
      }
      if (jacobian_out)
        for (int r = 0; r < rows; ++r)
          jacobian(states + (start + r) * per * 6, jacobian_out + (start + r) * 25);
    }
  }

  // One Markov step of one state at a plane to the next plane (and the covariance that the
  // step adds, Q, and its Jacobian J, when asked for).
  State next(const State& state, Covariance* covariance = nullptr, Jacobian* jac = nullptr) const {
    require_markov("next");
    State out;
    step(1, state.data(), out.data(), covariance ? covariance->data() : nullptr,
         jac ? jac->data() : nullptr);
    return out;
  }

  // Plane by plane from a state at a plane to the plane at z_target (within 1e-3 cm). With
  // covariance (of the state's x, y, px, py, pz), it is carried along as a Kalman filter's
  // prediction carries it: C' = J C J^T + Q at every step.
  State propagate(State state, double z_target, Covariance* covariance = nullptr) const {
    require_markov("propagate");
    const int goal = nearest_plane(z_target);
    if (std::abs(plane_z_[goal] - z_target) > 1e-3)
      throw std::invalid_argument("tracklstm::Propagator::propagate: z_target " +
                                  std::to_string(z_target) + " cm is not a plane's z");
    if (goal < nearest_plane(state[2]))
      throw std::invalid_argument("tracklstm::Propagator::propagate: z_target is behind the state");
    Covariance q;
    Jacobian j;
    while (nearest_plane(state[2]) < goal) {
      if (!covariance) {
        state = next(state);
        continue;
      }
      state = next(state, &q, &j);
      Covariance& c = *covariance;
      double jc[25];
      for (int r = 0; r < 5; ++r)
        for (int k = 0; k < 5; ++k) {
          double sum = 0.0;
          for (int m = 0; m < 5; ++m) sum += j[r * 5 + m] * c[m * 5 + k];
          jc[r * 5 + k] = sum;
        }
      for (int r = 0; r < 5; ++r)
        for (int k = 0; k < 5; ++k) {
          double sum = q[r * 5 + k];
          for (int m = 0; m < 5; ++m) sum += jc[r * 5 + m] * j[k * 5 + m];
          c[r * 5 + k] = sum;
        }
    }
    return state;
  }

  // Index of the plane nearest z (the first one at a tie), as the model chooses it.
  int nearest_plane(double z) const {
    int best = 0;
    for (int k = 1; k < static_cast<int>(plane_z_.size()); ++k)
      if (std::abs(z - plane_z_[k]) < std::abs(z - plane_z_[best])) best = k;
    return best;
  }

 private:
  void require_markov(const char* what) const {
    if (history_ != 0)
      throw std::logic_error(std::string("tracklstm::Propagator::") + what +
                             ": this model sees " + std::to_string(history_) +
                             " earlier steps; call step() with windows");
  }

  // The exact helix in a uniform field over dz (tracklstm.physics.helix_prior), in double or
  // in Dual numbers (the Jacobian); sin(h)/h from its series below series_below_.
  template <class T>
  void helix_uniform(T* s, double dz, double qbz) const {
    using std::cos;
    using std::sin;
    const T a = curvature_ * qbz * dz / s[5];
    const T half = 0.5 * a;
    const T chord = std::abs(detail::value(half)) < series_below_ ? 1.0 - half * half / 6.0
                                                                  : sin(half) / half;
    const T c_half = cos(half), s_half = sin(half);
    const T step = dz / s[5] * chord;
    const T ca = cos(a), sa = sin(a);
    const T px = s[3], py = s[4];
    s[0] = s[0] + step * (px * c_half - py * s_half);
    s[1] = s[1] + step * (px * s_half + py * c_half);
    s[2] = s[2] + dz;
    s[3] = px * ca - py * sa;
    s[4] = px * sa + py * ca;
  }

  // The prior (the helix step of the last state to the next plane) and the 16 window features
  // before normalization (ResidualPropagator._raw_features), in double or Dual numbers.
  template <class T>
  void prior_and_raw(const T* last, T* prior, T* raw) const {
    using std::sqrt;
    const int n_planes = static_cast<int>(plane_z_.size());
    const int following = std::min(nearest_plane(detail::value(last[2])) + 1, n_planes - 1);
    const double z_target = plane_z_[following];
    for (int k = 0; k < 6; ++k) prior[k] = last[k];
    const double z0 = detail::value(last[2]), z1 = std::max(z_target, z0);
    const int n_regions = static_cast<int>(field_z_.size());
    for (int k = 0; k < n_regions; ++k) {
      double lo = z0, hi = z1;
      if (k > 0) lo = std::max(lo, field_z_[k]), hi = std::max(hi, field_z_[k]);
      if (k < n_regions - 1) lo = std::min(lo, field_z_[k + 1]), hi = std::min(hi, field_z_[k + 1]);
      helix_uniform(prior, hi - lo, field_qbz_[k]);
    }
    prior[2] = T(z_target);
    const T &x = last[0], &y = last[1], &z = last[2], &px = last[3], &py = last[4], &pz = last[5];
    const T inv_pz = 1.0 / pz;
    const T values[detail::kStatic] = {x, y, sqrt(x * x + y * y), z, prior[2] - z, px, py, pz,
                                       sqrt(px * px + py * py), inv_pz, px * inv_pz, py * inv_pz,
                                       prior[0] - x, prior[1] - y, prior[3] - px, prior[4] - py};
    std::copy(values, values + detail::kStatic, raw);
  }

  // The body's first inputs: the window's last history differences between states, normalized.
  void step_inputs(const double* window, float* in) const {
    for (int h = 0; h < history_; ++h)
      for (int k = 0; k < 6; ++k) {
        const double d = window[(h + 1) * 6 + k] - window[h * 6 + k];
        in[h * 6 + k] = static_cast<float>((d - step_mean_[k]) / step_std_[k]);
      }
  }

  // The prior, the body's normalized inputs (the last history steps, then the 16 window
  // features) and the normalized window features alone (the covariance head's inputs).
  void features(const double* window, double* prior, float* in, float* stat) const {
    double raw[detail::kStatic];
    prior_and_raw(window + history_ * 6, prior, raw);
    step_inputs(window, in);
    for (int k = 0; k < detail::kStatic; ++k) {
      stat[k] = static_cast<float>((raw[k] - static_mean_[k]) / static_std_[k]);
      in[history_ * 6 + k] = stat[k];
    }
  }

  // d next / d last state, x, y, px, py, pz both, row-major 5x5, of one window: forward mode,
  // Dual numbers through the float64 prior and features, tangents through the network.
  void jacobian(const double* window, double* jac) const {
    using D = detail::Dual<5>;
    const double* last = window + history_ * 6;
    D l[6], prior[6], raw[detail::kStatic];
    for (int k = 0; k < 6; ++k) l[k] = D(last[k]);
    for (int t = 0; t < 5; ++t) l[detail::kCorrected[t]].d[t] = 1.0;
    prior_and_raw(l, prior, raw);
    const int n_in = body_.n_in();
    thread_local std::vector<float> buf;
    const std::size_t need = 6 * static_cast<std::size_t>(n_in) + 12 * detail::kMaxWidth + 32;
    if (buf.size() < need) buf.resize(need);
    float* in = buf.data();
    float* din = in + n_in;             // 5 rows of n_in
    float* out = din + 5 * n_in;        // 5 values, then 5 rows of 5 derivatives
    float* dout = out + 8;
    float* scratch = dout + 24;         // 2 * 6 * kMaxWidth
    std::fill(din, din + 5 * n_in, 0.0f);
    step_inputs(window, in);
    if (history_ > 0)  // the last difference moves with the last state
      for (int t = 0; t < 5; ++t) {
        const int k = detail::kCorrected[t];
        din[t * n_in + (history_ - 1) * 6 + k] = static_cast<float>(1.0 / step_std_[k]);
      }
    for (int k = 0; k < detail::kStatic; ++k) {
      in[history_ * 6 + k] = static_cast<float>((raw[k].v - static_mean_[k]) / static_std_[k]);
      for (int t = 0; t < 5; ++t)
        din[t * n_in + history_ * 6 + k] = static_cast<float>(raw[k].d[t] / static_std_[k]);
    }
    body_.tangent(in, din, 5, out, dout, scratch);
    for (int i = 0; i < 5; ++i)
      for (int t = 0; t < 5; ++t)
        jac[i * 5 + t] = prior[detail::kCorrected[i]].d[t] + dout[t * 5 + i] * corr_std_[i];
  }

  // The calibrated scale of feature i's spread at |p| = p: covariance_scale interpolated
  // linearly between the knots, constant beyond them (ResidualPropagator.covariance_scale).
  double scale_at(double p, int i) const {
    double s = cov_scale_[i];
    for (std::size_t k = 0; k + 1 < cov_knots_.size(); ++k) {
      const double t = (p - cov_knots_[k]) / (cov_knots_[k + 1] - cov_knots_[k]);
      const double ramp = std::clamp(t, 0.0, 1.0);
      s += ramp * (cov_scale_[(k + 1) * 5 + i] - cov_scale_[k * 5 + i]);
    }
    return s;
  }

  // The covariance head's 15 numbers -> (s L T)(s L T)^T, L = D U (CovarianceHead), s = corr_std
  // times the calibrated covariance_scale at the window's |p| = p, per row, T the calibrated
  // covariance_transform (lower-triangular; the identity in a version 1 to 3 file).
  void cholesky_product(const float* raw, double p, double* cov) const {
    double l[5][5] = {};
    for (int i = 0; i < 5; ++i) {
      const double x = raw[i];  // softplus (torch's: linear above 20) plus the floor
      const double spread = (x > 20.0 ? x : std::log1p(std::exp(x))) + min_diagonal_;
      l[i][i] = spread * (corr_std_[i] * scale_at(p, i));
    }
    int k = 5;  // the unit-triangular entries, row by row (torch.tril_indices)
    for (int i = 1; i < 5; ++i)
      for (int j = 0; j < i; ++j, ++k) l[i][j] = l[i][i] * max_unit_ * std::tanh(raw[k] / max_unit_);
    double lt[5][5] = {};  // l T, lower-triangular like both
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j <= i; ++j)
        for (int m = j; m <= i; ++m) lt[i][j] += l[i][m] * cov_transform_[m * 5 + j];
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j <= i; ++j) {
        double sum = 0.0;
        for (int m = 0; m <= j; ++m) sum += lt[i][m] * lt[j][m];
        cov[i * 5 + j] = cov[j * 5 + i] = sum;
      }
  }

  std::string metadata_;
  int history_ = 0;
  int window_ = 1;
  std::vector<double> field_z_, field_qbz_, plane_z_;
  double curvature_ = 0.0, series_below_ = 0.0;
  std::vector<double> step_mean_, step_std_, static_mean_, static_std_, corr_mean_, corr_std_;
  std::vector<double> cov_knots_, cov_scale_;  // knots in |p|; 5 scales per knot
  std::vector<double> mix_weight_, mix_scale_;  // the covariance's scale mixture
  std::vector<double> cov_transform_ = {1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1,
                                        0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1};  // row-major
  double loss_variance_ = 0.0;  // the covariance's energy-loss term
  detail::Network body_, cov_head_;
  bool has_covariance_ = false;
  double max_unit_ = 0.0, min_diagonal_ = 0.0;
};

}  // namespace tracklstm
