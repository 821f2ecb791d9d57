//! Serial-log watcher: a pure state machine fed with the raw bytes of a guest's serial log, as
//! they arrive, that decides "ready" or "failed" from plan [`Marker`]s.
//!
//! It matches markers anywhere in the stream, in every complete line and in the current partial
//! line (a marker may be printed without its newline yet, like a prompt), never only in the last
//! line as CSIT's `tail -1` polling does (its weakness 16: a marker followed by more output before
//! the next poll is missed). Chunks may split lines, markers and UTF-8 sequences anywhere; lines
//! end at `\n` (a trailing `\r` is dropped), and invalid UTF-8 is decoded lossily.
//!
//! Verdicts follow stream order: the first line that matches any marker decides. If one line
//! matches both a ready and a fail marker, the failure wins (a line like `vpp ... built by ...
//! panic` is not a healthy banner). The verdict is reported once; later bytes are still consumed
//! so that [`SerialWatch::tail`] and [`SerialWatch::offset`] stay current.

use std::collections::VecDeque;

use crate::plan::Marker;

/// How many lines [`SerialWatch::tail`] keeps for error messages.
pub const TAIL_LINES: usize = 30;

/// A line longer than this is cut there and treated as complete, so that a stream without
/// newlines cannot grow memory (or the per-chunk partial-line scan) without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// What the serial log says about the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A ready marker matched `line`.
    Ready { marker: Marker, line: String },
    /// A failure marker matched `line` (e.g. `reboot: Power down`, `Kernel panic`).
    Failed { marker: Marker, line: String },
}

impl Verdict {
    pub fn is_ready(&self) -> bool {
        matches!(self, Verdict::Ready { .. })
    }
    pub fn line(&self) -> &str {
        match self {
            Verdict::Ready { line, .. } | Verdict::Failed { line, .. } => line,
        }
    }
}

/// Incremental matcher over a serial byte stream.
#[derive(Debug)]
pub struct SerialWatch {
    ready: Vec<Marker>,
    fail: Vec<Marker>,
    /// Bytes of the current line, not yet terminated by `\n`.
    partial: Vec<u8>,
    tail: VecDeque<String>,
    offset: u64,
    verdict: Option<Verdict>,
}

impl SerialWatch {
    /// Markers without any substring would match every line; they are ignored.
    pub fn new(ready: Vec<Marker>, fail: Vec<Marker>) -> Self {
        let keep = |m: &Marker| !m.all.is_empty() && m.all.iter().any(|p| !p.is_empty());
        SerialWatch {
            ready: ready.into_iter().filter(keep).collect(),
            fail: fail.into_iter().filter(keep).collect(),
            partial: Vec::new(),
            tail: VecDeque::with_capacity(TAIL_LINES + 1),
            offset: 0,
            verdict: None,
        }
    }

    /// Consume the next chunk of the stream. Returns the verdict the first time one is reached
    /// (in this chunk), `None` before and after.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Verdict> {
        self.offset += chunk.len() as u64;
        let decided_before = self.verdict.is_some();
        let mut rest = chunk;
        while !rest.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &rest[..rest.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.partial.extend_from_slice(&window[..nl]);
                    rest = &rest[nl + 1..];
                    self.finish_line();
                }
                None => {
                    self.partial.extend_from_slice(window);
                    rest = &rest[window.len()..];
                    if self.partial.len() >= MAX_LINE {
                        self.finish_line();
                    }
                }
            }
        }
        // The partial line, for markers printed without a newline (yet).
        if self.verdict.is_none() && !self.partial.is_empty() {
            let line = decode(&self.partial);
            self.verdict = self.judge(&line);
        }
        if decided_before { None } else { self.verdict.clone() }
    }

    /// The verdict reached so far, if any.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// The last [`TAIL_LINES`] lines (oldest first), the current partial line included as the
    /// last element when non-empty.
    pub fn tail(&self) -> Vec<String> {
        let mut out: Vec<String> = self.tail.iter().cloned().collect();
        if !self.partial.is_empty() {
            out.push(decode(&self.partial));
            if out.len() > TAIL_LINES {
                out.remove(0);
            }
        }
        out
    }

    /// Bytes consumed so far: where a follower resumes the log (e.g. `tail -c +<offset+1>`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn finish_line(&mut self) {
        let line = decode(&self.partial);
        self.partial.clear();
        if self.verdict.is_none() {
            self.verdict = self.judge(&line);
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn judge(&self, line: &str) -> Option<Verdict> {
        if let Some(m) = self.fail.iter().find(|m| m.matches(line)) {
            return Some(Verdict::Failed { marker: m.clone(), line: line.to_owned() });
        }
        self.ready.iter().find(|m| m.matches(line)).map(|m| Verdict::Ready { marker: m.clone(), line: line.to_owned() })
    }
}

