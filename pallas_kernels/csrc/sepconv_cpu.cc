// CPU kernels of the separable local convolution (SepConv), exposed as XLA FFI handlers.
//
// Conventions (float32 everywhere; the JAX side casts other dtypes):
//   image       (B, C, H + K - 1, W + K - 1)
//   vertical    (B, K, H, W)        vertical[b, i, y, x] weights image row    y + i
//   horizontal  (B, K, H, W)        horizontal[b, j, y, x] weights image column x + j
//   out         (B, C, H, W)
// or, with the attribute kernel_layout = 1 ("BHWK"), vertical and horizontal (and their
// gradients) as (B, H, W, K): the taps of a pixel contiguous, the layout of an NHWC network's
// kernel maps. The kernels copy the maps into per-chunk tiles anyway (see load_tiles); for BHWK
// that copy is a small transpose, and so is the write-back of the kernel-map gradients.
//   out[b,c,y,x] = sum_i vertical[b,i,y,x] * sum_j image[b,c,y+i,x+j] * horizontal[b,j,y,x]
//
// Gradients (g = cotangent of out):
//   d_image[b,c,Y,X]      = sum_{i,j} g[b,c,Y-i,X-j] * V[b,i,Y-i,X-j] * H[b,j,Y-i,X-j]
//   d_vertical[b,i,y,x]   = sum_j H[b,j,y,x] * P[i,j],  d_horizontal[b,j,y,x] = sum_i V[b,i,y,x] * P[i,j]
//   with P[i,j] = sum_c g[b,c,y,x] * image[b,c,y+i,x+j]  (per pixel).
//
// Every kernel vectorises along x (rows are contiguous in NCHW) with GCC vector extensions, which
// compile to AVX-512 / AVX / SSE / NEON or scalar code depending on the target, so the file builds
// with any GCC or Clang (the only intrinsics, non-temporal stores and the 16 x 16 transposes of
// the BHWK layout, sit behind __AVX512F__ / __AVX__ / __SSE__ with plain fallbacks). All three kernels are gathers: each work unit
// owns disjoint output rows (bands of 4 rows for the forward and d_vertical / d_horizontal, of
// ~K rows for d_image), handed out through an atomic counter to the XLA CPU thread pool and the
// calling thread, so there are no atomics on the data and results do not depend on the schedule.

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#if defined(__SSE__)
#include <immintrin.h>  // only for the non-temporal stores in stream_store()
#endif

#include "huge_pages.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ------------------------------------------------------------------------------------------------
// Vector type.

#if defined(__AVX512F__)
constexpr int kVW = 16;
#elif defined(__AVX__) || defined(__ARM_NEON)
constexpr int kVW = 8;
#else
constexpr int kVW = 4;
#endif

// `may_alias` because the vectors are loaded from float arrays; `aligned(4)` makes every load and
// store an unaligned one (the shifted windows image[x + j] are never aligned).
typedef float vf __attribute__((vector_size(kVW * sizeof(float)), __may_alias__));
typedef float vfu
    __attribute__((vector_size(kVW * sizeof(float)), aligned(sizeof(float)), __may_alias__));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }

// A store that bypasses the caches (p must be sizeof(vf)-aligned); a plain store elsewhere.
inline void stream_store(float* p, vf v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
  _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE__)
  _mm_stream_ps(p, (__m128)v);
#else
  store(p, v);
#endif
}

// Pins a value in a vector register. GCC otherwise folds every use of a loaded vector into a
// memory operand of its FMA, which re-loads a tap shared by several FMAs once per FMA: the loads,
// not the FMAs, then bound the kernels.
inline void keep_in_register(vf& v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// Channels handled together (C = 3 in SepConv; more channels are processed in groups of kCB).
constexpr int kCB = 3;

// 64-byte aligned scratch that is not zero-initialised (std::vector would zero it). One per thread
// (thread_local), grown on demand and kept: at most a few MB (the d_image band accumulator).
struct Scratch {
  float* ptr = nullptr;
  size_t size = 0;
  ~Scratch() { std::free(ptr); }
  float* get(size_t n) {
    if (n > size) {
      std::free(ptr);
      ptr = nullptr;
      size = 0;
      size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      ptr = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (ptr == nullptr) throw std::bad_alloc();
      size = n;
    }
    return ptr;
  }
};

struct Geom {
  int64_t B, C, K, H, W;
  bool bhwk = false;  // kernel maps (B, H, W, K) instead of (B, K, H, W)
  int64_t img_h() const { return H + K - 1; }
  int64_t img_w() const { return W + K - 1; }
  int64_t plane() const { return H * W; }
  int64_t img_plane() const { return img_h() * img_w(); }
  // Strides of the kernel maps (and their gradients) between taps, rows and pixels.
  int64_t kstride() const { return bhwk ? 1 : plane(); }
  int64_t rstride() const { return bhwk ? W * K : W; }
  int64_t pstride() const { return bhwk ? K : 1; }
  int64_t map_offset(int64_t b, int64_t y, int64_t x) const {  // &map[b, tap 0, y, x]
    return b * K * plane() + y * rstride() + x * pstride();
  }
};

// ------------------------------------------------------------------------------------------------
// Parallel loop on the XLA CPU thread pool.
//
// Units are claimed from an atomic counter by the calling thread and by up to `threads - 1` pool
// tasks; the caller waits only for units already claimed, so a pool that is busy (or has no free
// thread) delays nothing and cannot deadlock: the caller simply does all the work itself. The
// state is shared-owned because a task may start after the loop has finished.

struct ParallelState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t n = 0;
  std::function<void(int64_t)> fn;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> failed{false};
  std::string error;

  void work() {
    for (;;) {
      int64_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= n) return;
      try {
        fn(k);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failed.exchange(true)) error = e.what();
      }
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

ffi::Error parallel_for(ffi::ThreadPool& pool, int64_t n, int64_t max_threads,
                        std::function<void(int64_t)> fn) {
  if (n <= 0) return ffi::Error::Success();
  auto state = std::make_shared<ParallelState>();
  state->n = n;
  state->fn = std::move(fn);
  int64_t threads = pool.num_threads();
  if (threads < 1) threads = 1;
  if (max_threads > 0) threads = std::min(threads, max_threads);
  int64_t helpers = std::min(threads, n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->work(); });
  state->work();
  {
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->done.load(std::memory_order_acquire) == n; });
  }
  if (state->failed.load()) return ffi::Error::Internal("sepconv_cpu: " + state->error);
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------------------------
// Layout helpers shared by the kernels.
//
// Work units are bands of kR consecutive output rows (y0 .. y0+kR-1) of one b, processed one column
// block of kVW pixels at a time. Image row r = y0 + t is tap i = t - q of output row y0 + q, so one
// load of the shifted window image[c, r, x+j : x+j+kVW] serves the kR rows of the band. The
// unaligned image loads (15 in 16 straddle two cache lines) are what bounds a row-by-row kernel;
// sharing them across rows makes the kernels FMA-bound instead.
constexpr int kR = 4;

inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// Kernel-map tiles: tile[xb][k][q][kVW] for column block xb of a chunk, tap k, band row q < kR.
// In the original layout the K taps of a pixel are H * W floats apart -- a multiple of 4 KiB for
// most frame sizes -- so they share one L1 cache set and evict each other; in a tile one column
// block is contiguous (K * kR * kVW floats). Chunks of kChunk columns are converted row by row
// (long sequential runs that the prefetchers follow: converting one column block at a time, K * kR
// scattered cache lines each, cost as much as the arithmetic). Padding past the last row (q >= nr)
// and column (>= n) is zero.
//   map: &map[b, 0, y0, x0] (tap stride kstride, row stride rstride)
constexpr int64_t kChunk = 16 * kVW;

// Small transposes between the BHWK layout (taps of a pixel contiguous) and rows of pixels:
//   transpose_in:  dst[k * dks + p] = src[p * sps + k]   for k < nk, p < m
//   transpose_out: dst[p * dps + k] = src[k * sks + p]   for k < nk, p < m
// With AVX-512 a full block of 16 pixels goes through 16 x 16 in-register transposes (masked
// loads / stores for the last nk % 16 taps); elsewhere, and for partial blocks, a scalar loop.
#if defined(__AVX512F__)
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8)
    for (int l = 0; l < 4; ++l) {
      t[i + l] = _mm512_shuffle_f32x4(r[i + l], r[i + l + 4], 0x88);
      t[i + l + 4] = _mm512_shuffle_f32x4(r[i + l], r[i + l + 4], 0xDD);
    }
  for (int l = 0; l < 8; ++l) {
    r[l] = _mm512_shuffle_f32x4(t[l], t[l + 8], 0x88);
    r[l + 8] = _mm512_shuffle_f32x4(t[l], t[l + 8], 0xDD);
  }
}
#endif

void transpose_in(const float* src, ptrdiff_t sps, int nk, int m, float* dst, ptrdiff_t dks) {
#if defined(__AVX512F__)
  if (m == 16) {
    for (int k0 = 0; k0 < nk; k0 += 16) {
      const int nt = std::min(16, nk - k0);
      const __mmask16 mask = static_cast<__mmask16>((1u << nt) - 1);
      __m512 r[16];
      for (int p = 0; p < 16; ++p) r[p] = _mm512_maskz_loadu_ps(mask, src + p * sps + k0);
      transpose16(r);
      for (int k = 0; k < nt; ++k) _mm512_storeu_ps(dst + (k0 + k) * dks, r[k]);
    }
    return;
  }
#endif
  for (int p = 0; p < m; ++p)
    for (int k = 0; k < nk; ++k) dst[k * dks + p] = src[p * sps + k];
}

void transpose_out(const float* src, ptrdiff_t sks, int nk, int m, float* dst, ptrdiff_t dps) {
#if defined(__AVX512F__)
  if (m == 16) {
    for (int k0 = 0; k0 < nk; k0 += 16) {
      const int nt = std::min(16, nk - k0);
      const __mmask16 mask = static_cast<__mmask16>((1u << nt) - 1);
      __m512 r[16];
      for (int k = 0; k < 16; ++k)
        r[k] = k < nt ? _mm512_loadu_ps(src + (k0 + k) * sks) : _mm512_setzero_ps();
      transpose16(r);
      for (int p = 0; p < 16; ++p) _mm512_mask_storeu_ps(dst + p * dps + k0, mask, r[p]);
    }
    return;
  }
#endif
  for (int k = 0; k < nk; ++k)
    for (int p = 0; p < m; ++p) dst[p * dps + k] = src[k * sks + p];
}

