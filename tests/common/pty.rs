//! Pseudo-terminal pairs (the tty layer a UART or a USB CDC-ACM port goes through) and a
//! bridge that plays the cable between two of them: it can damage bytes and play a slow host
//! that reads the device's side at a few hundred bytes a second. The settings live in a
//! [`Line`] that outlives a bridge, so a test can unplug (stop one bridge, drop the device's
//! pty) and replug (a new pty, a new bridge on the same line).

use super::Rng;
use serialport::{SerialPort, TTYPort};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One pty pair: the test keeps the slave open (so the master never sees a hangup while the
/// program under test reopens it) and hands the slave's path to the program.
pub struct Pty {
    pub master: TTYPort,
    _slave: TTYPort,
    pub path: String,
}

/// A pty pair whose descriptors are closed on exec: `TTYPort::pair` leaves them inheritable,
/// and a `sonomask` spawned after it would hold the pair open, so that dropping it no longer
/// hangs the line up (an unplug would look like a host that stopped reading).
pub fn pty() -> Pty {
    let (master, slave) = TTYPort::pair().expect("openpty");
    let path = slave.name().expect("slave path");
    // F_DUPFD_CLOEXEC copies; the inheritable originals close when dropped here.
    let (master, slave) = (
        master.try_clone_native().expect("dup master"),
        slave.try_clone_native().expect("dup slave"),
    );
    Pty {
        master,
        _slave: slave,
        path,
    }
}

/// The cable's behaviour, changeable while bridges run.
#[derive(Default)]
pub struct Line {
    /// Flip one bit in about one of this many device-to-host bytes (0: a clean line).
    pub flip_one_in: AtomicU64,
    /// Device-to-host bytes per second the host reads (0: as fast as they come).
    pub bytes_per_s: AtomicU64,
    /// Bytes damaged so far.
    pub damaged: AtomicU64,
}

/// Copies bytes between two pty masters while it runs.
pub struct Bridge {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub line: Arc<Line>,
}

impl Bridge {
    /// A bridge on a fresh line that damages about one in `flip_one_in` device bytes.
    pub fn start(dev: &Pty, host: &Pty, flip_one_in: Option<u64>) -> Bridge {
        let line = Arc::new(Line::default());
        line.flip_one_in
            .store(flip_one_in.unwrap_or(0), Ordering::Relaxed);
        Bridge::on(dev, host, line)
    }

    /// A bridge on an existing line (a replug keeps the line's settings and counters).
    pub fn on(dev: &Pty, host: &Pty, line: Arc<Line>) -> Bridge {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to, device_side) in [
            (&dev.master, &host.master, true),
            (&host.master, &dev.master, false),
        ] {
            let (from, to) = (
                from.try_clone_native().unwrap(),
                to.try_clone_native().unwrap(),
            );
            let (stop, line) = (stop.clone(), line.clone());
            threads.push(std::thread::spawn(move || {
                copy(from, to, device_side.then_some(&*line), &stop)
            }));
        }
        Bridge {
            stop,
            threads,
            line,
        }
    }

    pub fn damaged(&self) -> u64 {
        self.line.damaged.load(Ordering::Relaxed)
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until `stop`; `line` (device to host only) damages and throttles.
fn copy(mut from: TTYPort, mut to: TTYPort, line: Option<&Line>, stop: &AtomicBool) {
    const TICK: Duration = Duration::from_millis(50);
    let mut rng = Rng(0xB1D6E);
    let mut buf = [0u8; 4096];
    from.set_timeout(TICK).unwrap();
    to.set_timeout(TICK).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let rate = line.map_or(0, |l| l.bytes_per_s.load(Ordering::Relaxed));
        // A slow host takes one tick's worth of bytes, then waits out the tick: the device's
        // tty fills and its writes stall, as with a host program that stopped reading.
        let want = if rate == 0 {
            buf.len()
        } else {
            ((rate / 20).max(1) as usize).min(buf.len())
        };
        match from.read(&mut buf[..want]) {
            Ok(0) => std::thread::sleep(Duration::from_millis(10)),
            Ok(n) => {
                if let Some(l) = line {
                    let k = l.flip_one_in.load(Ordering::Relaxed);
                    if k > 0 {
                        for b in &mut buf[..n] {
                            if rng.next().is_multiple_of(k) {
                                *b ^= 1 << rng.below(8);
                                l.damaged.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                // Nobody reading the far end (a host not yet listening): the line loses bytes.
                let _ = to.write_all(&buf[..n]);
                if rate > 0 {
                    std::thread::sleep(TICK);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
