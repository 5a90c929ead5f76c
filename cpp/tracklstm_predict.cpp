// tracklstm_predict: run an exported tracklstm model from C++, any of three engines:
//
// - TorchScript (model.ts), loaded with torch::jit::load (deprecated with torch.jit in 2.13);
// - an AOTInductor package (model.aoti.pt2, from tracklstm.aoti), loaded with
//   torch::inductor::AOTIModelPackageLoader, torch.jit's successor for C++ hosts;
// - the plain C++ propagator (model.weights.txt, from tracklstm.export.plain), the header
//   tracklstm/propagator.hpp that needs no libtorch (a residual model with an MLP body).
//
// The engine is chosen by the file's content (its first line, or the records of its zip
// archive), not its name.
// Reads the model's metadata (window length, features, version), runs it on a tensor file of
// windows in physical units and writes the predicted states, and times batches of 64 to 16,384
// windows. File format and options: cpp/README.md.

#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tracklstm/propagator.hpp"
#include "tracklstm/tensor_file.hpp"

namespace {

struct Options {
  std::string model;
  std::string input;
  std::string output;
  std::string covariance;
  std::string device = "cpu";
  bool bench = false;
  bool print_metadata = false;
  std::vector<int64_t> bench_batches = {64, 256, 1024, 4096, 16384};
  double bench_seconds = 1.0;
  int64_t batch = 16384;
  int threads = 0;
};

const char* kUsage =
    "usage: tracklstm_predict --model model.ts|model.aoti.pt2\n"
    "                         [--input windows.bin --output predictions.bin]\n"
    "                         [--covariance covariances.bin]\n"
    "                         [--bench] [--bench-batches 64,256,...] [--bench-seconds S]\n"
    "                         [--device cpu|cuda|cuda:N] [--threads N] [--batch N]\n"
    "                         [--print-metadata]\n"
    "\n"
    "  --model PATH         TorchScript file (`tracklstm export`) or AOTInductor package\n"
    "                       (tracklstm.aoti); the engine is chosen by the file's content\n"
    "  --input PATH         float32 tensor file (N, window, 6) in cm and GeV/c\n"
    "  --output PATH        float32 tensor file (N, 6) to write (needs --input)\n"
    "  --covariance PATH    float64 tensor file (N, 5, 5) to write: each prediction's covariance\n"
    "                       of x, y, px, py, pz (a model with a covariance head: TorchScript,\n"
    "                       AOTInductor package or plain propagator; needs --output)\n"
    "  --batch N            windows per forward call when predicting (default 16384)\n"
    "  --bench              time batches on the device; prints a table on stdout\n"
    "  --bench-batches L    comma-separated batch sizes (default 64,256,1024,4096,16384)\n"
    "  --bench-seconds S    minimum timed seconds per batch size (default 1)\n"
    "  --device D           cpu (default), cuda or cuda:N\n"
    "  --threads N          CPU threads for intra-op parallelism (default: libtorch's)\n"
    "  --print-metadata     print the model's metadata JSON on stdout\n";

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 1) {
      throw UsageError("--bench-batches: '" + item + "' is not a positive integer");
    }
    out.push_back(v);
  }
  if (out.empty()) throw UsageError("--bench-batches: empty list");
  return out;
}

int64_t parse_int(const std::string& name, const std::string& text, int64_t min) {
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < min) {
    throw UsageError(name + ": '" + text + "' is not an integer >= " + std::to_string(min));
  }
  return v;
}

Options parse_args(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--model") {
      opt.model = value();
    } else if (arg == "--input") {
      opt.input = value();
    } else if (arg == "--output") {
      opt.output = value();
    } else if (arg == "--covariance") {
      opt.covariance = value();
    } else if (arg == "--device") {
      opt.device = value();
    } else if (arg == "--bench") {
      opt.bench = true;
    } else if (arg == "--print-metadata") {
      opt.print_metadata = true;
    } else if (arg == "--bench-batches") {
      opt.bench_batches = parse_list(value());
    } else if (arg == "--bench-seconds") {
      std::string text = value();
      char* end = nullptr;
      opt.bench_seconds = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || !(opt.bench_seconds >= 0.0)) {
        throw UsageError("--bench-seconds: '" + text + "' is not a number >= 0");
      }
    } else if (arg == "--batch") {
      opt.batch = parse_int(arg, value(), 1);
    } else if (arg == "--threads") {
      opt.threads = static_cast<int>(parse_int(arg, value(), 1));
    } else {
      throw UsageError("unknown option '" + arg + "'");
    }
  }
  if (opt.model.empty()) throw UsageError("--model is required");
  if (!opt.output.empty() && opt.input.empty()) throw UsageError("--output needs --input");
  if (!opt.covariance.empty() && opt.output.empty()) throw UsageError("--covariance needs --output");
  if (opt.input.empty() && !opt.bench && !opt.print_metadata) {
    throw UsageError("nothing to do: give --input, --bench or --print-metadata");
  }
  return opt;
}

