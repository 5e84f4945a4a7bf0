//! Keep freed memory in the process instead of handing it back to the kernel.
//!
//! Why: tract allocates every node's output afresh on every run. glibc serves blocks above its
//! mmap threshold (at most 32 MiB) with `mmap` and returns them with `munmap`, so each run of
//! the MobileSAM encoder (activations up to 64 MiB) page-faulted and zeroed its big tensors
//! again: a 3x3 depthwise layer spent most of its 60 ms in `clear_page` and fault handling
//! (`perf`), not in arithmetic. With mmap off and trimming off, the heap grows to the largest
//! run's peak once and is reused from then on: bounded memory in the steady state, no faults.
//!
//! Only glibc (the boards' `-gnu` targets and x86-64 Linux) has these knobs; elsewhere this is a
//! no-op. `SONOMASK_STOCK_HEAP=1` leaves glibc's defaults (for measuring the difference).

/// Environment variable that keeps glibc's default allocator settings.
pub const STOCK_HEAP_ENV: &str = "SONOMASK_STOCK_HEAP";

/// Applies the settings once per process; returns whether they are in force.
pub fn keep_freed_memory() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        if std::env::var(STOCK_HEAP_ENV).is_ok_and(|v| v != "0" && !v.is_empty()) {
            log::debug!("malloc: glibc defaults ({STOCK_HEAP_ENV})");
            return false;
        }
        let ok = imp::apply();
        if ok {
            log::debug!("malloc: mmap off, trim off, one arena (freed tensors are reused)");
        }
        ok
    })
}

/// This process's resident set in KiB (Linux `/proc/self/status` VmRSS); None elsewhere.
pub fn resident_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::os::raw::c_int;

    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // <malloc.h>
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_MAX: c_int = -4;
    const M_ARENA_MAX: c_int = -8;

    pub fn apply() -> bool {
        // SAFETY: mallopt only changes allocator tuning; glibc makes it safe to call at any time.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn apply() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_are_taken_on_glibc() {
        let ok = super::keep_freed_memory();
        let asked_stock =
            std::env::var(super::STOCK_HEAP_ENV).is_ok_and(|v| v != "0" && !v.is_empty());
        assert_eq!(
            ok,
            cfg!(all(target_os = "linux", target_env = "gnu")) && !asked_stock
        );
        // A big block after the change is still usable memory.
        let v = vec![1u8; 80 << 20];
        assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 80 << 20);
    }

    #[test]
    fn resident_memory_counts_what_is_held() {
        // black_box: the writes must happen (an optimiser may drop stores nobody reads).
        let held = std::hint::black_box(vec![7u8; 64 << 20]);
        let kb = super::resident_kb();
        if cfg!(target_os = "linux") {
            let kb = kb.expect("VmRSS on Linux");
            assert!(
                kb >= 64 << 10,
                "{kb} KiB resident while 64 MiB are held and written"
            );
        } else {
            assert_eq!(kb, None);
        }
        assert_eq!(held[held.len() - 1], 7);
    }
}
