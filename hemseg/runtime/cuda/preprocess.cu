// hemseg GPU preprocessing kernels: resize (INTER_LINEAR), CLAHE, non-local means, bilateral, normalize.
//
// Compiled at run time by CuPy (NVRTC), so this file is self-contained: no #include, no host code, only
// extern "C" __global__ kernels and __device__ helpers. Every kernel reproduces OpenCV's CPU arithmetic for 8-bit
// single-channel images (cv2.resize INTER_LINEAR, cv::CLAHE, cv2.fastNlMeansDenoising, cv2.bilateralFilter);
// the tables they read (resize offsets/coefficients, NLM weights, bilateral weights) are computed on the host by
// hemseg/runtime/cuda/tables.py exactly as OpenCV computes them.
//
// hemseg/runtime/cuda/reference.py is the numpy mirror of these kernels: each kernel names its mirror in a
// "REFERENCE:" comment. Float arithmetic uses the explicit IEEE round-to-nearest intrinsics (__fmul_rn, __fadd_rn,
// and __fmaf_rn where OpenCV's vectorized code uses a fused multiply-add) so the compiler cannot contract or
// reorder anything; that keeps the kernels bit-identical to the float32 numpy mirror.
//
// Layout: batches are contiguous (n, h, w) uint8; the output tensor is (n, channels, h, w) float32 or float16.
// Borders are OpenCV's BORDER_REFLECT_101 (= BORDER_DEFAULT).
//
// HEMSEG_CUDA_EMULATION is defined only by the CPU emulation harness in tests/cuda_emu/ (which supplies the
// dynamic shared memory and float16 helpers); NVRTC never sees it.

typedef unsigned char hs_u8;
typedef unsigned long long hs_idx;   // 64-bit index (NVRTC has no <cstddef>)

#ifndef HEMSEG_CUDA_EMULATION
// dynamic shared memory as bytes (declared as 8-byte words for alignment)
#define HEMSEG_DYN_SMEM(name)                                  \
    extern __shared__ unsigned long long hs_dyn_smem_words[];  \
    unsigned char* name = (unsigned char*)hs_dyn_smem_words

// float32 -> IEEE binary16 bits, round to nearest even (same as numpy's astype(float16)).
__device__ __forceinline__ unsigned short hs_f32_to_f16_bits(float f)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

