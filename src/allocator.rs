//! Process-wide tuning of the C allocator that Rust's `Vec`s come from on Linux/glibc.
//!
//! The float engine and the simulator allocate many short-lived buffers of a few hundred KB to
//! a few MB per layer and image (im2col columns, blobs). glibc serves blocks above its mmap
//! threshold with a fresh `mmap` and returns them with `munmap`, and gives freed memory at the
//! top of a heap back to the kernel beyond its trim threshold: every such buffer then costs page
//! faults on first touch (the kernel zeroing each page). Measured on ResNet-56 (`quantize
//! --search none`, 500 calibration + 1,017 evaluation images, 2 cores): 26.7 s of the 43 s wall
//! time was system time in page faults; with the thresholds below the float pass went from 16.2
//! to 3.8 s. Keeping freed memory for reuse does not raise the peak: the peak is what was live at
//! once.

/// Largest mmap threshold glibc accepts on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Freed memory kept at the top of a heap before glibc returns it to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 512 << 20;

/// Apply the thresholds (once; later calls do nothing). Other platforms' allocators keep their
/// defaults.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes glibc's allocation parameters; it is called before
            // the command allocates its large buffers, and glibc serialises it internally.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        });
    }
}
