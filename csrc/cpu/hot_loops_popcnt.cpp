// hot_loops.cpp again, compiled with -mpopcnt (see CMakeLists.txt): baseline x86-64 has no POPCNT
// instruction and __builtin_popcount becomes a library call. meta_entity_cpu.cpp uses this build on
// CPUs that have POPCNT (all x86-64 CPUs since about 2008) and the baseline build elsewhere.
#define MEDTRIM_KERNEL_NS popcnt_isa
#define MEDTRIM_CPU_VARIANT popcnt
#include "hot_loops.cpp"