// Copies n floats; where the destination is vector aligned, with non-temporal stores (the caller
// fences). Returns whether any were streamed.
bool stream_copy(float* dst, const float* src, int64_t n) {
  int64_t head = (sizeof(vf) - reinterpret_cast<uintptr_t>(dst) % sizeof(vf)) % sizeof(vf);
  if (head % sizeof(float) != 0 || n < head / static_cast<int64_t>(sizeof(float)) + kVW) {
    std::memcpy(dst, src, sizeof(float) * n);
    return false;
  }
  head /= sizeof(float);
  std::memcpy(dst, src, sizeof(float) * head);
  int64_t i = head;
  for (; i + kVW <= n; i += kVW) stream_store(dst + i, load(src + i));
  std::memcpy(dst + i, src + i, sizeof(float) * (n - i));
  return true;
}

// load_tiles for BHWK maps: map = &map[b, y0, x0, 0], pixel stride K, row stride rstride.
void load_tiles_bhwk(const float* map, ptrdiff_t rstride, int K, int nr, int64_t n,
                     float* tiles) {
  const int64_t nxb = (n + kVW - 1) / kVW;
  constexpr ptrdiff_t ks = kR * kVW;
  for (int q = 0; q < kR; ++q)
    for (int64_t xb = 0; xb < nxb; ++xb) {
      float* d = tiles + (xb * K * kR + q) * kVW;
      const int m = q < nr ? static_cast<int>(std::min<int64_t>(kVW, n - xb * kVW)) : 0;
      if (m < kVW)
        for (int k = 0; k < K; ++k) std::memset(d + k * ks, 0, sizeof(float) * kVW);
      if (m > 0) transpose_in(map + q * rstride + xb * kVW * K, K, K, m, d, ks);
    }
}

// store_tiles for BHWK gradients: each block of kVW pixels is transposed in L1 and then copied
// out as one contiguous run (m * K floats), streamed where aligned.
void store_tiles_bhwk(const float* tiles, int K, int nr, int64_t n, float* map, ptrdiff_t rstride,
                      float* buf) {
  const int64_t nxb = (n + kVW - 1) / kVW;
  constexpr ptrdiff_t ks = kR * kVW;
  bool streamed = false;
  for (int q = 0; q < nr; ++q)
    for (int64_t xb = 0; xb < nxb; ++xb) {
      const int m = static_cast<int>(std::min<int64_t>(kVW, n - xb * kVW));
      transpose_out(tiles + (xb * K * kR + q) * kVW, ks, K, m, buf, K);
      streamed |= stream_copy(map + q * rstride + xb * kVW * K, buf, int64_t{m} * K);
    }
  if (streamed) std::atomic_thread_fence(std::memory_order_seq_cst);
}

// pstride: the maps' pixel stride, 1 in BKHW, K in BHWK (the layouts coincide when K == 1).
void load_tiles(const float* map, ptrdiff_t kstride, ptrdiff_t rstride, ptrdiff_t pstride, int K,
                int nr, int64_t n, float* tiles) {
  if (pstride != 1) return load_tiles_bhwk(map, rstride, K, nr, n, tiles);
  const int64_t nxb = (n + kVW - 1) / kVW;
  for (int k = 0; k < K; ++k)
    for (int q = 0; q < kR; ++q) {
      const float* src = map + k * kstride + q * rstride;
      for (int64_t xb = 0; xb < nxb; ++xb) {
        float* d = tiles + ((xb * K + k) * kR + q) * kVW;
        const int64_t m = q < nr ? std::min<int64_t>(kVW, n - xb * kVW) : 0;
        if (m == kVW) {
          store(d, load(src + xb * kVW));
        } else {
          std::memset(d, 0, sizeof(float) * kVW);
          if (m > 0) std::memcpy(d, src + xb * kVW, sizeof(float) * m);
        }
      }
    }
}

// Writes tiles back to a kernel-map gradient. The gradients are written once and not read again
// here, so where a row is vector aligned the full blocks use non-temporal stores: they skip the
// read-for-ownership of each destination line, which otherwise doubles the memory traffic.
void store_tiles(const float* tiles, int K, int nr, int64_t n, float* map, ptrdiff_t kstride,
                 ptrdiff_t rstride, ptrdiff_t pstride, float* buf) {
  if (pstride != 1) return store_tiles_bhwk(tiles, K, nr, n, map, rstride, buf);
  const int64_t nxb = (n + kVW - 1) / kVW;
  bool streamed = false;
  for (int k = 0; k < K; ++k)
    for (int q = 0; q < nr; ++q) {
      float* dst = map + k * kstride + q * rstride;
      const bool aligned = reinterpret_cast<uintptr_t>(dst) % sizeof(vf) == 0;
      streamed |= aligned;
      for (int64_t xb = 0; xb < nxb; ++xb) {
        const float* s = tiles + ((xb * K + k) * kR + q) * kVW;
        const int64_t m = std::min<int64_t>(kVW, n - xb * kVW);
        if (m == kVW && aligned) {
          stream_store(dst + xb * kVW, load(s));
        } else if (m == kVW) {
          store(dst + xb * kVW, load(s));
        } else {
          std::memcpy(dst + xb * kVW, s, sizeof(float) * m);
        }
      }
    }
  // Non-temporal stores are weakly ordered: fence them before the work unit is reported done.
  if (streamed) std::atomic_thread_fence(std::memory_order_seq_cst);
}

