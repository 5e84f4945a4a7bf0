//! Keep freed memory in the process instead of handing it back to the kernel, and keep tensors
//! from fragmenting it.
//!
//! Why: tract allocates every node's output afresh on every run. glibc serves blocks above its
//! mmap threshold (at most 32 MiB) with `mmap` and returns them with `munmap`, so each run of
//! the MobileSAM encoder (activations up to 64 MiB) page-faulted and zeroed its big tensors
//! again: a 3x3 depthwise layer spent most of its time in `clear_page` and fault handling
//! (`perf`; docs/BENCHMARKS.md, appendix, second step), not in arithmetic. With mmap off and trimming off, the heap grows to the largest
//! run's peak once and is reused from then on.
//!
//! That alone is not bounded: a small block that outlives a run (a reconnect's buffers, a log
//! line) can land in the hole a freed tensor left, and the next tensor of that size then extends
//! the heap (the soak's one +32 MiB step, docs/RELIABILITY.md). So blocks of [`LARGE_BLOCK`] and
//! more come from [`KeptHeap`]'s pool instead: mapped per size class (eight per doubling), kept on
//! a free list when freed. No small block can sit in a pooled one. A request takes the smallest
//! free block of its class or larger (best fit by class) and maps a new block only when every
//! block at least its size is live, so tensors of different sizes share blocks as they did in
//! glibc's heap, and a workload that repeats (a frame's runs) stops mapping once it has seen its
//! peak: `tests/heap_pool.rs` and the soak (docs/RELIABILITY.md) show it flat.
//!
//! Only glibc (the boards' `-gnu` targets and x86-64 Linux) has these knobs; elsewhere this is a
//! no-op. `SONOMASK_STOCK_HEAP=1` leaves glibc's defaults and no pool (for measuring the
//! difference); `SONOMASK_LARGE_POOL=0` keeps the glibc settings without the pool.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// Environment variable that keeps glibc's default allocator settings.
pub const STOCK_HEAP_ENV: &str = "SONOMASK_STOCK_HEAP";

/// Environment variable that, set to `0`, keeps large blocks in glibc's heap (no pool).
pub const LARGE_POOL_ENV: &str = "SONOMASK_LARGE_POOL";

/// Applies the settings once per process; returns whether they are in force. Call it first
/// thing in `main`: the pool of a [`KeptHeap`] global allocator only serves processes that
/// called this before their first large allocation.
pub fn keep_freed_memory() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| v != "0" && !v.is_empty());
        if set(STOCK_HEAP_ENV) {
            POOL_STATE.store(OFF, Ordering::Relaxed);
            log::debug!("malloc: glibc defaults ({STOCK_HEAP_ENV})");
            return false;
        }
        let ok = imp::apply();
        let pool = ok && std::env::var(LARGE_POOL_ENV).map_or(true, |v| v != "0");
        // A large block already allocated by System keeps the pool off (see `pooled`).
        let _ = POOL_STATE.compare_exchange(
            UNDECIDED,
            if pool { ON } else { OFF },
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if ok {
            log::debug!(
                "malloc: mmap off, trim off, one arena (freed tensors are reused); large-block pool {}",
                if POOL_STATE.load(Ordering::Relaxed) == ON { "on" } else { "off" }
            );
        }
        ok
    })
}

/// Blocks of at least this many bytes (tensors, images) come from the pool.
pub const LARGE_BLOCK: usize = 1 << 20;
/// Pooled alignment limit: blocks are page-aligned mappings.
const MAX_ALIGN: usize = 4096;
/// Classes per doubling: 2^LOG_SUB (a block is at most 1/8 larger than its request).
const LOG_SUB: usize = 3;
const SUB: usize = 1 << LOG_SUB;
/// Classes from 1 MiB over 16 doublings (to 64 GiB); more goes to System.
const CLASSES: usize = 16 * SUB;
/// Each mapping starts with one page holding its class (and, while free, the list link); the
/// caller's block follows it, still page-aligned.
const HEADER: usize = 4096;

/// The size class of a large request (its block, [`class_size`], is at most 1/8 over `size`).
fn class_of(size: usize) -> Option<usize> {
    if size < LARGE_BLOCK {
        return None;
    }
    // 2^k <= size - 1 < 2^(k+1); k >= 19 since size >= 2^20.
    let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let step = 1usize << (k - LOG_SUB);
    let rounded = size.checked_add(step - 1)? & !(step - 1);
    // rounded / step is SUB+1..=2*SUB: SUB classes per doubling.
    let index = (k - 19) * SUB + (rounded / step - SUB - 1);
    (index < CLASSES).then_some(index)
}

