// Builds hemseg/runtime/cuda/preprocess.cu, unchanged, against the CPU emulation in cuda_emu.hpp and exposes
// two C functions to ctypes: emu_signature(name) and emu_launch(name, grid, block, shared_mem, args).
// Build (the test does it): g++ -std=c++20 -O2 -ffp-contract=off -fPIC -shared -fvisibility=hidden -fno-gnu-unique
//                             -I<dir of preprocess.cu> emu_kernels.cpp -o libhemseg_cuda_emu.so
#include "cuda_emu.hpp"
#include "preprocess.cu"

#include <cstring>
#include <string>

namespace {
std::string g_signature;

template <class F>
bool dispatch(const char* name, F&& f)
{
#define HEMSEG_EMU_KERNEL(k) if (std::strcmp(name, #k) == 0) { f(k); return true; }
    HEMSEG_EMU_KERNEL(resize_linear_u8)
    HEMSEG_EMU_KERNEL(clahe_lut_u8)
    HEMSEG_EMU_KERNEL(clahe_interp_u8)
    HEMSEG_EMU_KERNEL(nlm_u8)
    HEMSEG_EMU_KERNEL(bilateral_u8)
    HEMSEG_EMU_KERNEL(normalize_f32)
    HEMSEG_EMU_KERNEL(normalize_f16)
#undef HEMSEG_EMU_KERNEL
    return false;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) const char* emu_signature(const char* name)
{
    g_signature.clear();
    if (!dispatch(name, [](auto k) { g_signature = emu_signature(k); })) return nullptr;
    return g_signature.c_str();
}

// returns 0 ok, 1 unknown kernel, 2 dynamic shared memory overrun
extern "C" __attribute__((visibility("default"))) int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, unsigned long long smem, void** args)
{
    int rc = 1;
    dispatch(name, [&](auto k) { rc = emu_launch(k, {gx, gy, gz}, {bx, by, bz}, (std::size_t)smem, args); });
    return rc;
}