// Where a column block's image windows come from: the image itself, or for the last, partial
// block a zero-padded copy (rows of kVW + K - 1 floats), so the kernels never read past the array.
struct ImageBlock {
  const float* ptr;  // &image[b, c0, y0, x0] or the copy
  ptrdiff_t cs, rs;  // channel and row strides
};

ImageBlock image_block(const Geom& g, const float* img, int cb, int nt, int64_t x0, float* tmp) {
  const int64_t iw = g.img_w();
  if (x0 + kVW <= g.W) return {img + x0, g.img_plane(), iw};
  const int64_t tw = kVW + g.K - 1, n = iw - x0;
  for (int c = 0; c < cb; ++c)
    for (int t = 0; t < nt; ++t) {
      float* d = tmp + (c * nt + t) * tw;
      std::memcpy(d, img + c * g.img_plane() + t * iw + x0, sizeof(float) * n);
      std::memset(d + n, 0, sizeof(float) * (tw - n));
    }
  return {tmp, nt * tw, tw};
}

// Calls kernel<CB, NQ> for runtime cb in 1..kCB, nq in 1..kR.
template <template <int, int> class Kernel, typename... Args>
void dispatch(int cb, int nq, Args... args) {
  switch (cb * 8 + nq) {
#define SEPCONV_CASE(CB, NQ) \
  case CB * 8 + NQ:          \
    return Kernel<CB, NQ>::run(args...);
    SEPCONV_CASE(1, 1) SEPCONV_CASE(1, 2) SEPCONV_CASE(1, 3) SEPCONV_CASE(1, 4)
    SEPCONV_CASE(2, 1) SEPCONV_CASE(2, 2) SEPCONV_CASE(2, 3) SEPCONV_CASE(2, 4)
    SEPCONV_CASE(3, 1) SEPCONV_CASE(3, 2) SEPCONV_CASE(3, 3) SEPCONV_CASE(3, 4)
#undef SEPCONV_CASE
    default: std::abort();
  }
}
static_assert(kR == 4 && kCB == 3, "dispatch() lists the instantiations");

// ------------------------------------------------------------------------------------------------
// Forward.
//
// Band rows q in [qlo, qlo + NQ), image row r = y0 + t, channels c0 .. c0+CB-1:
//   res[q][c] += V[t - q][q] * sum_j image[c, r, x + j : +kVW] * H[j][q]
// H[j][q] is loaded once per j and shared by the CB channels, each image window by the NQ rows:
// CB + NQ loads per CB * NQ FMAs.
//   img: image window base (channel stride img_cs);  ht: &H_tile[0][qlo];  vt: &V_tile[t-qlo][qlo]
//   res: &res[qlo][0] (kCB vectors per row)
template <int CB, int NQ>
struct FwdTap {
  static void run(const float* __restrict img, ptrdiff_t img_cs, const float* __restrict ht,
                  const float* __restrict vt, int K, float* __restrict res) {
    constexpr ptrdiff_t ks = kR * kVW;
    vf acc[NQ][CB];
    for (int q = 0; q < NQ; ++q)
      for (int c = 0; c < CB; ++c) acc[q][c] = vf{};
    for (int j = 0; j < K; ++j) {
      vf hq[NQ];
      for (int q = 0; q < NQ; ++q) {
        hq[q] = load(ht + j * ks + q * kVW);
        keep_in_register(hq[q]);
      }
      for (int c = 0; c < CB; ++c) {
        vf im = load(img + c * img_cs + j);
        for (int q = 0; q < NQ; ++q) acc[q][c] += im * hq[q];
      }
    }
    for (int q = 0; q < NQ; ++q) {
      vf w = load(vt + q * (kVW - ks));  // tap t - q of row q
      for (int c = 0; c < CB; ++c) {
        float* r = res + (q * kCB + c) * kVW;
        store(r, load(r) + acc[q][c] * w);
      }
    }
  }
};

