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
/// command (`run`, `build`, ...), where mimalloc's default is 1000. Memory freed and touched
/// again within the delay is not faulted in again: the system time of a scale-1 `run --all` was
/// a third of its CPU time at 100 ms. With [`THREAD_KEEP_ALIVE`], on the nine Olist
/// tables (`run --all --simulate`, 2026-12-04, wall s / peak):
///
/// | purge delay | scale 1 | scale 10 |
/// | ---: | --- | --- |
/// | 100 ms | 4.6-4.9 s / 0.64-0.67 GiB (keep-alive 100 ms) | 58 s / 1.0 GiB (keep-alive 100 ms) |
/// | 1000 ms | 3.81-3.82 s / 0.69-0.70 GiB | 44.9 s / 1.35 GiB |
/// | 2000 ms | 3.68-3.75 s / 0.69-0.73 GiB | 44.4-44.8 s / 1.36-1.40 GiB |
/// | 3000 ms | 3.58-3.70 s / 0.72 GiB | 41.5 s / 1.67 GiB |
///
/// Before the short keep-alive, 100 ms gave 4.4-4.9 s / 0.72 GiB and 58-62 s / 2.0-2.2 GiB.
/// `MIMALLOC_PURGE_DELAY` in the environment (mimalloc's own variable) overrides it.
const BATCH_PURGE_DELAY_MS: std::ffi::c_long = 2000;

/// How long an idle thread of the async runtime's blocking pool lives, in every command (tokio's
/// default: 10 s). Each such thread keeps what it freed in its own allocator heap until it
/// allocates again (memory that other threads free into its pages is collected only then), and
/// the blocking pool runs file reads and writes, log reads and lease waits on whichever thread is
/// idle. In a batch run, at scale 10, threads left idle after a stage held about a gigabyte (the
/// resident memory stayed at 1.1-1.4 GiB between tables, the peak 2.0-2.2 GiB; with 100 ms,
/// 0.25-0.9 GiB between tables and a peak of 1.0 GiB at the same speed). In the gateway, a
/// refresh's reads of many small files grow the pool in bursts, and under a steady load a
/// thread is rarely idle for 10 s: 16 clients on `?wait=visible` over the scale-1 lake left 80 to
/// 150 threads and a resident memory that grew for about 40 s (`bench/gateway_memory.py`,
/// 2026-12-07: 242 -> 413 and 277 -> 443 MiB over 40 s) before it levelled; with this, 21 to 54
/// threads and 163-240 MiB throughout, at the same rate of records (7 200-9 000 against
/// 7 840-9 120 in 40 s). A thread that ends hands its memory back; starting one costs tens of
/// microseconds (the durable acknowledgements of 16 clients: 17 000-21 100 records/s against
/// 18 700-24 800 before, in alternated runs of `bench/gateway_bench.py`, within their spread).
pub const THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(10);

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

/// Stops the allocator giving freed memory back: called once a command's work is done, before
/// what it holds is dropped and the process ends (which returns every page at once). At exit,
/// and as each thread of the runtime ends, mimalloc otherwise purges what is free whatever the
/// delay (`madvise` range by range: 114 calls, 10-30 ms of the 1% delivery's last, one-core
/// moments). On the 1% delivery at scale 1: CPU time 1633-1693 ms against 1681-1798 ms, wall
/// 0.97-1.03 s against 0.99-1.08 s (`perf stat`, three alternations, 2026-12-06 00:20 UTC).
pub fn keep_freed_memory_until_exit() {
    set_purge_delay(-1);
}

/// mimalloc's `purge_delay`, in ms, unless the environment sets it (`MIMALLOC_PURGE_DELAY`,
/// mimalloc's own variable: a user's explicit choice wins). Called before any thread starts,
/// and once a command's work is done ([`keep_freed_memory_until_exit`]).
fn set_purge_delay(ms: std::ffi::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    mi_purge_delay(ms);
}

/// Sets mimalloc's `purge_delay` option (-1: never purge).
#[allow(unsafe_code)] // the one FFI call of the crate: mimalloc has no safe option setter
fn mi_purge_delay(ms: std::ffi::c_long) {
    // SAFETY: sets one integer option of the allocator: an aligned word store (not atomic),
    // which a purge on another thread reads as the old or the new delay, either of them valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
}

#[cfg(test)]
mod tests {
    /// One test, not two: the option is the process's, and `cargo test` runs a binary's tests
    /// on threads of one process.
    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_is_the_purge_delay_and_after_the_work_it_never_purges() {
        // SAFETY: reads one integer option of the allocator.
        let read = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // Its default is 1000 (ms) in mimalloc v3, which libmimalloc-sys builds (10 in v2);
        // its neighbours' are 0 or 1.
        let value = read();
        assert!(
            value == 1000 || value == 10,
            "mimalloc's option {} is not purge_delay: {value}",
            super::MI_OPTION_PURGE_DELAY
        );
        super::keep_freed_memory_until_exit();
        assert_eq!(read(), -1, "a negative purge delay is mimalloc's 'never'");
    }
}
