// tracklstm_propagate: the plain C++ propagator (tracklstm/propagator.hpp) and the field map's
// Runge-Kutta (tracklstm/runge_kutta.hpp) from the command line, without libtorch.
//
//   tracklstm_propagate --model model.weights.txt --input windows.bin --output next.bin
//                       [--covariance cov.bin] [--jacobian jac.bin] [--mixture mix.bin]
//                                                          next-plane states (and covariances,
//                                                          and Jacobians d next / d last state,
//                                                          and the covariance's scale mixture,
//                                                          (K, 2): weight, scale per component)
//   tracklstm_propagate --model model.weights.txt --input states.bin --to-z Z --output out.bin
//                                                          states (n, 6) at planes, plane by
//                                                          plane to the plane at z = Z (a
//                                                          one-state model: Propagator::propagate)
//   tracklstm_propagate --field field.txt --input states.bin --targets z.bin --output out.bin
//                                                          field-only Runge-Kutta to each z
//   tracklstm_propagate --bench --model M --field F --input windows.bin --truth next.bin
//                       [--threads N] [--seconds S] [--rk-max-steps 5,25,50]
//                                                          timings and errors, JSON on stdout
//
// Windows are (n, window, 6) in cm and GeV/c (the last states_per_step() are used); outputs are
// float64 tensor files. Exit status: 0 success, 1 runtime error, 2 bad options.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tracklstm/propagator.hpp"
#include "tracklstm/runge_kutta.hpp"
#include "tracklstm/tensor_file.hpp"

namespace {

using tracklstm::Propagator;
using tracklstm::RungeKutta;
using tracklstm::State;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model, field, input, output, covariance, jacobian, mixture, targets, truth;
  double to_z = std::nan("");
  bool bench = false;
  int threads = 1;
  double seconds = 0.5;
  std::vector<double> rk_max_steps = {5.0};
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "tracklstm_propagate: " << why << "\n(see the comment at the top of "
            << "cpp/tracklstm_propagate.cpp, or cpp/README.md)\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") o.model = value();
    else if (a == "--field") o.field = value();
    else if (a == "--input") o.input = value();
    else if (a == "--output") o.output = value();
    else if (a == "--covariance") o.covariance = value();
    else if (a == "--jacobian") o.jacobian = value();
    else if (a == "--mixture") o.mixture = value();
    else if (a == "--targets") o.targets = value();
    else if (a == "--truth") o.truth = value();
    else if (a == "--to-z") o.to_z = std::atof(value().c_str());
    else if (a == "--bench") o.bench = true;
    else if (a == "--threads") o.threads = std::atoi(value().c_str());
    else if (a == "--seconds") o.seconds = std::atof(value().c_str());
    else if (a == "--rk-max-steps") {
      o.rk_max_steps.clear();
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) o.rk_max_steps.push_back(std::atof(item.c_str()));
    } else usage("unknown option " + a);
  }
  if (o.input.empty()) usage("--input is required");
  if (o.threads < 1) usage("--threads must be >= 1");
  if (!(o.seconds > 0)) usage("--seconds must be > 0");
  for (double s : o.rk_max_steps)
    if (!(s > 0)) usage("--rk-max-steps: every value must be > 0");
  if (o.bench && (o.model.empty() || o.field.empty() || o.truth.empty()))
    usage("--bench needs --model, --field and --truth");
  if (!o.bench && o.model.empty() == o.field.empty()) usage("give one of --model and --field");
  if (!o.bench && o.output.empty()) usage("--output is required");
  if (!o.field.empty() && !o.bench && o.targets.empty()) usage("--field needs --targets");
  if (!std::isnan(o.to_z) && (o.model.empty() || o.bench || !o.jacobian.empty()))
    usage("--to-z goes with --model, --output and --covariance only");
  return o;
}

// The last `per` states of each window, as one contiguous (n, per, 6) array.
std::vector<double> last_states(const tracklstm::Tensor& w, int per) {
  if (w.shape.size() != 3 || w.shape[2] != 6 || w.shape[1] < per)
    throw std::runtime_error("windows: expected shape (n, >=" + std::to_string(per) + ", 6)");
  const std::size_t n = w.shape[0], len = w.shape[1];
  std::vector<double> out(n * per * 6);
  for (std::size_t i = 0; i < n; ++i)
    std::copy_n(&w.values[(i * len + len - per) * 6], per * 6, &out[i * per * 6]);
  return out;
}

