//! Links: where wire bytes go and come from. Each transport is a small [`Transport`] that can
//! (re)open a [`Connection`]; the device and host loops above it only see `Read`/`Write`, so
//! serial, USB CDC-ACM (a serial port to the OS), TCP and files behave the same.
//!
//! Endpoint syntax (`--sink`, `listen`):
//! - `serial:PATH[@BAUD]`: a UART or USB CDC-ACM port (`/dev/ttyGS0` on a gadget device,
//!   `/dev/ttyACM0` on the host), 8N1, no flow control, default 921600 baud;
//! - `tcp:HOST:PORT`: the device connects to the host, which listens;
//! - `stdout` (device) / `stdin` (host), or `file:PATH` (or a bare path for `listen`): a
//!   recorded stream.

pub mod serial;

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use sonomask_wire::receiver::{Received, Receiver, ReceiverStats};

/// How long a blocking read waits before the caller's loop gets control back (to notice a
/// stop request or a replaced connection).
pub const READ_POLL: Duration = Duration::from_millis(100);

/// One open link: a writer and, for two-way links, a reader.
pub struct Connection {
    pub reader: Option<Box<dyn Read + Send>>,
    pub writer: Option<Box<dyn Write + Send>>,
}

/// A link that can be opened, and opened again after it failed (a cable pulled and put back).
pub trait Transport: Send {
    fn open(&mut self) -> io::Result<Connection>;
    /// For logs and errors.
    fn describe(&self) -> String;
    /// Whether reopening after a failure can help (not for stdout or a file).
    fn reconnects(&self) -> bool {
        true
    }
}

/// A parsed endpoint string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Serial { path: PathBuf, baud: u32 },
    Tcp(String),
    Stdio,
    File(PathBuf),
}

pub const DEFAULT_BAUD: u32 = 921_600;

impl Endpoint {
    /// Parses `serial:PATH[@BAUD]`, `tcp:HOST:PORT`, `stdout`/`stdin`/`-`, `file:PATH`; a bare
    /// path is a file when `bare_path_is_file`.
    pub fn parse(s: &str, bare_path_is_file: bool) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("serial:") {
            let (path, baud) = match rest.rsplit_once('@') {
                Some((p, b)) => {
                    let baud: u32 = b
                        .parse()
                        .with_context(|| format!("baud rate '{b}' in '{s}' is not a number"))?;
                    if baud == 0 {
                        bail!("baud rate in '{s}' must be positive");
                    }
                    (p, baud)
                }
                None => (rest, DEFAULT_BAUD),
            };
            if path.is_empty() {
                bail!("'{s}' names no serial device (serial:/dev/ttyACM0@921600)");
            }
            return Ok(Endpoint::Serial {
                path: path.into(),
                baud,
            });
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => bail!("'{s}' is not tcp:HOST:PORT"),
            }
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        if matches!(s, "stdout" | "stdin" | "-") {
            return Ok(Endpoint::Stdio);
        }
        if let Some(p) = s.strip_prefix("file:") {
            return Ok(Endpoint::File(p.into()));
        }
        if bare_path_is_file && !s.contains(':') {
            return Ok(Endpoint::File(s.into()));
        }
        bail!("unknown endpoint '{s}': use serial:PATH[@BAUD], tcp:HOST:PORT, stdout or file:PATH")
    }

    /// The device's side: it writes masks (and reads prompts where the link is two-way).
    pub fn device_transport(&self) -> Result<Box<dyn Transport>> {
        Ok(match self {
            Endpoint::Serial { path, baud } => {
                Box::new(serial::SerialTransport::new(path.clone(), *baud))
            }
            Endpoint::Tcp(addr) => Box::new(TcpClient { addr: addr.clone() }),
            Endpoint::Stdio => OpenOnce::boxed("stdout".into(), || {
                Ok(Connection {
                    reader: None,
                    writer: Some(Box::new(io::stdout())),
                })
            }),
            Endpoint::File(p) => {
                let path = p.clone();
                OpenOnce::boxed(format!("file:{}", p.display()), move || {
                    let f = File::create(&path)?;
                    Ok(Connection {
                        reader: None,
                        writer: Some(Box::new(io::BufWriter::new(f))),
                    })
                })
            }
        })
    }

    /// The host's side: it reads masks (and writes prompts where the link is two-way).
    pub fn host_transport(&self) -> Result<Box<dyn Transport>> {
        Ok(match self {
            Endpoint::Serial { path, baud } => {
                Box::new(serial::SerialTransport::new(path.clone(), *baud))
            }
            Endpoint::Tcp(addr) => Box::new(TcpServer::bind(addr)?),
            Endpoint::Stdio => OpenOnce::boxed("stdin".into(), || {
                Ok(Connection {
                    reader: Some(Box::new(io::stdin())),
                    writer: None,
                })
            }),
            Endpoint::File(p) => {
                let path = p.clone();
                OpenOnce::boxed(format!("file:{}", p.display()), move || {
                    Ok(Connection {
                        reader: Some(Box::new(File::open(&path)?)),
                        writer: None,
                    })
                })
            }
        })
    }
}

