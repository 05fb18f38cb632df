//! Bounded line framing, including KeyChest's "no newline needed" rule.
//!
//! A request ends at LF (a CR before it is dropped), at EOF, or when the connection has been
//! quiet for the configured period. The first two are decided here, from bytes alone
//! ([`LineFramer::decode`], [`LineFramer::decode_eof`]); the quiet period is a matter of time,
//! so the connection measures it and then asks for whatever is buffered with
//! [`LineFramer::take_partial`]. Keeping the clock out of this type is what lets the fuzzer feed
//! it arbitrary chunkings with "the quiet period elapsed here" marks.
//!
//! The buffer never has to hold more than `max_line_bytes + 1` bytes of one line: as soon as
//! that many bytes arrive without an LF, the framer reports [`Frame::TooLong`] and the
//! connection answers 413 and closes.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// One framed unit of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request line without its terminating LF or CR LF. May be blank; blank lines are
    /// skipped by the connection, not here, so the framer stays a pure byte splitter.
    Line(BytesMut),
    /// More than `max_line_bytes` arrived without an LF. Framing cannot resynchronise
    /// reliably after this, so the connection closes.
    TooLong,
}

/// Splits a byte stream into request lines of at most `max_line_bytes` bytes.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line_bytes: usize,
}

impl LineFramer {
    /// A framer accepting lines of up to `max_line_bytes` bytes (not counting the LF).
    pub fn new(max_line_bytes: usize) -> Self {
        Self { max_line_bytes }
    }

    /// The configured cap.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// The quiet period elapsed: whatever is buffered (if anything) is a complete request.
    pub fn take_partial(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if let Some(frame) = self.split_line(buf) {
            return Some(frame);
        }
        if buf.is_empty() {
            return None;
        }
        let mut line = buf.split();
        strip_cr(&mut line);
        Some(Frame::Line(line))
    }

    fn split_line(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        // Only look as far as a legal line could reach: this keeps the scan bounded and means
        // an over-long line is reported as soon as it is known to be over-long.
        let window = buf.len().min(self.max_line_bytes + 1);
        match buf[..window].iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let mut line = buf.split_to(lf);
                buf.advance(1);
                strip_cr(&mut line);
                Some(Frame::Line(line))
            }
            None if buf.len() > self.max_line_bytes => Some(Frame::TooLong),
            None => None,
        }
    }
}

fn strip_cr(line: &mut BytesMut) {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
}

impl Decoder for LineFramer {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        Ok(self.split_line(buf))
    }

    /// At EOF the unterminated rest is a request, as KeyChest clients that half-close expect.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        Ok(self.take_partial(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(framer: &mut LineFramer, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = framer.decode(&mut buf).unwrap() {
            let stop = frame == Frame::TooLong;
            out.push(frame);
            if stop {
                return out;
            }
        }
        if let Some(frame) = framer.decode_eof(&mut buf).unwrap() {
            out.push(frame);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s))
    }

    #[test]
    fn splits_on_lf_and_drops_cr() {
        let mut f = LineFramer::new(1024);
        assert_eq!(
            lines(&mut f, b"command ping\r\ncommand apikey\n"),
            vec![line("command ping"), line("command apikey")]
        );
    }

    #[test]
    fn unterminated_rest_is_a_request_at_eof() {
        let mut f = LineFramer::new(1024);
        assert_eq!(lines(&mut f, b"a b\nc d"), vec![line("a b"), line("c d")]);
    }

    #[test]
    fn quiet_period_takes_the_partial_line() {
        let mut f = LineFramer::new(1024);
        let mut buf = BytesMut::from(&b"command apikey"[..]);
        assert_eq!(f.decode(&mut buf).unwrap(), None);
        assert_eq!(f.take_partial(&mut buf), Some(line("command apikey")));
        assert!(buf.is_empty());
        assert_eq!(f.take_partial(&mut buf), None);
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_accepted_one_more_byte_is_not() {
        let mut f = LineFramer::new(8);
        assert_eq!(lines(&mut f, b"12345678\n"), vec![line("12345678")]);
        assert_eq!(lines(&mut f, b"123456789\n"), vec![Frame::TooLong]);
        assert_eq!(lines(&mut f, b"123456789"), vec![Frame::TooLong]);
    }

    #[test]
    fn too_long_is_reported_before_the_newline_arrives() {
        let mut f = LineFramer::new(4);
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert_eq!(f.decode(&mut buf).unwrap(), Some(Frame::TooLong));
    }
}
