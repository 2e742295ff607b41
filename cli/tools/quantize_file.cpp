#include "tools/quantize_file.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "mmkit/error.h"
#include "mmkit/quantize.h"

namespace mmkit::tools {

namespace {

constexpr const char* kOp = "quantize";
namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The temporary output being written, for the signal handler (a fixed buffer:
// only async-signal-safe calls may touch it there).
char g_tmp_path[4096] = {0};
volatile std::sig_atomic_t g_tmp_active = 0;

extern "C" void remove_tmp_and_reraise(int sig) {
  if (g_tmp_active) ::unlink(g_tmp_path);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

/// The temporary file next to the output: removed unless commit() renamed it.
class TempOutput {
 public:
  explicit TempOutput(const std::string& out) : out_(out) {
    path_ = out + ".tmp." + std::to_string(::getpid());
    if (path_.size() < sizeof(g_tmp_path)) {
      std::strcpy(g_tmp_path, path_.c_str());
      g_tmp_active = 1;
      for (int sig : {SIGINT, SIGTERM, SIGHUP}) prev_[sig] = std::signal(sig, remove_tmp_and_reraise);
    }
  }
  ~TempOutput() {
    if (!committed_) {
      std::error_code ec;
      fs::remove(path_, ec);
    }
    release();
  }
  const std::string& path() const { return path_; }
  void commit() {
    std::error_code ec;
    fs::rename(path_, out_, ec);
    if (ec) throw_error(kOp, "cannot rename '", path_, "' to '", out_, "': ", ec.message(), ".");
    committed_ = true;
    release();
  }

 private:
  void release() {
    if (!g_tmp_active) return;
    g_tmp_active = 0;
    for (auto& [sig, h] : prev_) std::signal(sig, h);
    prev_.clear();
  }
  std::string out_, path_;
  bool committed_ = false;
  std::map<int, void (*)(int)> prev_;
};

struct Planned {
  const TensorInfo* in;
  bool quantize;
  std::string base;  // <module> when quantized
};

}  // namespace

bool default_name_rule(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  return ends_with(name, ".weight") && lower.find("norm") == std::string::npos;
}

std::string quantize_blocker(const TensorInfo& t, const QuantSpec& q) {
  if (!ends_with(t.name, ".weight") || t.name.size() == 7) return "not named <module>.weight";
  if (!is_floating(t.dtype)) return std::string("dtype ") + dtype_name(t.dtype) + " is not a float type";
  if (t.shape.size() < 2) return "fewer than 2 dimensions";
  if (t.shape.back() % q.group_size != 0)
    return "last dimension " + std::to_string(t.shape.back()) + " is not a multiple of the group size " +
           std::to_string(q.group_size);
  return "";
}

QuantizeFileReport quantize_safetensors(const std::string& in, const std::string& out, const QuantizeFileOptions& o,
                                        const TensorProgress& progress) {
  QuantizeFileReport rep;
  rep.quant = resolve_quant_spec(o.mode, o.bits, o.group_size);
  const QuantSpec& q = rep.quant;
  std::optional<std::regex> re;
  if (o.filter) {
    try {
      re.emplace(*o.filter, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw_error(kOp, "invalid --filter regular expression '", *o.filter, "': ", e.what(), ".");
    }
  }
  const SafetensorsReader reader(in);  // validates the whole header first
  rep.in_bytes = fs::file_size(in);    // before OUT (which may be IN with --force) replaces it
  if (fs::exists(out) && !o.force) throw_error(kOp, "'", out, "' already exists; pass --force to overwrite it.");

  // ---- plan: which tensors become <module>.weight/.scales/.biases -------------------
  std::vector<Planned> plan;
  std::set<std::string> in_names;
  for (const auto& t : reader.tensors()) in_names.insert(t.name);
  for (const auto& t : reader.tensors()) {
    const bool named = re ? std::regex_search(t.name, *re) : default_name_rule(t.name);
    std::string why = named ? quantize_blocker(t, q) : "";
    const bool quant = named && why.empty();
    // Only an explicit filter is worth reporting: the default rule meets 1-D
    // *.weight tensors (layer norms under other names) in every model.
    if (re && named && !quant) rep.not_quantizable.push_back(t.name + ": " + why);
    Planned p{&t, quant, quant ? t.name.substr(0, t.name.size() - 7) : ""};
    if (quant)
      for (const char* aux : {".scales", ".biases"})
        if (in_names.count(p.base + aux))
          throw_error(kOp, in, ": cannot quantize '", t.name, "': the file already has a tensor '", p.base, aux, "'.");
    plan.push_back(p);
  }
  const int64_t nq = std::count_if(plan.begin(), plan.end(), [](const Planned& p) { return p.quantize; });
  if (nq == 0)
    throw_error(kOp, in, ": no tensor to quantize (", o.filter ? "--filter '" + *o.filter + "'" : "default rule",
                " with ", q.str(), " matched none).");
  const auto& meta_in = reader.metadata();
  if (meta_in.count("quantization"))
    throw_error(kOp, in, " is already quantized (metadata quantization = ", meta_in.at("quantization"),
                "); quantize the original checkpoint.");

  // ---- declare the output, then stream tensor by tensor --------------------------------
  std::vector<TensorInfo> decl;
  const Dtype fp_scale = Dtype::uint8;
  for (const auto& p : plan) {
    const TensorInfo& t = *p.in;
    if (!p.quantize) {
      decl.push_back({t.name, t.dtype, t.shape, 0, 0});
      continue;
    }
    Shape ws = t.shape, ss = t.shape;
    ws.back() = t.shape.back() * q.bits / 32;
    ss.back() = t.shape.back() / q.group_size;
    const Dtype sdt = q.mode == "affine" ? t.dtype : fp_scale;
    decl.push_back({p.base + ".weight", Dtype::uint32, ws, 0, 0});
    decl.push_back({p.base + ".scales", sdt, ss, 0, 0});
    if (q.has_biases()) decl.push_back({p.base + ".biases", sdt, ss, 0, 0});
  }
  std::map<std::string, std::string> meta = meta_in;
  meta["quantization"] = q.json();

  TempOutput tmp(out);
  {
    SafetensorsWriter w(tmp.path(), decl, meta);
    for (size_t i = 0; i < plan.size(); ++i) {
      const Planned& p = plan[i];
      if (progress) progress(i, plan.size(), p.in->name);
      const Array a = reader.load(p.in->name);
      if (!p.quantize) {
        w.write(p.in->name, a);
        ++rep.copied;
        continue;
      }
      const auto qs = quantize(a, q.group_size, q.bits, q.mode);
      w.write(p.base + ".weight", qs[0]);
      w.write(p.base + ".scales", qs[1]);
      if (q.has_biases()) w.write(p.base + ".biases", qs[2]);
      ++rep.quantized;
    }
    if (progress) progress(plan.size(), plan.size(), "");
    w.close();
  }
  tmp.commit();
  rep.out_bytes = fs::file_size(out);
  return rep;
}

}  // namespace mmkit::tools