/// Device side of TCP: connects to the host; reconnects when the host restarts.
pub struct TcpClient {
    addr: String,
}

impl Transport for TcpClient {
    fn open(&mut self) -> io::Result<Connection> {
        let addr = self.addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to nothing", self.addr),
            )
        })?;
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp_connection(s)
    }
    fn describe(&self) -> String {
        format!("tcp:{}", self.addr)
    }
}

fn tcp_connection(s: TcpStream) -> io::Result<Connection> {
    // Masks are latency-bound: send each frame as it is written.
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_POLL))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let r = s.try_clone()?;
    Ok(Connection {
        reader: Some(Box::new(r)),
        writer: Some(Box::new(s)),
    })
}

/// Host side of TCP: binds once, accepts one device per `open`.
pub struct TcpServer {
    listener: TcpListener,
    addr: String,
}

impl TcpServer {
    pub fn bind(addr: &str) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp:{addr}"))?;
        Ok(TcpServer {
            listener,
            addr: addr.to_string(),
        })
    }
}

impl Transport for TcpServer {
    fn open(&mut self) -> io::Result<Connection> {
        // Poll accept so the caller's loop keeps control (timeouts, stop requests).
        self.listener.set_nonblocking(true)?;
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            match self.listener.accept() {
                Ok((s, peer)) => {
                    log::info!("tcp: device connected from {peer}");
                    s.set_nonblocking(false)?;
                    return tcp_connection(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no device connected yet",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
    fn describe(&self) -> String {
        format!("tcp:{} (listening)", self.addr)
    }
}

/// stdout, stdin or a file: opened once; a second `open` (after the link failed) is an error,
/// since reopening cannot bring back what was lost.
struct OpenOnce<F> {
    name: String,
    open: Option<F>,
}

impl<F: FnOnce() -> io::Result<Connection> + Send + 'static> OpenOnce<F> {
    fn boxed(name: String, open: F) -> Box<dyn Transport> {
        Box::new(OpenOnce {
            name,
            open: Some(open),
        })
    }
}

impl<F: FnOnce() -> io::Result<Connection> + Send> Transport for OpenOnce<F> {
    fn open(&mut self) -> io::Result<Connection> {
        match self.open.take() {
            Some(f) => f(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{} cannot be reopened", self.name),
            )),
        }
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn reconnects(&self) -> bool {
        false
    }
}

/// Read errors that only mean "nothing yet".
pub fn is_idle(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("serial:/dev/ttyACM0@115200", false).unwrap(),
            Endpoint::Serial {
                path: "/dev/ttyACM0".into(),
                baud: 115_200
            }
        );
        assert_eq!(
            Endpoint::parse("serial:/dev/ttyGS0", false).unwrap(),
            Endpoint::Serial {
                path: "/dev/ttyGS0".into(),
                baud: DEFAULT_BAUD
            }
        );
        assert_eq!(
            Endpoint::parse("tcp:127.0.0.1:7000", false).unwrap(),
            Endpoint::Tcp("127.0.0.1:7000".into())
        );
        assert_eq!(Endpoint::parse("stdout", false).unwrap(), Endpoint::Stdio);
        assert_eq!(
            Endpoint::parse("rec.bin", true).unwrap(),
            Endpoint::File("rec.bin".into())
        );
        for bad in [
            "serial:",
            "serial:/dev/x@fast",
            "serial:/dev/x@0",
            "tcp:host",
            "tcp::80",
            "udp:1:2",
            "rec.bin",
        ] {
            assert!(Endpoint::parse(bad, false).is_err(), "{bad} accepted");
        }
    }
}
