//! How the process asks the allocator and the kernel for memory: the two settings the binary
//! makes before it starts a thread.

/// mimalloc's `purge_delay` option (its index in mimalloc's option enum, v2 and v3 alike; a
/// unit test checks it against the option's documented default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns transparent huge pages off for this process (and the processes it starts).
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`) and gives
/// freed memory back in small pieces; touching such memory again makes the kernel zero a whole
/// 2 MiB page. In a scale-1 `run --all` that zeroing was 23% of the CPU samples (`perf record`)
/// and the system time 4.3-5.0 s; without huge pages the system time is 1.4-1.7 s and the run
/// 9.0-9.3 s -> 7.1-7.2 s (measured with `MIMALLOC_ALLOW_THP=0`, the same setting made by
/// mimalloc's own start-up). A kernel without the setting (not Linux, or refused) keeps its
/// default: the engine is only slower.
pub fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!("transparent huge pages stay on: {err}");
    }
}

/// How long (ms) freed memory stays with the allocator before it goes back to the OS in a batch
/// command (`run`, `build`, ...), where mimalloc's default is 1000. At scale 10 (`run --all`,
/// 2026-12-04, one run each): 1000 ms -> 64.1 s and a peak of 2.51 GiB; 200 ms -> 63.0 s,
/// 2.09 GiB; 100 ms -> 61.5 s, 1.89 GiB; 50 ms -> 62.1 s, 1.86 GiB; 10 ms -> 79.3 s, 1.58 GiB;
/// 0 -> 88.3 s, 1.50 GiB (the system time doubles: pages given back and faulted in again).
/// At scale 1, 1000 vs 100 ms alternated twice: 6.28 / 5.92 s vs 6.75 / 5.59 s, peak
/// 883-937 vs 761-765 MiB. So 100 ms: the memory a stage freed goes back before the next stage
/// grows, and the pages a stage reuses within 0.1 s stay.
const BATCH_PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets the batch commands' purge delay ([`BATCH_PURGE_DELAY_MS`]). Called once, before any
/// thread starts.
pub fn return_freed_memory_soon() {
    set_purge_delay(BATCH_PURGE_DELAY_MS);
}

/// Makes the allocator (mimalloc, the binary's) give freed memory back to the OS at once
/// instead of after a delay (1 s in mimalloc v3) that only passes when the freeing thread
/// allocates again: in a long-running gateway many threads (tokio workers, the tables' lanes)
/// go idle holding what they freed. Measured on the sample lake with 16 clients on
/// `?wait=visible` for 60-90 s: the resident memory grew from 0.4 to 1.6 GiB and stayed there
/// when idle; with this, it stays near 0.3-0.5 GiB and falls to 0.2 GiB when idle, at the same
/// rate of records. Called once, before any thread starts.
pub fn return_freed_memory_promptly() {
    set_purge_delay(0);
}

/// mimalloc's `purge_delay`, in ms. Called once, before any thread starts.
#[allow(unsafe_code)] // the one FFI call of the crate: mimalloc has no safe option setter
fn set_purge_delay(ms: std::ffi::c_long) {
    // SAFETY: sets one integer option of the allocator; called before other threads exist.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_allocator_option_the_gateway_sets_is_the_purge_delay() {
        // Its default is 1000 (ms) in mimalloc v3, which libmimalloc-sys builds (10 in v2);
        // its neighbours' are 0 or 1.
        // SAFETY: reads one integer option of the allocator.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert!(
            value == 1000 || value == 10,
            "mimalloc's option {} is not purge_delay: {value}",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}