fn decode(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.strip_suffix('\r').unwrap_or(&s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> SerialWatch {
        SerialWatch::new(
            vec![Marker::new(["vpp ", "built by"]), Marker::new(["HARNESS-LAB-READY"])],
            vec![Marker::new(["reboot: Power down"]), Marker::new(["Kernel panic"])],
        )
    }

    #[test]
    fn ready_marker_in_a_complete_line() {
        let mut w = watch();
        assert_eq!(w.feed(b"[    1.0] booting\r\n"), None);
        let v = w.feed(b"HARNESS-LAB-READY qga=isa\r\nmore\r\n").expect("verdict");
        assert!(v.is_ready());
        assert_eq!(v.line(), "HARNESS-LAB-READY qga=isa");
        assert_eq!(w.tail(), vec!["[    1.0] booting", "HARNESS-LAB-READY qga=isa", "more"]);
    }

    #[test]
    fn marker_split_across_many_chunks_byte_by_byte() {
        let mut w = watch();
        let log = b"noise\nvpp v24.02 built by root on host\nafter\n";
        let mut got = None;
        for (i, b) in log.iter().enumerate() {
            if let Some(v) = w.feed(std::slice::from_ref(b)) {
                assert!(got.is_none(), "verdict reported twice");
                got = Some((i, v));
            }
        }
        let (i, v) = got.expect("verdict");
        // Decided on the partial line as soon as its last substring arrived, before the newline.
        assert_eq!(&log[..=i], b"noise\nvpp v24.02 built by");
        assert_eq!(v, Verdict::Ready { marker: Marker::new(["vpp ", "built by"]), line: "vpp v24.02 built by".into() });
        assert_eq!(w.offset(), log.len() as u64);
    }

    #[test]
    fn all_substrings_must_be_on_the_same_line() {
        let mut w = watch();
        assert_eq!(w.feed(b"vpp starting\nbuilt by nobody\n"), None);
        assert!(w.verdict().is_none());
    }

    #[test]
    fn marker_in_the_middle_of_a_long_log_is_found() {
        // CSIT looks at the last line only; here the banner is followed by 500 more lines in the
        // same chunk and must still count.
        let mut log = String::new();
        for i in 0..500 {
            log.push_str(&format!("[{i:5}] kernel noise\r\n"));
        }
        log.push_str("HARNESS-LAB-READY\r\n");
        for i in 0..500 {
            log.push_str(&format!("later line {i}\r\n"));
        }
        let mut w = watch();
        let v = w.feed(log.as_bytes()).expect("verdict");
        assert!(v.is_ready());
        assert_eq!(w.tail().len(), TAIL_LINES);
        assert_eq!(w.tail().last().unwrap(), "later line 499");
    }

    #[test]
    fn prompt_without_newline_matches() {
        let mut w = SerialWatch::new(vec![Marker::new(["Press enter to exit"])], vec![]);
        assert!(w.feed(b"testpmd> Press enter").is_none());
        let v = w.feed(b" to exit").expect("verdict");
        assert_eq!(v.line(), "testpmd> Press enter to exit");
    }

    #[test]
    fn failure_first_in_stream_order_wins() {
        let mut w = watch();
        let v = w.feed(b"[ 9.1] reboot: Power down\nHARNESS-LAB-READY\n").expect("verdict");
        assert!(matches!(v, Verdict::Failed { .. }));
        assert_eq!(v.line(), "[ 9.1] reboot: Power down");
        // And the other way round: ready first, a later power-off does not change the verdict.
        let mut w = watch();
        assert!(w.feed(b"HARNESS-LAB-READY\nreboot: Power down\n").unwrap().is_ready());
        assert!(w.feed(b"Kernel panic\n").is_none());
        assert!(w.verdict().unwrap().is_ready());
    }

    #[test]
    fn failure_wins_within_one_line() {
        let mut w = watch();
        let v = w.feed(b"HARNESS-LAB-READY then Kernel panic - not syncing\n").unwrap();
        assert!(matches!(v, Verdict::Failed { ref marker, .. } if marker == &Marker::new(["Kernel panic"])));
    }

    #[test]
    fn split_utf8_and_invalid_bytes_are_decoded_lossily() {
        let mut w = watch();
        let text = "größe ✓ HARNESS-LAB-READY\n".as_bytes();
        // Split inside the multi-byte '✓'.
        let cut = text.iter().position(|&b| b == 0xe2).unwrap() + 1;
        assert!(w.feed(&text[..cut]).is_none());
        let v = w.feed(&text[cut..]).unwrap();
        assert_eq!(v.line(), "größe ✓ HARNESS-LAB-READY");
        w.feed(b"bad \xff\xfe bytes\r\n");
        assert_eq!(w.tail().last().unwrap(), "bad \u{fffd}\u{fffd} bytes");
    }

    #[test]
    fn crlf_split_between_chunks() {
        let mut w = watch();
        w.feed(b"line one\r");
        w.feed(b"\nline two\r\n");
        assert_eq!(w.tail(), vec!["line one", "line two"]);
    }

    #[test]
    fn empty_markers_are_ignored() {
        let mut w = SerialWatch::new(vec![Marker::new(Vec::<String>::new()), Marker::new([""])], vec![]);
        assert!(w.feed(b"anything\n").is_none());
    }

    #[test]
    fn overlong_line_is_cut_and_markers_after_it_still_match() {
        let mut w = watch();
        let junk = vec![b'x'; MAX_LINE * 2 + 10];
        assert!(w.feed(&junk).is_none());
        assert!(w.feed(b"\nKernel panic\n").is_some());
        assert_eq!(w.offset(), (MAX_LINE * 2 + 10 + 14) as u64);
        assert!(w.tail().iter().all(|l| l.len() <= MAX_LINE));
    }

    #[test]
    fn tail_includes_partial_line_and_is_bounded() {
        let mut w = watch();
        for i in 0..40 {
            w.feed(format!("l{i}\n").as_bytes());
        }
        w.feed(b"partial");
        let t = w.tail();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.first().unwrap(), "l11");
        assert_eq!(t.last().unwrap(), "partial");
    }
}
