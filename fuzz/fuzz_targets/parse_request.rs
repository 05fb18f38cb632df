//! `parse_request` on arbitrary bytes (one request line, as the framer hands it over).
//!
//! Checks, for every input:
//! - it never panics;
//! - an error is a 400 or a 404, and its reply (what the connection would send) is a
//!   well-formed reply of at most 1000 bytes whose text is printable ASCII;
//! - an accepted line came from valid UTF-8 without control characters (protocol.md §3), and
//!   its canonical rendering re-parses to the same request.
#![no_main]

use certline::protocol::{ErrorCode, MAX_REPLY_BYTES, Reply, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    match parse_request(line) {
        Ok(request) => {
            let text = std::str::from_utf8(line).expect("accepted a line that is not UTF-8");
            assert!(
                !text.chars().any(|c| c != '\t' && c.is_control()),
                "accepted a control character: {text:?}"
            );
            let rendered = request.to_string();
            assert_eq!(
                parse_request(rendered.as_bytes()).as_ref(),
                Ok(&request),
                "rendering {rendered:?} does not re-parse"
            );
        }
        Err(e) => {
            let code = e.code();
            assert!(code == 400 || code == 404, "parse error with code {code}");
            let text = e.to_string();
            assert!(
                text.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "error text is not printable ASCII: {text:?}"
            );
            // What the connection sends for it.
            let reply = Reply::error(ErrorCode::from_u16(code).unwrap(), text);
            let bytes = reply.to_bytes();
            assert!(bytes.len() <= MAX_REPLY_BYTES);
            assert_eq!(Reply::parse(&bytes).as_ref(), Ok(&reply));
        }
    }
});