// Tensor files (include/tracklstm/tensor_file.hpp, the one reader and writer): float32 in and
// out here (a float64 file is read and rounded).
torch::Tensor read_tensor(const std::string& path) {
  tracklstm::Tensor t = tracklstm::read_tensor(path);
  return torch::tensor(t.values, torch::kFloat64).reshape(t.shape).to(torch::kFloat32);
}

void write_tensor(const std::string& path, const torch::Tensor& tensor) {
  auto t = tensor.to(torch::kCPU, torch::kFloat32).contiguous();
  tracklstm::write_tensor(path, t.sizes().vec(), t.data_ptr<float>());
}

// ---------------------------------------------------------------------------------------------
// Engines: one interface over a TorchScript module and an AOTInductor package.

constexpr char kMetadataFile[] = "metadata.json";      // TorchScript extra file
constexpr char kMetadataKey[] = "tracklstm_metadata";  // AOTInductor metadata: the JSON
constexpr char kInputShapeKey[] = "tracklstm_input_shape";  // AOTInductor: "-1,7,6"
constexpr char kFlatPrefix[] = "tracklstm.";                // AOTInductor: one item as text

class Engine {
 public:
  virtual ~Engine() = default;
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  // The state and the (batch, 5, 5) float64 covariance, for a model with a covariance head.
  virtual bool has_covariance() const { return false; }
  virtual std::pair<torch::Tensor, torch::Tensor> forward_with_covariance(const torch::Tensor&) {
    throw std::runtime_error("engine " + name + ": this file holds no covariance (use the model's " +
                             "model.ts or model.weights.txt, trained with model.covariance: true)");
  }
  std::string name;           // "torchscript" or "aotinductor"
  std::string detail;         // shown in the summary line
  std::string metadata_json;  // the tracklstm metadata, JSON
  std::string version;
  int64_t window = 0;
  int64_t n_features = 0;
  std::vector<double> norm_min, norm_max;  // empty when unknown
};

class TorchScriptEngine : public Engine {
 public:
  TorchScriptEngine(const std::string& path, const torch::Device& device) {
    torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
    module_ = torch::jit::load(path, device, extra);
    module_.eval();
    if (!module_.hasattr("window_length") || extra[kMetadataFile].empty()) {
      throw std::runtime_error(path + ": no tracklstm metadata inside (not written by `tracklstm export`?)");
    }
    name = "torchscript";
    detail = "TorchScript, torch::jit::load";
    metadata_json = extra[kMetadataFile];
    version = module_.attr("version").toStringRef();
    window = module_.attr("window_length").toInt();
    n_features = module_.attr("n_features").toInt();
    norm_min = module_.attr("norm_min").toDoubleVector();
    norm_max = module_.attr("norm_max").toDoubleVector();
  }
  torch::Tensor forward(const torch::Tensor& x) override { return module_.forward({x}).toTensor(); }
  bool has_covariance() const override {
    return module_.find_method("forward_with_covariance").has_value();
  }
  std::pair<torch::Tensor, torch::Tensor> forward_with_covariance(const torch::Tensor& x) override {
    if (!has_covariance()) return Engine::forward_with_covariance(x);
    auto out = module_.get_method("forward_with_covariance")({x}).toTuple();
    return {out->elements()[0].toTensor(), out->elements()[1].toTensor()};
  }

 private:
  torch::jit::Module module_;
};

std::vector<double> parse_doubles(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0') return {};
    out.push_back(v);
  }
  return out;
}