/// The block size of class `index` (the inverse of [`class_of`]).
const fn class_size(index: usize) -> usize {
    (SUB + 1 + index % SUB) << (index / SUB + 19 - LOG_SUB)
}

/// The length of a mapping of class `index`: its header and its block.
const fn block_bytes(index: usize) -> usize {
    HEADER + class_size(index)
}

const UNDECIDED: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static POOL_STATE: AtomicU8 = AtomicU8::new(UNDECIDED);
static POOL: LargePool = LargePool::new();

/// Whether this layout is served by the global pool. The answer never changes for a layout once
/// a large block exists (the state is settled by then), so `dealloc` routes as `alloc` did.
fn pooled(layout: Layout) -> Option<usize> {
    if layout.size() < LARGE_BLOCK || layout.align() > MAX_ALIGN || !imp::CAN_MAP {
        return None;
    }
    let state =
        match POOL_STATE.compare_exchange(UNDECIDED, OFF, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => OFF,
            Err(s) => s,
        };
    if state == ON {
        class_of(layout.size())
    } else {
        None
    }
}

/// The process's global allocator: glibc for small blocks, the size-class pool for large ones
/// (when [`keep_freed_memory`] turned it on). Install it in a binary with
/// `#[global_allocator] static HEAP: sonomask::heap::KeptHeap = sonomask::heap::KeptHeap;`.
pub struct KeptHeap;

// SAFETY: small blocks are System's; large ones are whole mappings of at least the requested
// size, page-aligned (>= every pooled align), owned by one caller from alloc to dealloc.
unsafe impl GlobalAlloc for KeptHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match pooled(layout) {
            Some(class) => POOL.take(class, layout.size(), false),
            None => unsafe { System.alloc(layout) },
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match pooled(layout) {
            Some(class) => POOL.take(class, layout.size(), true),
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match pooled(layout) {
            Some(_) => unsafe { POOL.give(ptr) },
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (all arms): the caller guarantees a valid new layout of the same alignment.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (pooled(layout), pooled(new)) {
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            // Still fits the block it has (its own class or a borrowed larger one).
            (Some(_), Some(_)) if new_size <= unsafe { LargePool::capacity(ptr) } => ptr,
            (old, _) => {
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    unsafe { std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size)) };
                    match old {
                        Some(_) => unsafe { POOL.give(ptr) },
                        None => unsafe { System.dealloc(ptr, layout) },
                    }
                }
                p
            }
        }
    }
}

/// What the large-block pool holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Mapped by the pool, in use or free.
    pub mapped: usize,
    /// On the free lists, waiting for a request of their class.
    pub free: usize,
}

/// The global pool's figures (all zero when it is off).
pub fn pool_stats() -> PoolStats {
    POOL.stats()
}

/// Unmaps the global pool's free blocks: after loading models, whose one-off buffers would
/// otherwise stay mapped in classes the steady state never asks for. Returns the bytes released.
pub fn release_unused() -> usize {
    POOL.release_unused()
}

/// Free lists of mapped blocks per size class. The list links live in the free mappings' header
/// pages, so the pool itself never allocates.
struct LargePool {
    lists: Mutex<Lists>,
}

struct Lists {
    head: [usize; CLASSES],
    stats: PoolStats,
}

