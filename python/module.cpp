// The pybind11 module medtrim_ext._C. Loading it registers the torch ops (see
// ops_registration*.cpp); the module itself reports how the extension was built.
#include <pybind11/pybind11.h>

#include <ATen/Parallel.h>

namespace py = pybind11;

#ifndef MEDTRIM_CUDA_ARCHS
#define MEDTRIM_CUDA_ARCHS ""
#endif
#ifndef MEDTRIM_CUDA_COMPILER_VERSION
#define MEDTRIM_CUDA_COMPILER_VERSION ""
#endif

namespace {

py::dict build_info() {
  py::dict info;
  py::list backends;
  backends.append("cpu");
#ifdef MEDTRIM_WITH_CUDA
  backends.append("cuda");
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["backends"] = backends;
  info["torch_version"] = MEDTRIM_TORCH_VERSION;
  info["cuda_archs"] = MEDTRIM_CUDA_ARCHS;
  info["nvcc_version"] = MEDTRIM_CUDA_COMPILER_VERSION;
  info["cpp_standard"] = static_cast<long>(__cplusplus);
  info["cpu_threads"] = at::get_num_threads();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled kernels of medtrim_ext (ops are under torch.ops.medtrim)";
  m.def("build_info", &build_info,
        "How this extension was built: backends, the torch it was built against, CUDA archs.");
}
