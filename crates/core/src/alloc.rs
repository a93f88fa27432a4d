//! Process-wide allocator tuning for the numeric workloads.
//!
//! Training and rendering allocate and free many tensors of a few MiB every step. glibc's
//! malloc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with
//! fresh `mmap`s and returns freed heap tops to the kernel, so every step pays page faults
//! and page clearing for memory it just gave back: measured on the 10,000-residue renderer
//! benchmark (box 128, batch 64, 2 threads) as 60 % system time, 40–50 → 81–106 images/s once the
//! freed memory is kept (BENCHMARKS.md §5). [`retain_freed_memory`] keeps it.

/// Makes glibc keep freed memory in the process for reuse: no `mmap` for blocks below
/// 1 GiB, no trimming of the heap top below 4 GiB of free memory. Call once at the start of
/// `main`, before threads start; a no-op on other platforms and C libraries. Memory stays
/// bounded by the peak working set, which these workloads reach every step anyway.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before other threads
        // allocate (documented contract of this function), and the values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}