class AotiEngine : public Engine {
 public:
  // with_covariance: the package holds a second model, "covariance" (forward_with_covariance).
  AotiEngine(const std::string& path, const torch::Device& device, bool with_covariance) {
    // Read the metadata first (no code loaded): a package only runs on the device it was built for.
    auto meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    auto get = [&](const std::string& key) {
      auto it = meta.find(key);
      return it == meta.end() ? std::string() : it->second;
    };
    if (get(kMetadataKey).empty() || get(kInputShapeKey).empty()) {
      throw std::runtime_error(path + ": no tracklstm metadata inside (not written by tracklstm.aoti?)");
    }
    const std::string built_for = get("AOTI_DEVICE_KEY").empty() ? "cpu" : get("AOTI_DEVICE_KEY");
    if (built_for != (device.is_cuda() ? "cuda" : "cpu")) {
      throw std::runtime_error(path + ": AOTInductor package compiled for " + built_for +
                               ", cannot run on " + device.str());
    }
    std::vector<double> shape = parse_doubles(get(kInputShapeKey));
    if (shape.size() != 3) throw std::runtime_error(path + ": bad " + std::string(kInputShapeKey));
    auto load = [&](const char* model_name) {
      return std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          path, model_name, /*run_single_threaded=*/false, /*num_runners=*/1,
          device.is_cuda() ? device.index() : static_cast<c10::DeviceIndex>(-1));
    };
    loader_ = load("model");
    if (with_covariance) covariance_ = load("covariance");
    name = "aotinductor";
    detail = "AOTInductor package, " + built_for;
    if (!get("AOTI_CPU_ISA").empty() && built_for == "cpu") detail += " " + get("AOTI_CPU_ISA");
    metadata_json = get(kMetadataKey);
    version = get(std::string(kFlatPrefix) + "tracklstm_version");
    window = static_cast<int64_t>(shape[1]);
    n_features = static_cast<int64_t>(shape[2]);
    norm_min = parse_doubles(get(std::string(kFlatPrefix) + "norm_min"));
    norm_max = parse_doubles(get(std::string(kFlatPrefix) + "norm_max"));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    // The compiled code assumes a contiguous float32 input of the traced layout.
    return loader_->run({x.is_contiguous() ? x : x.contiguous()})[0];
  }
  bool has_covariance() const override { return covariance_ != nullptr; }
  std::pair<torch::Tensor, torch::Tensor> forward_with_covariance(const torch::Tensor& x) override {
    if (!has_covariance()) return Engine::forward_with_covariance(x);
    auto out = covariance_->run({x.is_contiguous() ? x : x.contiguous()});
    return {out[0], out[1]};
  }

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> covariance_;
};

// The number array at "key" in a flat JSON text ("key": [1.0, 2.0]), empty when absent.
std::vector<double> json_numbers(const std::string& json, const std::string& key) {
  const auto at = json.find("\"" + key + "\": [");
  if (at == std::string::npos) return {};
  const auto start = json.find('[', at) + 1, end = json.find(']', start);
  std::string list = json.substr(start, end - start);
  list.erase(std::remove(list.begin(), list.end(), ' '), list.end());
  return parse_doubles(list);
}

// The JSON string at "key", empty when absent.
std::string json_string(const std::string& json, const std::string& key) {
  const auto at = json.find("\"" + key + "\": \"");
  if (at == std::string::npos) return {};
  const auto start = at + key.size() + 5;
  return json.substr(start, json.find('"', start) - start);
}

class PlainEngine : public Engine {
 public:
  PlainEngine(const std::string& path, const torch::Device& device)
      : prop_(tracklstm::Propagator::load(path)) {
    if (device.is_cuda()) throw std::runtime_error(path + ": the plain C++ propagator runs on the CPU only");
    name = "plain";
    detail = std::string("plain C++ propagator, no libtorch, history ") + std::to_string(prop_.history()) +
             (prop_.has_covariance() ? ", with covariance" : "");
    metadata_json = prop_.metadata_json();
    version = json_string(metadata_json, "tracklstm_version");
    window = prop_.window_length();
    n_features = 6;
    norm_min = json_numbers(metadata_json, "norm_min");
    norm_max = json_numbers(metadata_json, "norm_max");
  }
  torch::Tensor forward(const torch::Tensor& x) override { return run(x, false).first; }
  bool has_covariance() const override { return prop_.has_covariance(); }
  std::pair<torch::Tensor, torch::Tensor> forward_with_covariance(const torch::Tensor& x) override {
    if (!has_covariance()) return Engine::forward_with_covariance(x);
    return run(x, true);
  }