__device__ __forceinline__ int hs_imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int hs_imax(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ hs_u8 hs_sat_u8(int v) { return (hs_u8)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

// OpenCV borderInterpolate(p, len, BORDER_REFLECT_101), valid for any p (loops like OpenCV for far-away p).
__device__ __forceinline__ int hs_reflect101(int p, int len)
{
    if (len == 1) return 0;
    while ((unsigned)p >= (unsigned)len) {
        p = (p < 0) ? -p : 2 * (len - 1) - p;
    }
    return p;
}

// ---------------------------------------------------------------------------------------------------------------
// 1. resize, cv2.INTER_LINEAR for uint8 (11-bit fixed point).           REFERENCE: reference.resize_u8
//    xofs/xcoef and yofs/ycoef: (dst_w, 2) and (dst_h, 2) int32 indices / int16 coefficients from
//    tables.resize_axis. Source image i of the launch is written to batch slot dst_index[i].
//    grid (ceil(dst_w / bx), ceil(dst_h / by), n), any block shape.
// ---------------------------------------------------------------------------------------------------------------
extern "C" __global__ void resize_linear_u8(
    const hs_u8* __restrict__ src, int src_h, int src_w,
    const int* __restrict__ xofs, const short* __restrict__ xcoef,
    const int* __restrict__ yofs, const short* __restrict__ ycoef,
    hs_u8* __restrict__ dst, int dst_h, int dst_w,
    const int* __restrict__ dst_index, int n)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    const int i = blockIdx.z;
    if (dx >= dst_w || dy >= dst_h || i >= n) return;

    const hs_u8* s = src + (hs_idx)i * src_h * src_w;
    const int x0 = xofs[2 * dx], x1 = xofs[2 * dx + 1];
    const int a0 = xcoef[2 * dx], a1 = xcoef[2 * dx + 1];
    const int y0 = yofs[2 * dy], y1 = yofs[2 * dy + 1];
    const int b0 = ycoef[2 * dy], b1 = ycoef[2 * dy + 1];
    const hs_u8* r0 = s + (hs_idx)y0 * src_w;
    const hs_u8* r1 = s + (hs_idx)y1 * src_w;
    // HResizeLinear: int row buffers
    const int d0 = r0[x0] * a0 + r0[x1] * a1;
    const int d1 = r1[x0] * a0 + r1[x1] * a1;
    // VResizeLinear<uchar, int, short, FixedPtCast<int, uchar, 22>>
    const int v = (((b0 * (d0 >> 4)) >> 16) + ((b1 * (d1 >> 4)) >> 16) + 2) >> 2;
    dst[((hs_idx)dst_index[i] * dst_h + dy) * dst_w + dx] = hs_sat_u8(v);
}

// ---------------------------------------------------------------------------------------------------------------
// 2a. CLAHE tile LUTs (cv::CLAHE CLAHE_CalcLut_Body<uchar, 256, 0>).       REFERENCE: reference.clahe_luts
//     One block per (tile, image): grid (tiles_x * tiles_y, n), 1-D block (256 threads suggested).
//     tile_w/tile_h come from the image padded (bottom/right, reflect101) to a multiple of the grid.
//     lut: (n, tiles_y * tiles_x, 256) uint8.
// ---------------------------------------------------------------------------------------------------------------
extern "C" __global__ void clahe_lut_u8(
    const hs_u8* __restrict__ src, int h, int w,
    int tiles_x, int tiles_y, int tile_w, int tile_h,
    int clip_limit, float lut_scale,
    hs_u8* __restrict__ lut)
{
    __shared__ int hist[256];
    const int k = blockIdx.x;
    const int i = blockIdx.y;
    const int ty = k / tiles_x, tx = k % tiles_x;
    const hs_u8* s = src + (hs_idx)i * h * w;

    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();

    const int area = tile_w * tile_h;
    for (int p = threadIdx.x; p < area; p += blockDim.x) {
        const int y = hs_reflect101(ty * tile_h + p / tile_w, h);
        const int x = hs_reflect101(tx * tile_w + p % tile_w, w);
        atomicAdd(&hist[s[(hs_idx)y * w + x]], 1);
    }
    __syncthreads();

    if (threadIdx.x == 0) {
        // clip histogram and redistribute, exactly OpenCV's sequential loops
        if (clip_limit > 0) {
            int clipped = 0;
            for (int b = 0; b < 256; ++b) {
                if (hist[b] > clip_limit) {
                    clipped += hist[b] - clip_limit;
                    hist[b] = clip_limit;
                }
            }
            const int redist_batch = clipped / 256;
            int residual = clipped - redist_batch * 256;
            for (int b = 0; b < 256; ++b) hist[b] += redist_batch;
            if (residual != 0) {
                const int residual_step = hs_imax(256 / residual, 1);
                for (int b = 0; b < 256 && residual > 0; b += residual_step, residual--) hist[b]++;
            }
        }
        // LUT = saturate_cast<uchar>(cumsum * lutScale), float32 product, round half to even
        hs_u8* out = lut + ((hs_idx)i * tiles_x * tiles_y + k) * 256;
        int sum = 0;
        for (int b = 0; b < 256; ++b) {
            sum += hist[b];
            out[b] = hs_sat_u8(__float2int_rn(__fmul_rn((float)sum, lut_scale)));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2b. CLAHE interpolation (CLAHE_Interpolation_Body<uchar, 0>).             REFERENCE: reference.clahe_apply
//     Tile centres: txf = x * inv_tw - 0.5 (float32), blend of the 4 neighbouring LUTs, round half to even.
//     inv_tw = 1.0f / tile_w and inv_th = 1.0f / tile_h are computed on the host in float32.
//     grid (ceil(w / bx), ceil(h / by), n). src and dst must not alias.
// ---------------------------------------------------------------------------------------------------------------
extern "C" __global__ void clahe_interp_u8(
    const hs_u8* __restrict__ src, hs_u8* __restrict__ dst, int h, int w,
    const hs_u8* __restrict__ lut, int tiles_x, int tiles_y, float inv_tw, float inv_th)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int i = blockIdx.z;
    if (x >= w || y >= h) return;

    const float txf = __fsub_rn(__fmul_rn((float)x, inv_tw), 0.5f);
    int tx1 = __float2int_rd(txf);
    const float xa = __fsub_rn(txf, (float)tx1);
    const float xa1 = __fsub_rn(1.0f, xa);
    const int tx2 = hs_imin(tx1 + 1, tiles_x - 1);
    tx1 = hs_imax(tx1, 0);

    const float tyf = __fsub_rn(__fmul_rn((float)y, inv_th), 0.5f);
    int ty1 = __float2int_rd(tyf);
    const float ya = __fsub_rn(tyf, (float)ty1);
    const float ya1 = __fsub_rn(1.0f, ya);
    const int ty2 = hs_imin(ty1 + 1, tiles_y - 1);
    ty1 = hs_imax(ty1, 0);

    const hs_idx pix = ((hs_idx)i * h + y) * w + x;
    const int v = src[pix];
    const hs_u8* L = lut + (hs_idx)i * tiles_x * tiles_y * 256;
    const float l11 = (float)L[(ty1 * tiles_x + tx1) * 256 + v];
    const float l12 = (float)L[(ty1 * tiles_x + tx2) * 256 + v];
    const float l21 = (float)L[(ty2 * tiles_x + tx1) * 256 + v];
    const float l22 = (float)L[(ty2 * tiles_x + tx2) * 256 + v];
    const float top = __fadd_rn(__fmul_rn(l11, xa1), __fmul_rn(l12, xa));
    const float bottom = __fadd_rn(__fmul_rn(l21, xa1), __fmul_rn(l22, xa));
    const float res = __fadd_rn(__fmul_rn(top, ya1), __fmul_rn(bottom, ya));
    dst[pix] = hs_sat_u8(__float2int_rn(res));
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Non-local means, cv2.fastNlMeansDenoising for uint8 (NORM_L2).          REFERENCE: reference.nlm_u8
//    One block computes a bx-by-by tile of output pixels of one image: grid (ceil(w / bx), ceil(h / by), n).
//    Dynamic shared memory (bytes), with dw = bx + 2*th, dh = by + 2*th, border = sh + th:
//        4 * (dh * dw + by * dw) + (by + 2*border) * (bx + 2*border)
//    For every search offset o the block computes the squared differences over its template-extended tile,
//    sums them over the template (columns, then rows; exact integers like OpenCV's incremental sums), and
//    accumulates est += w * I[p + o], wsum += w with w = weights[min(ssd >> shift, weights_used - 1)].
//    Result (unsigned(est) + wsum / 2) / wsum, as OpenCV's divByWeightsSum. src and dst must not alias.
// ---------------------------------------------------------------------------------------------------------------
extern "C" __global__ void nlm_u8(
    const hs_u8* __restrict__ src, hs_u8* __restrict__ dst, int h, int w,
    int template_half, int search_half, int shift,
    const int* __restrict__ weights, int weights_used)
{
    HEMSEG_DYN_SMEM(smem);
    const int bw = blockDim.x, bh = blockDim.y;
    const int th = template_half, sh = search_half;
    const int border = sh + th, tws = 2 * th + 1;
    const int tile_w = bw + 2 * border, tile_h = bh + 2 * border;
    const int dw = bw + 2 * th, dh = bh + 2 * th;
    int* diff = (int*)smem;                          // dh * dw
    int* colsum = diff + dh * dw;                    // bh * dw
    hs_u8* tile = (hs_u8*)(colsum + bh * dw);        // tile_h * tile_w

    const int i = blockIdx.z;
    const int x0 = blockIdx.x * bw, y0 = blockIdx.y * bh;
    const int px = threadIdx.x, py = threadIdx.y;
    const int tid = py * bw + px, nthreads = bw * bh;
    const hs_u8* s = src + (hs_idx)i * h * w;

    // the reflect101-extended neighbourhood of the block (OpenCV: copyMakeBorder(..., border, BORDER_DEFAULT))
    for (int p = tid; p < tile_h * tile_w; p += nthreads) {
        const int gy = hs_reflect101(y0 - border + p / tile_w, h);
        const int gx = hs_reflect101(x0 - border + p % tile_w, w);
        tile[p] = s[(hs_idx)gy * w + gx];
    }
    __syncthreads();

    int est = 0, wsum = 0;
    for (int oy = -sh; oy <= sh; ++oy) {
        for (int ox = -sh; ox <= sh; ++ox) {
            // (a) squared differences between each template pixel and its shifted twin
            for (int p = tid; p < dh * dw; p += nthreads) {
                const int r = p / dw, c = p % dw;
                const int a = tile[(sh + r) * tile_w + sh + c];
                const int b = tile[(sh + r + oy) * tile_w + sh + c + ox];
                diff[p] = (a - b) * (a - b);
            }
            __syncthreads();
            // (b) vertical template sums
            for (int p = tid; p < bh * dw; p += nthreads) {
                const int r = p / dw, c = p % dw;
                int acc = 0;
                for (int k = 0; k < tws; ++k) acc += diff[(r + k) * dw + c];
                colsum[p] = acc;
            }
            __syncthreads();
            // (c) horizontal template sums -> weight -> accumulate (the next (a)/(b) writes are fenced by the
            //     two barriers above, so no third barrier is needed here)
            int ssd = 0;
            for (int k = 0; k < tws; ++k) ssd += colsum[py * dw + px + k];
            const int wgt = __ldg(&weights[hs_imin(ssd >> shift, weights_used - 1)]);
            const int v = tile[(border + py + oy) * tile_w + border + px + ox];
            est += wgt * v;
            wsum += wgt;
        }
    }

    const int gx = x0 + px, gy = y0 + py;
    if (gx < w && gy < h) {
        const unsigned uw = (unsigned)wsum;
        const unsigned r = ((unsigned)est + uw / 2u) / uw;
        dst[((hs_idx)i * h + gy) * w + gx] = (hs_u8)(r > 255u ? 255u : r);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Bilateral filter, cv2.bilateralFilter for uint8 gray.                   REFERENCE: reference.bilateral_u8
//    Neighbour list (ofs_y, ofs_x, space_weight; maxk entries, OpenCV order) and color_weight (256) come from
//    tables.bilateral_tables. grid (ceil(w / bx), ceil(h / by), n). Dynamic shared memory (bytes):
//        4 * (256 + 3 * maxk) + (by + 2*radius) * (bx + 2*radius)
//    In neighbour order: wk = space_weight * color_weight (float32), wsum += wk, sum = fma(v, wk, sum) (one
//    rounding, as OpenCV's vectorized loop), result round_half_even(sum / wsum).
//    src and dst must not alias.
// ---------------------------------------------------------------------------------------------------------------
extern "C" __global__ void bilateral_u8(
    const hs_u8* __restrict__ src, hs_u8* __restrict__ dst, int h, int w, int radius,
    const int* __restrict__ ofs_y, const int* __restrict__ ofs_x,
    const float* __restrict__ space_weight, int maxk,
    const float* __restrict__ color_weight)
{
    HEMSEG_DYN_SMEM(smem);
    const int bw = blockDim.x, bh = blockDim.y;
    float* cw = (float*)smem;                        // 256
    float* sw = cw + 256;                            // maxk
    int* oy = (int*)(sw + maxk);                     // maxk
    int* ox = oy + maxk;                             // maxk
    hs_u8* tile = (hs_u8*)(ox + maxk);               // (bh + 2r) * (bw + 2r)
    const int tile_w = bw + 2 * radius, tile_h = bh + 2 * radius;

    const int i = blockIdx.z;
    const int x0 = blockIdx.x * bw, y0 = blockIdx.y * bh;
    const int px = threadIdx.x, py = threadIdx.y;
    const int tid = py * bw + px, nthreads = bw * bh;
    const hs_u8* s = src + (hs_idx)i * h * w;

    for (int p = tid; p < 256; p += nthreads) cw[p] = color_weight[p];
    for (int p = tid; p < maxk; p += nthreads) {
        sw[p] = space_weight[p];
        oy[p] = ofs_y[p];
        ox[p] = ofs_x[p];
    }
    for (int p = tid; p < tile_h * tile_w; p += nthreads) {
        const int gy = hs_reflect101(y0 - radius + p / tile_w, h);
        const int gx = hs_reflect101(x0 - radius + p % tile_w, w);
        tile[p] = s[(hs_idx)gy * w + gx];
    }
    __syncthreads();

    const int gx = x0 + px, gy = y0 + py;
    if (gx >= w || gy >= h) return;

    const int cy = radius + py, cx = radius + px;
    const int v0 = tile[cy * tile_w + cx];
    float sum = 0.0f, wsum = 0.0f;
    for (int k = 0; k < maxk; ++k) {
        const int v = tile[(cy + oy[k]) * tile_w + cx + ox[k]];
        const int dv = v > v0 ? v - v0 : v0 - v;
        const float wk = __fmul_rn(sw[k], cw[dv]);
        wsum = __fadd_rn(wsum, wk);
        sum = __fmaf_rn((float)v, wk, sum);     // OpenCV's SIMD path: v_muladd (FMA on AVX2/AVX-512/NEON)
    }
    dst[((hs_idx)i * h + gy) * w + gx] = hs_sat_u8(__float2int_rn(__fdiv_rn(sum, wsum)));
}

// ---------------------------------------------------------------------------------------------------------------
// 5. normalize: uint8 (n, h*w) -> (n, channels, h*w), x = (v * inv255 - mean) / std in float32, replicated.
//    REFERENCE: reference.normalize. 1-D grid-stride launch over n * hw. inv255 = float32(1.0 / 255.0).
// ---------------------------------------------------------------------------------------------------------------
__device__ __forceinline__ float hs_normalize(hs_u8 v, float inv255, float mean, float stdv)
{
    return __fdiv_rn(__fsub_rn(__fmul_rn((float)v, inv255), mean), stdv);
}

extern "C" __global__ void normalize_f32(
    const hs_u8* __restrict__ src, float* __restrict__ out, int n, int hw, int channels,
    float inv255, float mean, float stdv)
{
    const hs_idx total = (hs_idx)n * hw;
    for (hs_idx idx = (hs_idx)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (hs_idx)gridDim.x * blockDim.x) {
        const hs_idx i = idx / hw, p = idx % hw;
        const float x = hs_normalize(src[idx], inv255, mean, stdv);
        for (int c = 0; c < channels; ++c) out[(i * channels + c) * hw + p] = x;
    }
}

extern "C" __global__ void normalize_f16(
    const hs_u8* __restrict__ src, unsigned short* __restrict__ out, int n, int hw, int channels,
    float inv255, float mean, float stdv)
{
    const hs_idx total = (hs_idx)n * hw;
    for (hs_idx idx = (hs_idx)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (hs_idx)gridDim.x * blockDim.x) {
        const hs_idx i = idx / hw, p = idx % hw;
        const unsigned short x = hs_f32_to_f16_bits(hs_normalize(src[idx], inv255, mean, stdv));
        for (int c = 0; c < channels; ++c) out[(i * channels + c) * hw + p] = x;
    }
}