impl LargePool {
    const fn new() -> Self {
        LargePool {
            lists: Mutex::new(Lists {
                head: [0; CLASSES],
                stats: PoolStats { mapped: 0, free: 0 },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        // A panic never happens under this lock; recover the data regardless.
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block for `len` bytes of class `index`: the smallest free one of that class or larger
    /// (its first `len` bytes zeroed if asked), or a fresh mapping (zero already).
    fn take(&self, index: usize, len: usize, zeroed: bool) -> *mut u8 {
        {
            let mut l = self.lock();
            for i in index..CLASSES {
                let base = l.head[i];
                if base == 0 {
                    continue;
                }
                // SAFETY: a free mapping's header holds its class, then the next free mapping.
                l.head[i] = unsafe { *(base as *const usize).add(1) };
                l.stats.free -= block_bytes(i);
                drop(l);
                let p = (base + HEADER) as *mut u8;
                if zeroed {
                    // SAFETY: the block holds at least `len` bytes, now owned by this caller.
                    unsafe { std::ptr::write_bytes(p, 0, len) };
                }
                return p;
            }
        }
        let base = imp::map(block_bytes(index));
        if base.is_null() {
            return base;
        }
        // SAFETY: a fresh mapping of at least a header's length.
        unsafe { *(base as *mut usize) = index };
        self.lock().stats.mapped += block_bytes(index);
        // SAFETY: within the mapping.
        unsafe { base.add(HEADER) }
    }

    /// How many bytes the pooled block at `ptr` holds.
    ///
    /// # Safety
    /// `ptr` came from `take` and is live.
    unsafe fn capacity(ptr: *mut u8) -> usize {
        // SAFETY: the header page precedes every pooled block.
        class_size(unsafe { *(ptr.sub(HEADER) as *const usize) })
    }

    /// # Safety
    /// `ptr` came from `take` and is not used after.
    unsafe fn give(&self, ptr: *mut u8) {
        // SAFETY: the header page precedes the block; the block is ours again.
        let base = unsafe { ptr.sub(HEADER) } as *mut usize;
        let index = unsafe { *base };
        let mut l = self.lock();
        unsafe { *base.add(1) = l.head[index] };
        l.head[index] = base as usize;
        l.stats.free += block_bytes(index);
    }

    fn release_unused(&self) -> usize {
        let mut l = self.lock();
        let mut released = 0;
        for index in 0..CLASSES {
            let mut base = std::mem::take(&mut l.head[index]);
            while base != 0 {
                // SAFETY: a free mapping of this class (see `give`); unmapped once, then forgotten.
                let next = unsafe { *(base as *const usize).add(1) };
                imp::unmap(base as *mut u8, block_bytes(index));
                released += block_bytes(index);
                base = next;
            }
        }
        l.stats.free -= released;
        l.stats.mapped -= released;
        released
    }

    fn stats(&self) -> PoolStats {
        self.lock().stats
    }
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
    use std::os::raw::{c_int, c_long, c_void};

    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
        fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: c_long,
        ) -> *mut c_void;
        fn munmap(addr: *mut c_void, len: usize) -> c_int;
    }
    // <malloc.h>
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_MAX: c_int = -4;
    const M_ARENA_MAX: c_int = -8;
    // <sys/mman.h>, the same on x86-64, aarch64 and arm Linux.
    const PROT_READ_WRITE: c_int = 0x1 | 0x2;
    const MAP_PRIVATE_ANONYMOUS: c_int = 0x02 | 0x20;

    pub const CAN_MAP: bool = true;

    pub fn apply() -> bool {
        // SAFETY: mallopt only changes allocator tuning; glibc makes it safe to call at any time.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }

    /// A fresh zeroed private mapping, or null.
    pub fn map(len: usize) -> *mut u8 {
        // SAFETY: an anonymous mapping at an address of the kernel's choosing touches nothing.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ_WRITE,
                MAP_PRIVATE_ANONYMOUS,
                -1,
                0,
            )
        };
        if p as isize == -1 {
            std::ptr::null_mut()
        } else {
            p as *mut u8
        }
    }

    pub fn unmap(p: *mut u8, len: usize) {
        // SAFETY: `p` is a whole mapping of `len` bytes from `map` that nobody uses any more.
        unsafe { munmap(p as *mut c_void, len) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub const CAN_MAP: bool = false;

    pub fn apply() -> bool {
        false
    }

    pub fn map(_: usize) -> *mut u8 {
        std::ptr::null_mut()
    }

    pub fn unmap(_: *mut u8, _: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_each_size_with_at_most_an_eighth_more() {
        assert_eq!(class_of(LARGE_BLOCK - 1), None);
        assert_eq!(class_of(LARGE_BLOCK), Some(SUB - 1));
        assert_eq!(class_size(SUB - 1), LARGE_BLOCK);
        let mut last = (0, 0);
        let mut size = LARGE_BLOCK;
        while size < 1 << 34 {
            let index = class_of(size).unwrap();
            let block = class_size(index);
            assert!(
                block >= size && block - size <= size / SUB,
                "{size} -> {block}"
            );
            assert!(
                index == 0 || class_size(index - 1) < size,
                "{size}: the smallest class that holds it"
            );
            assert!(
                index >= last.0 && block >= last.1,
                "classes grow with the size"
            );
            assert_eq!(block % 4096, 0, "whole pages");
            last = (index, block);
            size += size / 7 + 1;
        }
        assert_eq!(class_of(usize::MAX), None);
        assert_eq!(
            class_of(class_size(CLASSES - 1) + 1),
            None,
            "past the last class: System"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class_or_a_smaller_one() {
        let pool = LargePool::new();
        let c3 = class_of(3 << 20).unwrap();
        let a = pool.take(c3, 3 << 20, false);
        assert!(!a.is_null());
        assert_eq!(a as usize % MAX_ALIGN, 0);
        // SAFETY: the block is 3 MiB and ours until `give`.
        unsafe { std::ptr::write_bytes(a, 0xAB, 3 << 20) };
        unsafe { pool.give(a) };
        let one = block_bytes(c3);
        assert_eq!(
            pool.stats(),
            PoolStats {
                mapped: one,
                free: one
            }
        );
        // 2.9 MiB is the same class: the same block, nothing new mapped, zeroed when asked.
        assert_eq!(class_of((29 << 20) / 10).unwrap(), c3);
        let b = pool.take(c3, (29 << 20) / 10, true);
        assert_eq!(b, a);
        let bytes = unsafe { std::slice::from_raw_parts(b, (29 << 20) / 10) };
        assert!(bytes.iter().all(|&x| x == 0));
        assert_eq!(
            pool.stats(),
            PoolStats {
                mapped: one,
                free: 0
            }
        );
        unsafe { pool.give(b) };
        // 2 MiB (two classes down) borrows the free 3 MiB block; it goes back to its own class.
        let c2 = class_of(2 << 20).unwrap();
        assert!(c2 < c3);
        let c = pool.take(c2, 2 << 20, false);
        assert_eq!(c, a);
        assert_eq!(unsafe { LargePool::capacity(c) }, 3 << 20);
        unsafe { pool.give(c) };
        assert_eq!(pool.take(c3, 3 << 20, false), a, "back on the 3 MiB list");
        // Nothing free for 5 MiB: a new mapping.
        let c5 = class_of(5 << 20).unwrap();
        let d = pool.take(c5, 5 << 20, false);
        assert!(!d.is_null() && d != a);
        unsafe {
            pool.give(a);
            pool.give(d);
        }
        let both = one + block_bytes(c5);
        assert_eq!(
            pool.stats(),
            PoolStats {
                mapped: both,
                free: both
            }
        );
        // 1 MiB with the 3 and 5 MiB blocks free: the smaller of the two (best fit by class).
        let c1 = class_of(1 << 20).unwrap();
        let e = pool.take(c1, 1 << 20, false);
        assert_eq!(e, a);
        unsafe { pool.give(e) };
        assert_eq!(pool.release_unused(), both);
        assert_eq!(pool.stats(), PoolStats::default());
        assert_eq!(pool.release_unused(), 0);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_repeated_workload_stops_mapping_after_its_first_runs() {
        // One "run" of takes and frees over mixed sizes (like a model's forward pass), fixed once,
        // then repeated: the pool maps during the first runs and never again.
        let pool = LargePool::new();
        let mut rng = 12345u32;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng as usize
        };
        // (true, size): take a block of `size`; (false, k): give back the k-th live one.
        let mut script = Vec::new();
        let mut live = 0usize;
        for _ in 0..300 {
            if live > 0 && (live >= 6 || next() % 3 == 0) {
                script.push((false, next() % live));
                live -= 1;
            } else {
                script.push((true, (1 << 20) + next() % (40 << 20)));
                live += 1;
            }
        }
        let mut mapped = Vec::new();
        for _ in 0..30 {
            let mut held: Vec<*mut u8> = Vec::new();
            for &(take, v) in &script {
                if take {
                    let p = pool.take(class_of(v).unwrap(), v, false);
                    assert!(!p.is_null());
                    // Touch both ends: a block is at least the size asked for.
                    unsafe {
                        *p = 1;
                        *p.add(v - 1) = 1;
                    }
                    held.push(p);
                } else {
                    let p = held.swap_remove(v);
                    unsafe { pool.give(p) };
                }
            }
            for p in held {
                unsafe { pool.give(p) };
            }
            mapped.push(pool.stats().mapped);
        }
        assert!(mapped.windows(2).all(|w| w[0] <= w[1]), "{mapped:?}");
        assert_eq!(
            mapped[4], mapped[29],
            "still mapping after run 5: {mapped:?}"
        );
        assert_eq!(pool.stats().free, pool.stats().mapped);
        pool.release_unused();
        assert_eq!(pool.stats(), PoolStats::default());
    }

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