// States (n, 6) at planes, each propagated plane by plane to the plane at o.to_z.
int run_to_z(const Options& o) {
  const Propagator p = Propagator::load(o.model);
  const tracklstm::Tensor s = tracklstm::read_tensor(o.input);
  if (s.shape.size() != 2 || s.shape[1] != 6) throw std::runtime_error("--to-z: expected states (n, 6)");
  const std::size_t n = s.shape[0];
  std::vector<double> out(n * 6), cov(o.covariance.empty() ? 0 : n * 25);
  for (std::size_t i = 0; i < n; ++i) {
    State st;
    std::copy_n(&s.values[i * 6], 6, st.begin());
    tracklstm::Covariance c{};  // a state known exactly at the start
    const State r = p.propagate(st, o.to_z, cov.empty() ? nullptr : &c);
    std::copy(r.begin(), r.end(), &out[i * 6]);
    if (!cov.empty()) std::copy(c.begin(), c.end(), &cov[i * 25]);
  }
  tracklstm::write_tensor(o.output, {static_cast<std::int64_t>(n), 6}, out.data());
  if (!cov.empty()) tracklstm::write_tensor(o.covariance, {static_cast<std::int64_t>(n), 5, 5}, cov.data());
  return 0;
}

int run_model(const Options& o) {
  if (!std::isnan(o.to_z)) return run_to_z(o);
  const Propagator p = Propagator::load(o.model);
  const tracklstm::Tensor w = tracklstm::read_tensor(o.input);
  const int per = p.states_per_step();
  const std::vector<double> states = last_states(w, per);
  const std::size_t n = w.shape[0];
  std::vector<double> next(n * 6), cov, jac;
  if (!o.covariance.empty()) cov.resize(n * 25);
  if (!o.jacobian.empty()) jac.resize(n * 25);
  p.step(n, states.data(), next.data(), cov.empty() ? nullptr : cov.data(),
         jac.empty() ? nullptr : jac.data());
  tracklstm::write_tensor(o.output, {static_cast<std::int64_t>(n), 6}, next.data());
  if (!cov.empty())
    tracklstm::write_tensor(o.covariance, {static_cast<std::int64_t>(n), 5, 5}, cov.data());
  if (!jac.empty()) tracklstm::write_tensor(o.jacobian, {static_cast<std::int64_t>(n), 5, 5}, jac.data());
  if (!o.mixture.empty()) {
    if (!p.has_covariance()) throw std::runtime_error("--mixture: this model has no covariance head");
    const auto& w = p.covariance_mixture_weights();
    std::vector<double> mix;
    for (std::size_t k = 0; k < w.size(); ++k) {
      mix.push_back(w[k]);
      mix.push_back(p.covariance_mixture_scales()[k]);
    }
    tracklstm::write_tensor(o.mixture, {static_cast<std::int64_t>(w.size()), 2}, mix.data());
  }
  return 0;
}

