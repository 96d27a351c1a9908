// MT_HD marks the small helpers that the CPU and the CUDA kernels share.
#pragma once

#if defined(__CUDACC__)
#define MT_HD __host__ __device__ __forceinline__
#else
#define MT_HD inline
#endif