 private:
  // The windows' last states_per_step() states through Propagator::step: the states (float32)
  // and, with `covariance`, the (n, 5, 5) covariances (float64; otherwise an empty tensor).
  std::pair<torch::Tensor, torch::Tensor> run(const torch::Tensor& x, bool covariance) {
    const int64_t n = x.size(0), per = prop_.states_per_step();
    auto last = x.slice(1, x.size(1) - per).to(torch::kFloat64).contiguous();
    auto out = torch::empty({n, 6}, torch::kFloat64);
    auto cov = torch::empty({covariance ? n : 0, 5, 5}, torch::kFloat64);
    prop_.step(static_cast<std::size_t>(n), last.data_ptr<double>(), out.data_ptr<double>(),
               covariance ? cov.data_ptr<double>() : nullptr);
    return {out.to(torch::kFloat32), cov};
  }

  tracklstm::Propagator prop_;
};

// Which engine a file needs: its first line (a propagator file) or its zip records (names
// without the archive's folder).
std::unique_ptr<Engine> load_engine(const std::string& path, const torch::Device& device) {
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw std::runtime_error(path + ": cannot open");
    std::string first;
    std::getline(probe, first);
    if (first.rfind(tracklstm::Propagator::kMagic, 0) == 0) return std::make_unique<PlainEngine>(path, device);
  }
  std::vector<std::string> records;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    records = reader.getAllRecords();
  } catch (const c10::Error&) {
    throw std::runtime_error(path + ": not a TorchScript file or AOTInductor package (not a PyTorch zip archive)");
  }
  bool aoti = false, aoti_covariance = false, script = false, program = false;
  for (const auto& r : records) {
    if (r.rfind("data/aotinductor/", 0) == 0) aoti = true;
    if (r.rfind("data/aotinductor/covariance/", 0) == 0) aoti_covariance = true;
    if (r == "constants.pkl" || r.rfind("code/", 0) == 0) script = true;
    if (r.rfind("models/", 0) == 0) program = true;
  }
  if (aoti) return std::make_unique<AotiEngine>(path, device, aoti_covariance);
  if (script) return std::make_unique<TorchScriptEngine>(path, device);
  if (program) {
    throw std::runtime_error(path + ": a torch.export program (model.pt2), not compiled code; "
                             "compile it into an AOTInductor package (python -m tracklstm.aoti)");
  }
  throw std::runtime_error(path + ": neither a TorchScript file (code/, constants.pkl) nor an "
                           "AOTInductor package (data/aotinductor/)");
}

// ---------------------------------------------------------------------------------------------

