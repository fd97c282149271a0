// Transparent huge pages for large output buffers of the FFI kernels.
//
// XLA allocates every output afresh, and a large allocation comes straight from the OS: the first
// write to each 4 KiB page faults. d_vertical and d_horizontal of the separable convolution
// (2 * K * H * W floats, 125 MB at 640x480, K = 51) took ~30k faults per call, as long as the
// arithmetic itself; the U-Net's convolutions write ~400 MB a frame at 640x480. Asking for
// transparent huge pages on the (2 MiB-aligned part of the) output, before it is touched, makes
// that a few dozen faults. Only a hint: where it is refused or unsupported nothing changes.

#ifndef SEPCONV_JAX_HUGE_PAGES_H_
#define SEPCONV_JAX_HUGE_PAGES_H_

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

#endif  // SEPCONV_JAX_HUGE_PAGES_H_
