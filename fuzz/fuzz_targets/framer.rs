//! `LineFramer` driven the way a connection drives it, on an arbitrary byte stream cut into
//! arbitrary reads, with "the quiet period elapsed here" events.
//!
//! Input encoding (so that seeds are readable and libFuzzer can steer every aspect):
//! - byte 0 picks the line cap: below 0x80, `b % 64` (tiny caps reach the edge cases
//!   quickly); otherwise the default 1024;
//! - in the rest, `0xFF` ends a read (the connection runs `decode` until it returns `None`),
//!   `0xFE` ends a read and then the quiet period elapses (`take_partial`); every other byte
//!   is stream data. The end of the input is EOF (`decode_eof`), which also ends a read.
//!
//! Invariants checked:
//! - no frame is longer than the cap (counting a stripped CR), and no line contains an LF;
//! - `TooLong` is reported only when more than `cap` bytes are buffered with no LF among
//!   the first `cap + 1`, and after a read is fully decoded the buffer holds at most `cap`
//!   bytes and no LF (the buffer is bounded);
//! - the emitted lines with their separators (`\n`, `\r\n`, or for a quiet-period/EOF line
//!   nothing or a final `\r`) are exactly the consumed input, in order, with nothing lost or
//!   invented, as long as no `TooLong` ended the stream.
#![no_main]

use bytes::BytesMut;
use certline::protocol::{Frame, LineFramer};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const READ_END: u8 = 0xFF;
const QUIET: u8 = 0xFE;

struct Model {
    cap: usize,
    framer: LineFramer,
    buf: BytesMut,
    /// Every data byte fed so far.
    consumed: Vec<u8>,
    /// How much of `consumed` the emitted frames account for.
    pos: usize,
}

/// How a line ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// At an LF (`decode`).
    Lf,
    /// Quiet period or EOF: the whole buffer was taken.
    Partial,
}

impl Model {
    /// Checks one emitted line against the input and advances `pos` past it.
    fn account(&mut self, line: &[u8], end: End) {
        assert!(!line.contains(&b'\n'), "a line contains an LF");
        let rest = &self.consumed[self.pos..];
        assert!(
            rest.starts_with(line),
            "line {line:?} is not the next input {rest:?}"
        );
        let after = &rest[line.len()..];
        let raw_len = match end {
            End::Lf if after.starts_with(b"\n") => line.len() + 1,
            End::Lf if after.starts_with(b"\r\n") => line.len() + 2,
            End::Lf => panic!("an LF line is not followed by LF or CR LF: {after:?}"),
            End::Partial => {
                // The whole buffer was taken: only a dropped final CR may follow.
                assert!(
                    after == b"" || after == b"\r",
                    "a partial line left {after:?} behind"
                );
                line.len() + after.len()
            }
        };
        let content_len = match end {
            End::Lf => raw_len - 1,
            End::Partial => raw_len,
        };
        assert!(
            content_len <= self.cap,
            "a line of {content_len} bytes passed the cap {}",
            self.cap
        );
        self.pos += raw_len;
        self.check_buffer_is_the_rest();
    }

    fn check_buffer_is_the_rest(&self) {
        assert_eq!(
            &self.consumed[self.pos..],
            &self.buf[..],
            "the buffer is not the unconsumed input"
        );
    }

    /// Decodes until `None`, as the connection does after each read. Returns false after
    /// `TooLong` (the connection answers 413 and closes).
    fn drain(&mut self) -> bool {
        loop {
            match self
                .framer
                .decode(&mut self.buf)
                .expect("decode never fails")
            {
                Some(Frame::Line(line)) => self.account(&line, End::Lf),
                Some(Frame::TooLong) => {
                    self.check_too_long();
                    return false;
                }
                None => {
                    assert!(
                        self.buf.len() <= self.cap,
                        "{} bytes buffered with cap {}",
                        self.buf.len(),
                        self.cap
                    );
                    assert!(!self.buf.contains(&b'\n'), "an LF was left in the buffer");
                    self.check_buffer_is_the_rest();
                    return true;
                }
            }
        }
    }

    fn check_too_long(&self) {
        assert!(
            self.buf.len() > self.cap,
            "TooLong with only {} bytes buffered (cap {})",
            self.buf.len(),
            self.cap
        );
        assert!(
            !self.buf[..=self.cap].contains(&b'\n'),
            "TooLong although an LF is within the cap"
        );
    }

    /// The quiet period elapsed (or EOF): the partial line, if any, is a request.
    fn take_rest(&mut self, frame: Option<Frame>) {
        match frame {
            Some(Frame::Line(line)) => self.account(&line, End::Partial),
            Some(Frame::TooLong) => panic!("TooLong from a drained buffer"),
            None => assert!(self.buf.is_empty(), "bytes left but no partial line"),
        }
        assert!(
            self.buf.is_empty(),
            "the partial line did not take the buffer"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cap_byte, stream)) = data.split_first() else {
        return;
    };
    let cap = if cap_byte < 0x80 {
        usize::from(cap_byte % 64)
    } else {
        1024
    };
    let mut m = Model {
        cap,
        framer: LineFramer::new(cap),
        buf: BytesMut::new(),
        consumed: Vec::new(),
        pos: 0,
    };
    for read in stream.split_inclusive(|&b| b == READ_END || b == QUIET) {
        let (bytes, marker) = match read.split_last() {
            Some((&last, bytes)) if last == READ_END || last == QUIET => (bytes, Some(last)),
            _ => (read, None),
        };
        m.buf.extend_from_slice(bytes);
        m.consumed.extend_from_slice(bytes);
        if !m.drain() {
            return;
        }
        if marker == Some(QUIET) {
            let frame = m.framer.take_partial(&mut m.buf);
            m.take_rest(frame);
        }
    }
    // EOF.
    let frame = m
        .framer
        .decode_eof(&mut m.buf)
        .expect("decode_eof never fails");
    m.take_rest(frame);
    assert_eq!(m.pos, m.consumed.len(), "input was lost");
});
