//! The memory allocator's settings for skogd (and for the benchmarks that stand in for it).
//!
//! glibc raises its mmap threshold each time a large block is freed, up to 32 MiB. After the
//! first burst of learned routes, the tables of the next one (hash tables of several MiB) then
//! come from the heap instead of their own mappings, where they fragment it and stay resident
//! after they are freed: skogd held 60-100 MiB for a table that needs about 45. A fixed
//! threshold keeps every large table in its own mapping, returned to the kernel when freed.
//! This is the crate's only unsafe code: one `mallopt` call.
#![allow(unsafe_code)]

/// Blocks of this size or more get their own mapping (glibc's initial threshold, made fixed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: nix::libc::c_int = 128 * 1024;

/// Applies the settings; call once, first thing in `main`. Elsewhere than on glibc, nothing.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time, and
    // setting M_MMAP_THRESHOLD (to a value below the 32 MiB maximum) always succeeds.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
