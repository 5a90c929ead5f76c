// tracklstm/runge_kutta.hpp: the simulator's solenoid field map and its Runge-Kutta track
// propagation, in plain C++17 (tracklstm.physics.solenoid without material).
//
// The physics a learned propagator would replace, and the baseline of benchmarks/
// bench_surrogate.py. The field is Bz(z), a cubic Hermite curve through knots, and the radial
// part div B = 0 requires, Br = -(r/2) dBz/dz. A state (x, y, z, px, py, pz) is integrated in z
// by fourth-order Runge-Kutta steps of at most max_step cm, ending on every field knot (where the
// cubic changes) and on the target, as in Python: the two agree to about 1e-12 cm. The knots come
// from a field file that Python writes (python -m tracklstm.physics.solenoid --field-file F), so
// the calibration has one owner:
//
//   auto rk = tracklstm::RungeKutta::load("field.txt");
//   tracklstm::State next = rk.propagate(state, 343.405);
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tracklstm/propagator.hpp"

namespace tracklstm {

class RungeKutta {
 public:
  static constexpr const char* kMagic = "tracklstm-field";

  // A field file: magic and version 1, "kq" (C_LIGHT times the charge), "max_step" (cm), then
  // "knots N" and N lines of z [cm], Bz [T], dBz/dz [T/cm], then "end".
  static RungeKutta load(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw FormatError(path + ": cannot open the field file");
    std::string magic, key;
    int version = 0, n = 0;
    RungeKutta rk;
    auto fail = [&](const std::string& what) { throw FormatError(path + ": " + what); };
    if (!(in >> magic >> version) || magic != kMagic || version != 1)
      fail(std::string("not a field file (expected '") + kMagic + " 1' first)");
    if (!(in >> key >> rk.kq_) || key != "kq") fail("expected 'kq <value>'");
    if (!(in >> key >> rk.max_step_) || key != "max_step" || !(rk.max_step_ > 0))
      fail("expected 'max_step <cm > 0>'");
    if (!(in >> key >> n) || key != "knots" || n < 2) fail("expected 'knots <n >= 2>'");
    rk.z_.resize(n), rk.b_.resize(n), rk.m_.resize(n);
    for (int i = 0; i < n; ++i)
      if (!(in >> rk.z_[i] >> rk.b_[i] >> rk.m_[i])) fail("knot " + std::to_string(i) + ": bad");
    for (int i = 1; i < n; ++i)
      if (!(rk.z_[i] > rk.z_[i - 1])) fail("knots: z must increase");
    if (!(in >> key) || key != "end") fail("expected 'end' after the knots");
    return rk;
  }

  double max_step() const { return max_step_; }
  // The same field with another longest step (cm): fewer steps, less accurate.
  RungeKutta with_max_step(double max_step) const {
    if (!(max_step > 0)) throw std::invalid_argument("RungeKutta: max_step must be > 0");
    RungeKutta rk = *this;
    rk.max_step_ = max_step;
    return rk;
  }

  // On-axis Bz [T] and dBz/dz [T/cm] at z; outside the knots Bz is the end value, dBz/dz 0.
  void profile(double z, double& bz, double& dbz) const {
    const std::size_t n = z_.size();
    if (z < z_.front() || z > z_.back()) {
      bz = z < z_.front() ? b_.front() : b_.back();
      dbz = 0.0;
      return;
    }
    std::size_t i = std::upper_bound(z_.begin(), z_.end(), z) - z_.begin();
    i = std::min(i == 0 ? 0 : i - 1, n - 2);
    const double h = z_[i + 1] - z_[i], t = (z - z_[i]) / h;
    const double b0 = b_[i], b1 = b_[i + 1], m0 = m_[i] * h, m1 = m_[i + 1] * h;
    const double t2 = t * t, t3 = t2 * t;
    bz = (2 * t3 - 3 * t2 + 1) * b0 + (t3 - 2 * t2 + t) * m0 + (3 * t2 - 2 * t3) * b1;
    bz += (t3 - t2) * m1;
    dbz = ((6 * t2 - 6 * t) * (b0 - b1) + (3 * t2 - 4 * t + 1) * m0 + (3 * t2 - 2 * t) * m1) / h;
  }

  // The state at z_target (>= its z): field only, no material.
  State propagate(const State& state, double z_target) const {
    if (!(state[5] > 0)) throw std::invalid_argument("RungeKutta::propagate: pz must be > 0");
    double s[5] = {state[0], state[1], state[3], state[4], state[5]};
    double z = state[2];
    constexpr double kEps = 1e-9;
    // Segments end on every knot strictly between z and z_target, then on z_target.
    for (std::size_t k = 0; k <= z_.size(); ++k) {
      const bool last = k == z_.size();
      if (!last && !(z_[k] > state[2] && z_[k] < z_target)) continue;
      const double end = last ? z_target : z_[k];
      if (z < end - kEps) {
        advance(s, z, end);
        z = end;
      }
    }
    return {s[0], s[1], z_target, s[2], s[3], s[4]};
  }

 private:
  // d/dz of (x, y, px, py, pz): dp/dz = c q (p x B) / pz, dx/dz = px / pz
  void derivatives(const double* s, double bz, double dbz, double* d) const {
    const double inv = 1.0 / s[4], a = kq_ * inv, hg = 0.5 * dbz, t = hg * s[4];
    d[0] = s[2] * inv;
    d[1] = s[3] * inv;
    d[2] = a * (s[3] * bz + t * s[1]);
    d[3] = -a * (s[2] * bz + t * s[0]);
    d[4] = (a * hg) * (s[3] * s[0] - s[2] * s[1]);
  }

  void advance(double* s, double z_from, double z_to) const {
    const double span = z_to - z_from;
    const int n_steps = std::max(1, static_cast<int>(std::ceil(span / max_step_ - 1e-9)));
    const double h = span / n_steps, hh = 0.5 * h, w = h / 6.0;
    double k1[5], k2[5], k3[5], k4[5], t[5];
    for (int i = 0; i < n_steps; ++i) {
      const double z0 = z_from + i * h;
      double b0, g0, bm, gm, b1, g1;
      profile(z0, b0, g0);
      profile(z0 + 0.5 * h, bm, gm);
      profile(z0 + h, b1, g1);
      derivatives(s, b0, g0, k1);
      for (int j = 0; j < 5; ++j) t[j] = s[j] + hh * k1[j];
      derivatives(t, bm, gm, k2);
      for (int j = 0; j < 5; ++j) t[j] = s[j] + hh * k2[j];
      derivatives(t, bm, gm, k3);
      for (int j = 0; j < 5; ++j) t[j] = s[j] + h * k3[j];
      derivatives(t, b1, g1, k4);
      for (int j = 0; j < 5; ++j) s[j] = s[j] + w * (k1[j] + 2.0 * (k2[j] + k3[j]) + k4[j]);
    }
  }

  std::vector<double> z_, b_, m_;
  double kq_ = 0.0;
  double max_step_ = 5.0;
};

}  // namespace tracklstm
