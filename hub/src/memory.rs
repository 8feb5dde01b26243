//! Handing memory back to the operating system. After `rc.purge_everything()` the records'
//! buffers are freed, but both allocators keep freed pages for reuse: mimalloc (the
//! binary's Rust allocator) in its segments, glibc malloc (libzmq's message buffers) in
//! its arenas. Pushing and pulling 200 x 5 MB arrays then purging left the controller at
//! 1.15 GB; a user who purged expects the memory back. Both are asked to release what is
//! free; this costs a few milliseconds, once per purge that removed something.
#![allow(unsafe_code)]

/// Releases freed memory to the OS, from both allocators in the process.
pub fn release() {
    // SAFETY: mi_collect only walks mimalloc's own heaps and returns freed pages; it is
    // callable from any thread at any time (it also works when mimalloc is not the global
    // allocator, e.g. in tests, where its heaps are empty).
    unsafe { libmimalloc_sys::mi_collect(true) };
    // SAFETY: malloc_trim is thread-safe in glibc and only releases free memory.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}