// Output rows [y0, y0 + nr) of image b, nr <= kR.
void fwd_band(const Geom& g, const float* image, const float* ver, const float* hor, float* out,
              int64_t b, int64_t y0, int nr, Scratch& scratch) {
  const int K = static_cast<int>(g.K);
  const int64_t kp = g.plane();
  const int64_t koff = g.map_offset(b, y0, 0);  // &V[b, 0, y0, 0]
  const int nt = K + nr - 1;                     // image rows the band reads
  const int64_t tile = K * kR * kVW;
  const int64_t chunk_tiles = kChunk / kVW * tile;
  float* s = scratch.get(2 * chunk_tiles + kR * kCB * kVW + kCB * nt * (kVW + K - 1));
  float* hts = s;
  float* vts = hts + chunk_tiles;
  float* res = vts + chunk_tiles;
  float* tmp = res + kR * kCB * kVW;
  for (int64_t xc = 0; xc < g.W; xc += kChunk) {
    const int64_t nc = std::min<int64_t>(kChunk, g.W - xc);
    const int64_t mo = koff + xc * g.pstride();
    load_tiles(hor + mo, g.kstride(), g.rstride(), g.pstride(), K, nr, nc, hts);
    load_tiles(ver + mo, g.kstride(), g.rstride(), g.pstride(), K, nr, nc, vts);
    for (int64_t x0 = xc; x0 < xc + nc; x0 += kVW) {
      const int n = static_cast<int>(std::min<int64_t>(kVW, g.W - x0));
      const float* ht = hts + (x0 - xc) / kVW * tile;
      const float* vt = vts + (x0 - xc) / kVW * tile;
      for (int64_t c0 = 0; c0 < g.C; c0 += kCB) {
        const int cb = static_cast<int>(std::min<int64_t>(kCB, g.C - c0));
        const ImageBlock ib = image_block(
            g, image + ((b * g.C + c0) * g.img_h() + y0) * g.img_w(), cb, nt, x0, tmp);
        std::memset(res, 0, sizeof(float) * kR * kCB * kVW);
        for (int t = 0; t < nt; ++t) {
          const int qlo = std::max(0, t - K + 1), qhi = std::min(nr, t + 1);  // 0 <= t - q < K
          dispatch<FwdTap>(cb, qhi - qlo, ib.ptr + t * ib.rs, ib.cs, ht + qlo * kVW,
                           vt + ((t - qlo) * kR + qlo) * kVW, K, res + qlo * kCB * kVW);
        }
        float* o = out + ((b * g.C + c0) * g.H + y0) * g.W + x0;
        for (int q = 0; q < nr; ++q)
          for (int c = 0; c < cb; ++c)
            std::memcpy(o + c * kp + q * g.W, res + (q * kCB + c) * kVW, sizeof(float) * n);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// d_vertical and d_horizontal, fused, on the same bands as the forward.
//
// Band rows q in [qlo, qlo + NQ), image row r = y0 + t (tap i = t - q of row q):
//   P_q[j]       = sum_c g[q][c] * image[c, r, x + j : +kVW]
//   dV[t - q][q] += sum_j P_q[j] * H[j][q]
//   dH[j][q]     += P_q[j] * V[t - q][q]
// The image windows are loaded once for the NQ rows; g, V and the dV sums stay in registers and
// the dH sums in the L1-resident tile.
//   gt: &g_tile[qlo][0] ([q][c][kVW]);  ht: &H_tile[0][qlo];  vt, dvt: &tile[t - qlo][qlo];
//   dht: &dH_tile[0][qlo]
template <int CB, int NQ>
struct DvhTap {
  static void run(const float* __restrict img, ptrdiff_t img_cs, const float* __restrict gt,
                  const float* __restrict ht, const float* __restrict vt, int K,
                  float* __restrict dvt, float* __restrict dht) {
    constexpr ptrdiff_t ks = kR * kVW;
    vf gq[NQ][CB], vq[NQ], dv[NQ];
    for (int q = 0; q < NQ; ++q) {
      for (int c = 0; c < CB; ++c) gq[q][c] = load(gt + (q * kCB + c) * kVW);
      vq[q] = load(vt + q * (kVW - ks));
      dv[q] = vf{};
    }
    for (int j = 0; j < K; ++j) {
      vf im[CB];
      for (int c = 0; c < CB; ++c) {
        im[c] = load(img + c * img_cs + j);
        keep_in_register(im[c]);
      }
      for (int q = 0; q < NQ; ++q) {
        vf p = gq[q][0] * im[0];
        for (int c = 1; c < CB; ++c) p += gq[q][c] * im[c];
        dv[q] += p * load(ht + j * ks + q * kVW);
        float* d = dht + j * ks + q * kVW;
        store(d, load(d) + p * vq[q]);
      }
    }
    for (int q = 0; q < NQ; ++q) {
      float* d = dvt + q * (kVW - ks);
      store(d, load(d) + dv[q]);
    }
  }
};

void dvh_band(const Geom& g, const float* image, const float* gout, const float* ver,
              const float* hor, float* dver, float* dhor, int64_t b, int64_t y0, int nr,
              Scratch& scratch) {
  const int K = static_cast<int>(g.K);
  const int64_t koff = g.map_offset(b, y0, 0);
  const int nt = K + nr - 1;
  const int64_t tile = K * kR * kVW;
  const int64_t chunk_tiles = kChunk / kVW * tile;
  float* s = scratch.get(4 * chunk_tiles + kR * kCB * kVW + kCB * nt * (kVW + K - 1) + tile / kR);
  float* hts = s;
  float* vts = hts + chunk_tiles;
  float* dvts = vts + chunk_tiles;
  float* dhts = dvts + chunk_tiles;
  float* gt = dhts + chunk_tiles;
  float* tmp = gt + kR * kCB * kVW;
  float* buf = tmp + kCB * nt * (kVW + K - 1);  // K * kVW floats for store_tiles
  for (int64_t xc = 0; xc < g.W; xc += kChunk) {
    const int64_t nc = std::min<int64_t>(kChunk, g.W - xc);
    const int64_t mo = koff + xc * g.pstride();
    load_tiles(hor + mo, g.kstride(), g.rstride(), g.pstride(), K, nr, nc, hts);
    load_tiles(ver + mo, g.kstride(), g.rstride(), g.pstride(), K, nr, nc, vts);
    std::memset(dvts, 0, sizeof(float) * 2 * chunk_tiles);
    for (int64_t x0 = xc; x0 < xc + nc; x0 += kVW) {
      const int n = static_cast<int>(std::min<int64_t>(kVW, g.W - x0));
      const int64_t toff = (x0 - xc) / kVW * tile;
      for (int64_t c0 = 0; c0 < g.C; c0 += kCB) {
        const int cb = static_cast<int>(std::min<int64_t>(kCB, g.C - c0));
        std::memset(gt, 0, sizeof(float) * kR * kCB * kVW);
        for (int q = 0; q < nr; ++q)
          for (int c = 0; c < cb; ++c)
            std::memcpy(gt + (q * kCB + c) * kVW,
                        gout + ((b * g.C + c0 + c) * g.H + y0 + q) * g.W + x0, sizeof(float) * n);
        const ImageBlock ib = image_block(
            g, image + ((b * g.C + c0) * g.img_h() + y0) * g.img_w(), cb, nt, x0, tmp);
        for (int t = 0; t < nt; ++t) {
          const int qlo = std::max(0, t - K + 1), qhi = std::min(nr, t + 1);
          const int64_t at = toff + ((t - qlo) * kR + qlo) * kVW;
          dispatch<DvhTap>(cb, qhi - qlo, ib.ptr + t * ib.rs, ib.cs, gt + qlo * kCB * kVW,
                           hts + toff + qlo * kVW, vts + at, K, dvts + at,
                           dhts + toff + qlo * kVW);
        }
      }
    }
    store_tiles(dvts, K, nr, nc, dver + mo, g.kstride(), g.rstride(), g.pstride(), buf);
    store_tiles(dhts, K, nr, nc, dhor + mo, g.kstride(), g.rstride(), g.pstride(), buf);
  }
}

// ------------------------------------------------------------------------------------------------
// d_image.
//
// A work unit owns a band of output rows [Y0, Y1) of d_image for one b and walks the source rows y
// that reach it. Row y contributes to d_image row Y = y + i (tap i) the sum over j of
//   M[c][j](X - j) * V[i](X - j),   M[c][j](x) = g[c, y, x] * H[j, y, x],
// with terms out of range zero. For one column block X0 .. X0+kVW the windows M[c][j](X0 - j + .)
// are computed once into an L1 tile Mt[c][j][kVW] and then shared by blocks of up to kR taps i
// (kR output rows): per j, CB aligned tile loads + NQ unaligned V loads per CB * NQ FMAs. The
// rows of g, H and V are copied into zero-padded scratch rows, which takes care of the borders.
//   mt: &Mt[c0][0] ([c][j][kVW]);  vp: &Vpad[i0][X0 + P] (row stride vstride)
//   acc: &band[c0][y + i0 - Y0][X0] (channel stride acc_cs, row stride acc_rs)
template <int CB, int NQ>
struct DimgTap {
  static void run(const float* __restrict mt, const float* __restrict vp, ptrdiff_t vstride, int K,
                  float* __restrict acc, ptrdiff_t acc_cs, ptrdiff_t acc_rs) {
    vf a[NQ][CB];
    for (int q = 0; q < NQ; ++q)
      for (int c = 0; c < CB; ++c) a[q][c] = vf{};
    for (int j = 0; j < K; ++j) {
      vf m[CB];
      for (int c = 0; c < CB; ++c) {
        m[c] = load(mt + (c * K + j) * kVW);
        keep_in_register(m[c]);
      }
      for (int q = 0; q < NQ; ++q) {
        vf v = load(vp + q * vstride - j);
        keep_in_register(v);
        for (int c = 0; c < CB; ++c) a[q][c] += m[c] * v;
      }
    }
    for (int q = 0; q < NQ; ++q)
      for (int c = 0; c < CB; ++c) {
        float* p = acc + c * acc_cs + q * acc_rs;
        store(p, load(p) + a[q][c]);
      }
  }
};

void dimg_band(const Geom& g, const float* gout, const float* ver, const float* hor,
               float* dimage, int64_t b, int64_t Y0, int64_t Y1, Scratch& scratch) {
  const int K = static_cast<int>(g.K);
  const int64_t P = g.K - 1;
  const int64_t iw = g.img_w();
  const int64_t XW = round_up(iw, kVW);    // columns computed (whole blocks)
  const int64_t L = XW + P;                 // padded rows hold x in [-P, XW) at index x + P
  const int64_t stride = round_up(L, kVW) + 1;  // == 1 (mod kVW): see hpad below
  const int64_t rows = Y1 - Y0;
  const int64_t rows_cap = std::min<int64_t>(g.K, rows);
  // Scratch: [slack][hpad K][gpad C][vpad min(K, rows)][Mt C*K*kVW][band C*rows*XW]
  float* base = scratch.get(kVW + (g.K + g.C + rows_cap) * stride + kVW + g.C * g.K * kVW +
                            g.C * rows * XW);
  // Offset so that &hpad[0][P] is vector aligned. With stride == 1 (mod kVW) the windows
  // hpad[j][X0 - j + P] are then aligned for every j, so only g's loads are unaligned when
  // building Mt.
  float* hpad = base + (kVW - P % kVW) % kVW;
  float* gpad = hpad + g.K * stride;
  float* vpad = gpad + g.C * stride;
  float* mt = base + round_up(kVW + (g.K + g.C + rows_cap) * stride, kVW);
  float* band = mt + g.C * g.K * kVW;
  std::memset(band, 0, sizeof(float) * g.C * rows * XW);
  auto pad_row = [&](float* dst, const float* src) {
    std::memset(dst, 0, sizeof(float) * P);
    std::memcpy(dst + P, src, sizeof(float) * g.W);
    std::memset(dst + P + g.W, 0, sizeof(float) * (L - P - g.W));
  };
  // Padded rows of taps [k_lo, k_hi) of kernel map row y: plain copies in BKHW, a transpose of
  // the (W, K) row block in BHWK.
  auto pad_map_rows = [&](float* dst, const float* map, int64_t y, int64_t k_lo, int64_t k_hi) {
    if (!g.bhwk) {
      for (int64_t k = k_lo; k < k_hi; ++k)
        pad_row(dst + (k - k_lo) * stride, map + g.map_offset(b, y, 0) + k * g.kstride());
      return;
    }
    for (int64_t k = k_lo; k < k_hi; ++k) {
      float* d = dst + (k - k_lo) * stride;
      std::memset(d, 0, sizeof(float) * P);
      std::memset(d + P + g.W, 0, sizeof(float) * (L - P - g.W));
    }
    const float* src = map + g.map_offset(b, y, 0) + k_lo;
    for (int64_t x0 = 0; x0 < g.W; x0 += kVW)
      transpose_in(src + x0 * g.K, g.K, static_cast<int>(k_hi - k_lo),
                   static_cast<int>(std::min<int64_t>(kVW, g.W - x0)), dst + P + x0, stride);
  };
  const int64_t y_lo = std::max<int64_t>(0, Y0 - P), y_hi = std::min<int64_t>(g.H, Y1);
  for (int64_t y = y_lo; y < y_hi; ++y) {
    const int64_t i_lo = std::max<int64_t>(0, Y0 - y), i_hi = std::min<int64_t>(g.K, Y1 - y);
    pad_map_rows(hpad, hor, y, 0, g.K);
    for (int64_t c = 0; c < g.C; ++c)
      pad_row(gpad + c * stride, gout + ((b * g.C + c) * g.H + y) * g.W);
    pad_map_rows(vpad, ver, y, i_lo, i_hi);
    for (int64_t X0 = 0; X0 < XW; X0 += kVW) {
      for (int64_t c = 0; c < g.C; ++c)
        for (int j = 0; j < K; ++j)
          store(mt + (c * K + j) * kVW,
                load(gpad + c * stride + X0 - j + P) * load(hpad + j * stride + X0 - j + P));
      for (int64_t c0 = 0; c0 < g.C; c0 += kCB) {
        const int cb = static_cast<int>(std::min<int64_t>(kCB, g.C - c0));
        for (int64_t i0 = i_lo; i0 < i_hi; i0 += kR) {
          const int nq = static_cast<int>(std::min<int64_t>(kR, i_hi - i0));
          dispatch<DimgTap>(cb, nq, mt + c0 * K * kVW, vpad + (i0 - i_lo) * stride + X0 + P,
                            stride, K, band + (c0 * rows + y + i0 - Y0) * XW + X0, rows * XW, XW);
        }
      }
    }
  }
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t Y = Y0; Y < Y1; ++Y)
      std::memcpy(dimage + ((b * g.C + c) * g.img_h() + Y) * iw, band + (c * rows + Y - Y0) * XW,
                  sizeof(float) * iw);
}

// ------------------------------------------------------------------------------------------------
// Shape checks (the Python side validates too; these keep a bad direct call from reading out of
// bounds).

ffi::Error geom_from(const ffi::Buffer<ffi::F32>& image, const ffi::Buffer<ffi::F32>& ver,
                     const ffi::Buffer<ffi::F32>& hor, int64_t layout, Geom* g) {
  if (layout != 0 && layout != 1)
    return ffi::Error::InvalidArgument("sepconv_cpu: kernel_layout must be 0 (BKHW) or 1 (BHWK)");
  g->bhwk = layout == 1;
  auto di = image.dimensions(), dv = ver.dimensions(), dh = hor.dimensions();
  if (di.size() != 4 || dv.size() != 4 || dh.size() != 4)
    return ffi::Error::InvalidArgument("sepconv_cpu: all arguments must have rank 4");
  for (int d = 0; d < 4; ++d)
    if (dv[d] != dh[d])
      return ffi::Error::InvalidArgument("sepconv_cpu: vertical and horizontal shapes differ");
  g->B = dv[0];
  g->K = g->bhwk ? dv[3] : dv[1];
  g->H = g->bhwk ? dv[1] : dv[2];
  g->W = g->bhwk ? dv[2] : dv[3];
  g->C = di[1];
  if (g->K < 1 || g->H < 1 || g->W < 1 || g->C < 1 || di[0] != g->B ||
      di[2] != g->H + g->K - 1 || di[3] != g->W + g->K - 1)
    return ffi::Error::InvalidArgument(
        "sepconv_cpu: expected image (B, C, H+K-1, W+K-1) and kernel maps (B, K, H, W), or "
        "(B, H, W, K) with kernel_layout 1");
  return ffi::Error::Success();
}

bool same_dims(const ffi::Buffer<ffi::F32>& a, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  auto d = a.dimensions();
  return d.size() == 4 && d[0] == d0 && d[1] == d1 && d[2] == d2 && d[3] == d3;
}

bool same_map_dims(const ffi::Buffer<ffi::F32>& a, const Geom& g) {
  return g.bhwk ? same_dims(a, g.B, g.H, g.W, g.K) : same_dims(a, g.B, g.K, g.H, g.W);
}

// Rows per d_image work unit: large enough that the band's halo of K - 1 source rows is cheap,
// small enough that both threads get balanced work.
int64_t dimg_band_rows(const Geom& g) { return std::max<int64_t>(16, g.K); }

// ------------------------------------------------------------------------------------------------
// FFI entry points. `threads` caps the worker count (0: the whole XLA CPU thread pool).

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image,
                       ffi::Buffer<ffi::F32> ver, ffi::Buffer<ffi::F32> hor,
                       ffi::ResultBuffer<ffi::F32> out, int64_t threads, int64_t layout) {
  Geom g;
  if (auto e = geom_from(image, ver, hor, layout, &g); e.failure()) return e;
  if (!same_dims(*out, g.B, g.C, g.H, g.W))
    return ffi::Error::InvalidArgument("sepconv_cpu: output must be (B, C, H, W)");
  const float* img = image.typed_data();
  const float* v = ver.typed_data();
  const float* h = hor.typed_data();
  float* o = out->typed_data();
  advise_huge_pages(o, out->size_bytes());
  const int64_t bands = (g.H + kR - 1) / kR;
  return parallel_for(pool, g.B * bands, threads, [&](int64_t unit) {
    thread_local Scratch scratch;
    const int64_t b = unit / bands, y0 = (unit % bands) * kR;
    fwd_band(g, img, v, h, o, b, y0, static_cast<int>(std::min<int64_t>(kR, g.H - y0)), scratch);
  });
}

ffi::Error BackwardImageImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image,
                             ffi::Buffer<ffi::F32> ver, ffi::Buffer<ffi::F32> hor,
                             ffi::Buffer<ffi::F32> gout, ffi::ResultBuffer<ffi::F32> dimage,
                             int64_t threads, int64_t layout) {
  Geom g;
  if (auto e = geom_from(image, ver, hor, layout, &g); e.failure()) return e;
  if (!same_dims(gout, g.B, g.C, g.H, g.W) ||
      !same_dims(*dimage, g.B, g.C, g.img_h(), g.img_w()))
    return ffi::Error::InvalidArgument("sepconv_cpu: bad cotangent or d_image shape");
  const float* v = ver.typed_data();
  const float* h = hor.typed_data();
  const float* go = gout.typed_data();
  float* di = dimage->typed_data();
  advise_huge_pages(di, dimage->size_bytes());
  const int64_t band = dimg_band_rows(g);
  const int64_t bands = (g.img_h() + band - 1) / band;
  return parallel_for(pool, g.B * bands, threads, [&](int64_t unit) {
    thread_local Scratch scratch;
    const int64_t b = unit / bands, Y0 = (unit % bands) * band;
    dimg_band(g, go, v, h, di, b, Y0, std::min(g.img_h(), Y0 + band), scratch);
  });
}

ffi::Error BackwardKernelsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image,
                               ffi::Buffer<ffi::F32> ver, ffi::Buffer<ffi::F32> hor,
                               ffi::Buffer<ffi::F32> gout, ffi::ResultBuffer<ffi::F32> dver,
                               ffi::ResultBuffer<ffi::F32> dhor, int64_t threads,
                               int64_t layout) {
  Geom g;
  if (auto e = geom_from(image, ver, hor, layout, &g); e.failure()) return e;
  if (!same_dims(gout, g.B, g.C, g.H, g.W) || !same_map_dims(*dver, g) ||
      !same_map_dims(*dhor, g))
    return ffi::Error::InvalidArgument("sepconv_cpu: bad cotangent or kernel-gradient shape");
  const float* img = image.typed_data();
  const float* v = ver.typed_data();
  const float* h = hor.typed_data();
  const float* go = gout.typed_data();
  float* dv = dver->typed_data();
  float* dh = dhor->typed_data();
  advise_huge_pages(dv, dver->size_bytes());
  advise_huge_pages(dh, dhor->size_bytes());
  const int64_t bands = (g.H + kR - 1) / kR;
  return parallel_for(pool, g.B * bands, threads, [&](int64_t unit) {
    thread_local Scratch scratch;
    const int64_t b = unit / bands, y0 = (unit % bands) * kR;
    dvh_band(g, img, go, v, h, dv, dh, b, y0, static_cast<int>(std::min<int64_t>(kR, g.H - y0)),
             scratch);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepconvCpuForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // image
                                  .Arg<ffi::Buffer<ffi::F32>>()  // vertical
                                  .Arg<ffi::Buffer<ffi::F32>>()  // horizontal
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("kernel_layout"));  // 0 BKHW, 1 BHWK

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepconvCpuBackwardImage, BackwardImageImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // image (shape only)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // vertical
                                  .Arg<ffi::Buffer<ffi::F32>>()  // horizontal
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_image
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("kernel_layout"));  // 0 BKHW, 1 BHWK

XLA_FFI_DEFINE_HANDLER_SYMBOL(SepconvCpuBackwardKernels, BackwardKernelsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // image
                                  .Arg<ffi::Buffer<ffi::F32>>()  // vertical
                                  .Arg<ffi::Buffer<ffi::F32>>()  // horizontal
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_vertical
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_horizontal
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("kernel_layout"));  // 0 BKHW, 1 BHWK
