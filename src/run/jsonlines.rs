//! The line reader under the QMP and QGA clients: both protocols send one JSON message per
//! `\n`-terminated line (QMP ends them with `\r\n`), over a stream that may be a local socket or
//! an SSH channel running `socat`.
//!
//! The reader keeps its own buffer so that a read cancelled by a timeout loses nothing: bytes of
//! an unfinished line stay buffered for the next call. It returns raw bytes rather than parsed
//! JSON because QGA lines may carry the 0xFF delimiter of `guest-sync-delimited` (and garbage
//! from earlier clients), which only the QGA client knows how to strip.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no line could be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The peer closed the stream (EOF, reset, broken pipe).
    #[error("the channel was closed")]
    Closed,
    /// No `\n` within the limit: not the protocol we expected, or a runaway peer.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

/// A buffered `\n` line splitter over any [`AsyncRead`], which it borrows per call (the clients
/// also write to the same stream).
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
}

impl LineReader {
    /// A reader that rejects lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        LineReader { buf: Vec::with_capacity(4096), max }
    }

    /// Next line without its `\n` (a `\r` before it is kept; callers trim). Cancel-safe: a
    /// dropped future leaves every byte read so far in the buffer.
    pub async fn read_line<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> Result<Vec<u8>, LineError> {
        // Only the bytes appended since the last scan need looking at.
        let mut scanned = 0;
        loop {
            if let Some(nl) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..scanned + nl + 1).collect();
                line.pop();
                return Ok(line);
            }
            scanned = self.buf.len();
            if scanned > self.max {
                // The partial line is useless and resynchronising mid-line is impossible.
                self.buf.clear();
                return Err(LineError::TooLong(self.max));
            }
            let n = stream.read_buf(&mut self.buf).await.map_err(classify)?;
            if n == 0 {
                return Err(LineError::Closed);
            }
        }
    }

    /// Bytes received but not yet returned as a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Errors that mean "the other end went away" become [`LineError::Closed`] so that callers can
/// tell a dead channel (reconnect) from a real I/O problem.
pub fn classify(e: std::io::Error) -> LineError {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected => LineError::Closed,
        _ => LineError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncWriteExt, duplex};

    #[tokio::test]
    async fn splits_lines_across_reads_and_keeps_the_rest() {
        let (mut a, mut b) = duplex(64);
        let mut r = LineReader::new(1024);
        b.write_all(b"{\"a\":1}\r\n{\"b\"").await.unwrap();
        assert_eq!(r.read_line(&mut a).await.unwrap(), b"{\"a\":1}\r");
        b.write_all(b":2}\n\n").await.unwrap();
        assert_eq!(r.read_line(&mut a).await.unwrap(), b"{\"b\":2}");
        assert_eq!(r.read_line(&mut a).await.unwrap(), b"");
        assert_eq!(r.pending(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let (mut a, mut b) = duplex(64);
        let mut r = LineReader::new(1024);
        b.write_all(b"\xffhalf").await.unwrap();
        let t = tokio::time::timeout(Duration::from_millis(50), r.read_line(&mut a)).await;
        assert!(t.is_err(), "no full line yet");
        assert_eq!(r.pending(), 5);
        b.write_all(b" line\n").await.unwrap();
        assert_eq!(r.read_line(&mut a).await.unwrap(), b"\xffhalf line");
    }

    #[tokio::test]
    async fn eof_and_overlong_lines_are_typed() {
        let (mut a, mut b) = duplex(256);
        let mut r = LineReader::new(8);
        b.write_all(b"0123456789abcdef").await.unwrap();
        assert!(matches!(r.read_line(&mut a).await, Err(LineError::TooLong(8))));
        drop(b);
        assert!(matches!(r.read_line(&mut a).await, Err(LineError::Closed)));
    }
}