// The predicted states (and, with `covariance`, their covariances into *covariance).
torch::Tensor run_batches(Engine& engine, const torch::Tensor& x, int64_t batch,
                          const torch::Device& device, torch::Tensor* covariance = nullptr) {
  std::vector<torch::Tensor> parts, covs;
  for (int64_t start = 0; start < x.size(0); start += batch) {
    auto chunk = x.slice(0, start, std::min(start + batch, x.size(0))).to(device);
    if (covariance) {
      auto [state, cov] = engine.forward_with_covariance(chunk);
      parts.push_back(state.to(torch::kCPU));
      covs.push_back(cov.to(torch::kCPU, torch::kFloat64));
    } else {
      parts.push_back(engine.forward(chunk).to(torch::kCPU));
    }
  }
  if (covariance) *covariance = covs.empty() ? torch::empty({0, 5, 5}, torch::kFloat64) : torch::cat(covs, 0);
  if (parts.empty()) return torch::empty({0, x.size(2)}, torch::kFloat32);
  return torch::cat(parts, 0);
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

void bench(Engine& engine, const Options& opt, const torch::Device& device,
           const torch::Tensor& source) {
  std::cout << "device\tbatch\tms_per_batch\twindows_per_s\trepeats\tengine\n";
  for (int64_t batch : opt.bench_batches) {
    // Cycle through the source windows to fill the batch.
    auto idx = torch::arange(batch, torch::kLong).remainder(source.size(0));
    auto x = source.index_select(0, idx).contiguous().to(device);
    for (int i = 0; i < 3; ++i) engine.forward(x);  // warm-up (the JIT profiles first calls)
    synchronize(device);
    int64_t repeats = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double elapsed = 0.0;
    do {
      engine.forward(x);
      synchronize(device);
      ++repeats;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (elapsed < opt.bench_seconds || repeats < 3);
    const double per_batch = elapsed / static_cast<double>(repeats);
    std::cout << device.str() << '\t' << batch << '\t' << std::fixed << std::setprecision(5)
              << per_batch * 1e3 << '\t' << std::setprecision(0)
              << static_cast<double>(batch) / per_batch << '\t' << repeats << '\t' << engine.name
              << std::endl;
  }
}

int run(const Options& opt) {
  if (opt.threads > 0) at::set_num_threads(opt.threads);
  torch::Device device(opt.device);  // throws on a malformed device string
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw std::runtime_error("--device " + opt.device + ": CUDA is not available (CPU-only libtorch or no GPU)");
  }
  if (!device.is_cpu() && !device.is_cuda()) throw UsageError("--device must be cpu, cuda or cuda:N");

  std::unique_ptr<Engine> engine = load_engine(opt.model, device);
  const int64_t window = engine->window;
  const int64_t n_features = engine->n_features;
  std::cerr << "model " << opt.model << ": engine " << engine->name << " (" << engine->detail
            << "), tracklstm " << engine->version << ", input (batch, " << window << ", "
            << n_features << ") in cm and GeV/c, device " << device.str() << ", "
            << at::get_num_threads() << " CPU threads" << std::endl;
  if (opt.print_metadata) std::cout << engine->metadata_json << std::endl;

  c10::InferenceMode guard;
  torch::Tensor inputs;
  if (!opt.input.empty()) {
    inputs = read_tensor(opt.input);
    if (inputs.dim() != 3 || inputs.size(1) != window || inputs.size(2) != n_features) {
      std::ostringstream msg;
      msg << opt.input << ": shape " << inputs.sizes() << ", the model needs (N, " << window << ", "
          << n_features << ")";
      throw std::runtime_error(msg.str());
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (!opt.covariance.empty() && !engine->has_covariance()) engine->forward_with_covariance(inputs);
    torch::Tensor covariances;
    auto outputs = run_batches(*engine, inputs, opt.batch, device,
                               opt.covariance.empty() ? nullptr : &covariances);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cerr << "predicted " << inputs.size(0) << " windows in " << std::fixed << std::setprecision(3)
              << seconds << " s" << std::endl;
    if (!opt.output.empty()) {
      write_tensor(opt.output, outputs);
      std::cerr << "wrote " << opt.output << std::endl;
    }
    if (!opt.covariance.empty()) {
      auto c = covariances.contiguous();
      tracklstm::write_tensor(opt.covariance, c.sizes().vec(), c.data_ptr<double>());
      std::cerr << "wrote " << opt.covariance << std::endl;
    }
  }
  if (opt.bench) {
    torch::Tensor source = inputs;
    if (!source.defined() || source.size(0) == 0) {
      // Windows spread uniformly over the normalization box of the training data.
      torch::manual_seed(0);
      source = torch::rand({16384, window, n_features});
      if (static_cast<int64_t>(engine->norm_min.size()) == n_features &&
          static_cast<int64_t>(engine->norm_max.size()) == n_features) {
        auto lo = torch::tensor(engine->norm_min, torch::kFloat32);
        auto hi = torch::tensor(engine->norm_max, torch::kFloat32);
        source = lo + source * (hi - lo);
      }
    }
    bench(*engine, opt, device, source);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& err) {
    std::cerr << "tracklstm_predict: " << err.what() << "\n\n" << kUsage;
    return 2;
  } catch (const c10::Error& err) {
    std::cerr << "tracklstm_predict: " << err.what_without_backtrace() << std::endl;
    return 1;
  } catch (const std::exception& err) {
    std::cerr << "tracklstm_predict: " << err.what() << std::endl;
    return 1;
  }
}
