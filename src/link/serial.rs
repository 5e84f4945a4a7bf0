//! Serial links (UART, USB CDC-ACM gadget or host port) through the `serialport` crate, built
//! without libudev so it cross-compiles. Opening applies 8N1, no flow control and the baud rate;
//! a CDC-ACM port ignores the rate (USB runs at bus speed) but accepts it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{Connection, READ_POLL, Transport};

pub struct SerialTransport {
    path: PathBuf,
    baud: u32,
}

impl SerialTransport {
    pub fn new(path: PathBuf, baud: u32) -> Self {
        SerialTransport { path, baud }
    }
}

impl Transport for SerialTransport {
    fn open(&mut self) -> io::Result<Connection> {
        let path = self.path.to_string_lossy();
        let port = serialport::new(path.as_ref(), self.baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(serialport::FlowControl::None)
            .timeout(READ_POLL)
            .open_native()
            .map_err(|e| io::Error::other(format!("{}: {e}", self.path.display())))?;
        let mut writer = port
            .try_clone_native()
            .map_err(|e| io::Error::other(format!("{}: {e}", self.path.display())))?;
        // A write may wait for the line to drain; a stalled line (nobody reading a pty, a
        // blocked USB host) fails after this long and the link is reopened.
        serialport::SerialPort::set_timeout(&mut writer, Duration::from_secs(2))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Connection {
            reader: Some(Box::new(port)),
            writer: Some(Box::new(writer)),
        })
    }
    fn describe(&self) -> String {
        format!("serial:{}@{}", self.path.display(), self.baud)
    }
}
