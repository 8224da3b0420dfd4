// A small CPU emulation of the CUDA execution model, enough to run hemseg/runtime/cuda/preprocess.cu unchanged
// on a machine without a GPU (test-only; never shipped).
//
// The blocks of a launch run one after another. The threads of a block are fibers (ucontext stacks, switched with
// _setjmp/_longjmp) scheduled cooperatively: every fiber runs until its next __syncthreads() or its end, then the
// next one runs; a barrier completes when every fiber of the block has reached it. Rounds alternate forward and
// backward thread order, so a missing barrier shows up as wrong results (the schedule is as unfair as it gets).
// A block where some threads finish while others wait at a barrier is reported (undefined behaviour in CUDA).
// __shared__ variables become function statics (shared by the fibers of the running block); dynamic shared
// memory is a per-launch buffer with a guard zone; IEEE round-to-nearest intrinsics are plain float operations
// (the harness compiles with -ffp-contract=off). Kernel arguments arrive as an array of pointers to the argument
// values, as with cuLaunchKernel, and every kernel exports a signature string so the caller can check types.
#pragma once

#include <csetjmp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>

#define HEMSEG_CUDA_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

struct emu_uint3 { unsigned x, y, z; };

inline emu_uint3 threadIdx;
inline emu_uint3 blockIdx;
inline emu_uint3 blockDim;
inline emu_uint3 gridDim;
inline unsigned char* emu_dyn_smem = nullptr;

struct emu_fiber {
    ucontext_t start;
    jmp_buf env;
    emu_uint3 idx;
    bool started = false;
    bool done = false;
    bool at_barrier = false;
    std::vector<char> stack;
};
inline jmp_buf emu_sched_env;
inline emu_fiber* emu_current = nullptr;
inline std::function<void()> emu_body;

inline void __syncthreads()
{
    emu_current->at_barrier = true;
    if (!_setjmp(emu_current->env)) _longjmp(emu_sched_env, 1);
}

inline void emu_fiber_entry()
{
    emu_body();
    emu_current->done = true;
    _longjmp(emu_sched_env, 1);
}

#define HEMSEG_DYN_SMEM(name) unsigned char* name = emu_dyn_smem

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline int __float2int_rd(float x) { return (int)std::floor(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

inline unsigned short hs_f32_to_f16_bits(float f)
{
    _Float16 h = (_Float16)f;   // round to nearest even
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}

// -- argument type codes ------------------------------------------------------------------------------------------
template <class T> struct emu_code;
template <> struct emu_code<int> { static constexpr const char* v = "i32"; };
template <> struct emu_code<float> { static constexpr const char* v = "f32"; };
template <> struct emu_code<const unsigned char*> { static constexpr const char* v = "const u8*"; };
template <> struct emu_code<unsigned char*> { static constexpr const char* v = "u8*"; };
template <> struct emu_code<const int*> { static constexpr const char* v = "const i32*"; };
template <> struct emu_code<const short*> { static constexpr const char* v = "const i16*"; };
template <> struct emu_code<const float*> { static constexpr const char* v = "const f32*"; };
template <> struct emu_code<float*> { static constexpr const char* v = "f32*"; };
template <> struct emu_code<unsigned short*> { static constexpr const char* v = "u16*"; };

template <class... Ts>
std::string emu_signature(void (*)(Ts...))
{
    std::string s;
    ((s += std::string(emu_code<std::remove_cv_t<Ts>>::v) + ","), ...);
    return s;
}

// -- launching ------------------------------------------------------------------------------------------------------
constexpr std::size_t EMU_SMEM_GUARD = 4096;
constexpr std::size_t EMU_STACK_BYTES = 64 * 1024;
constexpr unsigned char EMU_GUARD_BYTE = 0xA5;

// Runs one block; returns 0, or 3 when threads diverge at a barrier (some finished, some waiting).
inline int emu_run_block(std::vector<emu_fiber>& fibers, std::size_t n)
{
    for (std::size_t j = 0; j < n; ++j) {
        emu_fiber& f = fibers[j];
        f.started = f.done = f.at_barrier = false;
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = f.stack.data();
        f.start.uc_stack.ss_size = f.stack.size();
        f.start.uc_link = nullptr;
        makecontext(&f.start, emu_fiber_entry, 0);
    }
    for (unsigned round = 0;; ++round) {
        std::size_t waiting = 0, finished_now = 0, alive = 0;
        for (std::size_t j = 0; j < n; ++j) {
            emu_fiber& f = fibers[(round % 2 == 0) ? j : n - 1 - j];
            if (f.done) continue;
            ++alive;
            f.at_barrier = false;
            emu_current = &f;
            threadIdx = f.idx;
            if (!_setjmp(emu_sched_env)) {
                if (!f.started) {
                    f.started = true;
                    setcontext(&f.start);
                } else {
                    _longjmp(f.env, 1);
                }
            }
            if (f.done) ++finished_now;
            else if (f.at_barrier) ++waiting;
        }
        if (alive == 0) return 0;
        if (waiting && finished_now) return 3;
        if (!waiting) return 0;
    }
}

// returns 0 on success, 2 when the kernel wrote past its dynamic shared memory, 3 on a divergent barrier
template <class... Ts>
int emu_launch(void (*kernel)(Ts...), emu_uint3 grid, emu_uint3 block, std::size_t smem, void** args)
{
    std::vector<unsigned long long> smem_buf((smem + EMU_SMEM_GUARD) / 8 + 1);
    unsigned char* base = (unsigned char*)smem_buf.data();
    std::memset(base, EMU_GUARD_BYTE, smem_buf.size() * 8);
    emu_dyn_smem = base;
    gridDim = grid;
    blockDim = block;
    const unsigned nthreads = block.x * block.y * block.z;
    static std::vector<emu_fiber> fibers;   // fibers and their stacks are reused across launches
    if (fibers.size() < nthreads) fibers.resize(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) {
        fibers[t].idx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        if (fibers[t].stack.size() < EMU_STACK_BYTES) fibers[t].stack.resize(EMU_STACK_BYTES);
    }
    emu_body = [&] {
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            kernel(*static_cast<std::remove_cv_t<Ts>*>(args[I])...);
        }(std::index_sequence_for<Ts...>{});
    };
    int rc = 0;
    for (unsigned bz = 0; bz < grid.z && rc == 0; ++bz)
        for (unsigned by = 0; by < grid.y && rc == 0; ++by)
            for (unsigned bx = 0; bx < grid.x && rc == 0; ++bx) {
                blockIdx = {bx, by, bz};
                rc = emu_run_block(fibers, nthreads);
            }
    emu_body = nullptr;
    if (rc) return rc;
    for (std::size_t k = smem; k < smem + EMU_SMEM_GUARD; ++k)
        if (base[k] != EMU_GUARD_BYTE) return 2;
    return 0;
}
