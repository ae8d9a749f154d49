#include <chrono>
#include <cstring>
#include <iomanip>
#include <vector>

#include "bench/commands.h"
#include "bench/gpu_bench.h"
#include "bench/host_tensor.h"
#include "bench/records.h"

namespace moex::bench {

std::string default_device() { return gpu::built_with_cuda() ? "cuda" : "cpu"; }

Expected<std::unique_ptr<Backend>> make_backend(const std::string& device, int threads) {
  if (device == "cpu") return make_cpu_backend(threads);
  if (device == "cuda") return make_cuda_backend(0);
  return invalid_argument("--device: '" + device + "' is not cpu or cuda");
}

namespace {

double seconds_of(const std::function<void()>& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void print_ceilings(const Ceilings& c, const std::string& path, std::ostream& out) {
  out << std::fixed << std::setprecision(3) << c.device_name << ": copy " << c.copy_bytes_per_s / 1e12 << " TB/s, bf16 "
      << c.bf16_flops_per_s / 1e12 << " TFLOP/s, fp8 " << c.fp8_flops_per_s / 1e12 << " TFLOP/s -> " << path << "\n";
}

}  // namespace

Expected<Ceilings> measure_cpu_ceilings(Backend& cpu) {
  Ceilings c;
  c.device_name = cpu_model_name();
  // Copy: 256 MiB each way, in parallel slices; best of 5.
  const size_t bytes = size_t(256) << 20;
  std::vector<uint8_t> src(bytes, 0x5a), dst(bytes, 0);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    best = std::min(best, seconds_of([&] {
      const int64_t slices = 64;
#pragma omp parallel for schedule(static)
      for (int64_t s = 0; s < slices; ++s) {
        size_t b = bytes / slices * size_t(s);
        std::memcpy(dst.data() + b, src.data() + b, bytes / slices);
      }
    }));
  }
  c.copy_bytes_per_s = 2.0 * double(bytes) / best;
  // GEMM: the CPU backend's matmul at 1024^3.
  const int64_t m = 1024;
  HostTensor x(DType::kF32, {m, m}), w(DType::kBF16, {m, m}), o(DType::kF32, {m, m});
  fill_uniform(&x, 1, -1.f, 1.f);
  fill_uniform(&w, 2, -1.f, 1.f);
  ops::MatmulParams p;
  p.x = x.t;
  p.w = w.t;
  p.out = o.t;
  MOEX_RETURN_IF_ERROR(cpu.matmul(p));  // warm-up
  best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    Status s;
    best = std::min(best, seconds_of([&] { s = cpu.matmul(p); }));
    MOEX_RETURN_IF_ERROR(s);
  }
  c.bf16_flops_per_s = 2.0 * double(m * m * m) / best;
  c.fp8_flops_per_s = 0;
  c.measured_at = utc_timestamp();
  c.commit = current_commit();
  return c;
}

Expected<Ceilings> run_roofline(const RooflineOptions& o, std::ostream& out) {
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<Backend> be, make_backend(o.device));
  Ceilings c;
  if (be->device() == DeviceType::kCuda) {
    MOEX_ASSIGN_OR_RETURN(gpu::RooflineMeasurement m, gpu::measure_roofline(0, o.copy_mib << 20, o.gemm_size));
    c.device_name = m.device_name;
    c.copy_bytes_per_s = m.copy_bytes_per_s;
    c.bf16_flops_per_s = m.bf16_flops_per_s;
    c.fp8_flops_per_s = m.fp8_flops_per_s;
    out << m.notes << "\n";
  } else {
    MOEX_ASSIGN_OR_RETURN(c, measure_cpu_ceilings(*be));
  }
  c.measured_at = utc_timestamp();
  c.commit = current_commit();
  MOEX_RETURN_IF_ERROR(save_ceilings(o.out_dir, c));
  print_ceilings(c, roofline_path(o.out_dir, c.device_name), out);
  return c;
}

Expected<Ceilings> ceilings_for(Backend& be, const std::string& out_dir, std::ostream& out) {
  std::string name = device_name_of(be);
  Expected<Ceilings> stored = load_ceilings(out_dir, name);
  if (stored) return stored;
  if (stored.status().code() != StatusCode::kNotFound) return stored.status();
  out << "no ceilings stored for " << name << ": measuring them first\n";
  RooflineOptions o;
  o.device = be.device() == DeviceType::kCuda ? "cuda" : "cpu";
  o.out_dir = out_dir;
  if (be.device() == DeviceType::kCuda) return run_roofline(o, out);
  MOEX_ASSIGN_OR_RETURN(Ceilings c, measure_cpu_ceilings(be));
  MOEX_RETURN_IF_ERROR(save_ceilings(out_dir, c));
  print_ceilings(c, roofline_path(out_dir, c.device_name), out);
  return c;
}

}  // namespace moex::bench
