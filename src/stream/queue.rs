//! A bounded queue where the newest item wins: when the consumer (the link) is slower than the
//! producer (the camera), the oldest waiting mask is dropped and counted. A stale mask is worth
//! less than a fresh one on a live scanner, and memory stays bounded whatever the link does.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct LatestWins<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    items: VecDeque<T>,
    cap: usize,
    drops: u64,
    closed: bool,
}

/// What [`LatestWins::pop_timeout`] found.
pub enum Pop<T> {
    Item(T),
    Empty,
    /// Closed and drained.
    Closed,
}

impl<T> LatestWins<T> {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        LatestWins {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(cap),
                cap,
                drops: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder cannot leave the queue inconsistent (every update is one step).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues `item`; if full, evicts and returns the oldest (counted as a drop) so its
    /// buffers can be reused.
    pub fn push(&self, item: T) -> Option<T> {
        let mut s = self.lock();
        let evicted = if s.items.len() >= s.cap {
            s.drops += 1;
            s.items.pop_front()
        } else {
            None
        };
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        evicted
    }

    pub fn pop_timeout(&self, timeout: Duration) -> Pop<T> {
        let mut s = self.lock();
        if s.items.is_empty() && !s.closed {
            s = self
                .ready
                .wait_timeout(s, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match s.items.pop_front() {
            Some(t) => Pop::Item(t),
            None if s.closed => Pop::Closed,
            None => Pop::Empty,
        }
    }

    /// No more pushes; the consumer drains what is left, then sees `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Counts an item the consumer had to drop (the link was down).
    pub fn count_drop(&self) {
        self.lock().drops += 1;
    }

    pub fn drops(&self) -> u64 {
        self.lock().drops
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let q = LatestWins::new(2);
        assert!(q.push(1).is_none());
        assert!(q.push(2).is_none());
        assert_eq!(q.push(3), Some(1));
        assert_eq!(q.push(4), Some(2));
        assert_eq!(q.drops(), 2);
        q.close();
        let mut got = vec![];
        while let Pop::Item(v) = q.pop_timeout(Duration::ZERO) {
            got.push(v);
        }
        assert_eq!(got, vec![3, 4]);
        assert!(matches!(q.pop_timeout(Duration::ZERO), Pop::Closed));
    }

    #[test]
    fn pop_waits_for_a_push_from_another_thread() {
        let q = std::sync::Arc::new(LatestWins::new(1));
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q2.push(7);
        });
        let mut got = None;
        for _ in 0..100 {
            if let Pop::Item(v) = q.pop_timeout(Duration::from_millis(50)) {
                got = Some(v);
                break;
            }
        }
        t.join().unwrap();
        assert_eq!(got, Some(7));
    }
}