int run_field(const Options& o) {
  const RungeKutta rk = RungeKutta::load(o.field).with_max_step(o.rk_max_steps.front());
  const tracklstm::Tensor s = tracklstm::read_tensor(o.input), z = tracklstm::read_tensor(o.targets);
  if (s.shape.size() != 2 || s.shape[1] != 6 || z.values.size() != static_cast<std::size_t>(s.shape[0]))
    throw std::runtime_error("--field: expected states (n, 6) and targets (n)");
  const std::size_t n = s.shape[0];
  std::vector<double> out(n * 6);
  for (std::size_t i = 0; i < n; ++i) {
    State st;
    std::copy_n(&s.values[i * 6], 6, st.begin());
    const State r = rk.propagate(st, z.values[i]);
    std::copy(r.begin(), r.end(), &out[i * 6]);
  }
  tracklstm::write_tensor(o.output, {static_cast<std::int64_t>(n), 6}, out.data());
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Benchmark

std::atomic<double> g_sink{0.0};  // keeps the optimizer from dropping the work

// Microseconds per item of work: `work(k)` does one unit (k counts up) and is repeated until
// `seconds` have passed (at least 20 units); `items` per unit.
template <class Work>
double time_us(double seconds, double items, Work&& work) {
  for (int k = 0; k < 3; ++k) work(k);  // warm-up
  long units = 0;
  const auto t0 = Clock::now();
  double elapsed = 0.0;
  while (units < 20 || elapsed < seconds) {
    work(units++);
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return 1e6 * elapsed / (units * items);
}

// The same work in `threads` threads at once: steps per second of all of them together.
template <class Work>
double throughput(int threads, double seconds, double items, Work&& work) {
  std::vector<double> us(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { us[t] = time_us(seconds, items, [&](long k) { work(t, k); }); });
  for (auto& th : pool) th.join();
  double rate = 0.0;
  for (double u : us) rate += 1e6 / u;
  return rate;
}

std::string json_array(const std::vector<double>& v) {
  std::ostringstream s;
  s.precision(9);
  s << "[";
  for (std::size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  return s.str() + "]";
}

// RMS of predicted - truth for x, y, px, py, pz over the rows in `rows`.
std::vector<double> rms(const std::vector<double>& pred, const std::vector<double>& truth,
                        const std::vector<std::size_t>& rows) {
  static const int cols[5] = {0, 1, 3, 4, 5};
  std::vector<double> out(5, 0.0);
  for (std::size_t i : rows)
    for (int k = 0; k < 5; ++k) {
      const double d = pred[i * 6 + cols[k]] - truth[i * 6 + cols[k]];
      out[k] += d * d;
    }
  for (double& v : out) v = std::sqrt(v / std::max<std::size_t>(1, rows.size()));
  return out;
}

int run_bench(const Options& o) {
  const Propagator p = Propagator::load(o.model);
  const RungeKutta field = RungeKutta::load(o.field);
  const tracklstm::Tensor w = tracklstm::read_tensor(o.input), t = tracklstm::read_tensor(o.truth);
  const int per = p.states_per_step();
  const std::vector<double> states = last_states(w, per);
  const std::size_t n = w.shape[0];
  if (t.values.size() != n * 6) throw std::runtime_error("--truth: expected (n, 6) next states");
  const std::vector<double>& truth = t.values;
  // The step of each window: a plane step (about 2 cm) or a long one (28 and 48 cm gaps).
  std::vector<std::size_t> plane_rows, long_rows, all_rows;
  std::vector<State> last(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::copy_n(&states[(i * per + per - 1) * 6], 6, last[i].begin());
    (truth[i * 6 + 2] - last[i][2] > 10.0 ? long_rows : plane_rows).push_back(i);
    all_rows.push_back(i);
  }
  if (plane_rows.empty() || long_rows.empty())
    throw std::runtime_error("--bench: the windows need both plane steps and long steps");
  const double secs = o.seconds;
  constexpr std::size_t kBatch = 1024;
  std::ostringstream js;
  js.precision(6);
  js << "{\n  \"windows\": " << n << ", \"plane_steps\": " << plane_rows.size()
     << ", \"long_steps\": " << long_rows.size() << ", \"threads\": " << o.threads
     << ", \"batch\": " << kBatch << ",\n";

  // The learned propagator: errors, then per call (batch 1) and per step at batch 1,024.
  std::vector<double> next(n * 6), cov(n * 25);
  p.step(n, states.data(), next.data(), p.has_covariance() ? cov.data() : nullptr);
  js << "  \"propagator\": {\"history\": " << p.history() << ", \"covariance\": "
     << (p.has_covariance() ? "true" : "false") << ",\n    \"rms\": {\"plane\": "
     << json_array(rms(next, truth, plane_rows)) << ", \"long\": " << json_array(rms(next, truth, long_rows))
     << ", \"all\": " << json_array(rms(next, truth, all_rows)) << "},\n";
  std::vector<std::vector<double>> out_t(o.threads, std::vector<double>(kBatch * 6)),
      cov_t(o.threads, std::vector<double>(kBatch * 25));
  const std::size_t stride = static_cast<std::size_t>(per) * 6;
  for (int with_cov = 0; with_cov <= (p.has_covariance() ? 1 : 0); ++with_cov) {
    const std::string tag = with_cov ? "_covariance" : "";
    for (const auto& [name, rows] : {std::pair{"plane", &plane_rows}, std::pair{"long", &long_rows}}) {
      const double us = time_us(secs, 1.0, [&](long k) {
        const std::size_t i = (*rows)[k % rows->size()];
        p.step(1, &states[i * stride], out_t[0].data(), with_cov ? cov_t[0].data() : nullptr);
        g_sink = g_sink + out_t[0][0];
      });
      js << "    \"call_us" << tag << "_" << name << "\": " << us << ",\n";
    }
    const std::size_t blocks = n / kBatch;
    if (blocks == 0) throw std::runtime_error("--bench: needs at least 1024 windows");
    auto batch = [&](int th, long k) {
      const std::size_t start = (k % blocks) * kBatch;
      p.step(kBatch, &states[start * stride], out_t[th].data(), with_cov ? cov_t[th].data() : nullptr);
      g_sink = g_sink + out_t[th][0];
    };
    js << "    \"batch_us_per_step" << tag << "\": " << time_us(secs, kBatch, [&](long k) { batch(0, k); })
       << ",\n    \"batch_steps_per_s_all_threads" << tag << "\": " << throughput(o.threads, secs, kBatch, batch)
       << ",\n    \"call_steps_per_s_all_threads" << tag << "\": "
       << throughput(o.threads, secs, 1.0, [&](int th, long k) {
            const std::size_t i = k % n;
            p.step(1, &states[i * stride], out_t[th].data(), with_cov ? cov_t[th].data() : nullptr);
            g_sink = g_sink + out_t[th][0];
          })
       << (with_cov ? "\n" : ",\n");
  }
  if (p.has_covariance()) {  // what a Kalman filter's prediction needs: state, Q and J
    std::vector<double> jac(25);
    js << "    ,\"call_us_covariance_jacobian\": " << time_us(secs, 1.0, [&](long k) {
      const std::size_t i = all_rows[k % n];
      p.step(1, &states[i * stride], out_t[0].data(), cov_t[0].data(), jac.data());
      g_sink = g_sink + jac[0];
    }) << "\n";
  }
  js << "  },\n  \"runge_kutta\": [\n";
  // The field map's Runge-Kutta at each longest step: errors and times.
  for (std::size_t m = 0; m < o.rk_max_steps.size(); ++m) {
    const RungeKutta rk = field.with_max_step(o.rk_max_steps[m]);
    std::vector<double> pred(n * 6);
    for (std::size_t i = 0; i < n; ++i) {
      const State r = rk.propagate(last[i], truth[i * 6 + 2]);
      std::copy(r.begin(), r.end(), &pred[i * 6]);
    }
    js << "    {\"max_step_cm\": " << rk.max_step() << ", \"rms\": {\"plane\": "
       << json_array(rms(pred, truth, plane_rows)) << ", \"long\": " << json_array(rms(pred, truth, long_rows))
       << ", \"all\": " << json_array(rms(pred, truth, all_rows)) << "},\n";
    for (const auto& [name, rows] : {std::pair{"plane", &plane_rows}, std::pair{"long", &long_rows}}) {
      const double us = time_us(secs, 1.0, [&](long k) {
        const std::size_t i = (*rows)[k % rows->size()];
        g_sink = g_sink + rk.propagate(last[i], truth[i * 6 + 2])[0];
      });
      js << "     \"call_us_" << name << "\": " << us << ",\n";
    }
    auto all = [&](int, long k) {
      const std::size_t i = k % n;
      g_sink = g_sink + rk.propagate(last[i], truth[i * 6 + 2])[0];
    };
    js << "     \"call_us_all\": " << time_us(secs, 1.0, [&](long k) { all(0, k); })
       << ", \"call_steps_per_s_all_threads\": " << throughput(o.threads, secs, 1.0, all) << "}"
       << (m + 1 < o.rk_max_steps.size() ? ",\n" : "\n");
  }
  js << "  ]\n}\n";
  std::cout << js.str();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    if (o.bench) return run_bench(o);
    return o.model.empty() ? run_field(o) : run_model(o);
  } catch (const std::exception& e) {
    std::cerr << "tracklstm_propagate: " << e.what() << "\n";
    return 1;
  }
}
