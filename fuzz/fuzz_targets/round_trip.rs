//! Round trips through the wire types. Byte 0 picks what the rest of the input is:
//!
//! - `0`: a request. The rest, as a line, if it parses, renders and re-parses to the same
//!   value; and a request built from the rest's values (made into legal tokens) renders to a
//!   line that parses back to it.
//! - `1`: a reply built from the rest. Its encoding is at most 1000 bytes of printable ASCII
//!   with one LF per line (one or two lines, the last a status line), it parses, re-encodes
//!   to the same bytes, and equals the reply it came from whenever that was printable ASCII
//!   that fit.
//! - `2`: a domain. The rest, as text, if it normalises, normalises again to the same domain,
//!   and its rendering is a legal request value (so `add` can send it back).
#![no_main]

use certline::domain::normalize;
use certline::protocol::{ErrorCode, MAX_REPLY_BYTES, Reply, Request, parse_request};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const CODES: [ErrorCode; 11] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownKey,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::InvalidDomain,
    ErrorCode::Conflict,
    ErrorCode::TooLong,
    ErrorCode::InvalidField,
    ErrorCode::TooManyRequests,
    ErrorCode::Internal,
    ErrorCode::Unavailable,
];

/// A string made into a legal value token (protocol.md §3): no space, tab or control
/// character, not empty.
fn value(u: &mut Unstructured) -> Result<String> {
    let s: String = u.arbitrary()?;
    let s: String = s
        .chars()
        .filter(|&c| c != ' ' && c != '\t' && !c.is_control())
        .collect();
    Ok(if s.is_empty() { "x".into() } else { s })
}

fn request(u: &mut Unstructured) -> Result<Request> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Request::Apikey {
            email: if u.arbitrary()? {
                Some(value(u)?)
            } else {
                None
            },
        },
        1 => Request::Claim {
            apikey: value(u)?,
            email: value(u)?,
        },
        2 => Request::Add {
            apikey: value(u)?,
            domain: value(u)?,
        },
        3 => Request::Status {
            apikey: value(u)?,
            domain: value(u)?,
        },
        4 => Request::List {
            apikey: value(u)?,
            offset: if u.arbitrary()? {
                Some(value(u)?)
            } else {
                None
            },
        },
        5 => Request::Remove {
            apikey: value(u)?,
            domain: value(u)?,
        },
        6 => Request::Acme { apikey: value(u)? },
        _ => Request::Ping,
    })
}

fn check_request(rest: &[u8]) {
    if let Ok(parsed) = parse_request(rest) {
        let line = parsed.to_string();
        assert_eq!(parse_request(line.as_bytes()), Ok(parsed), "{line:?}");
    }
    if let Ok(built) = request(&mut Unstructured::new(rest)) {
        let line = built.to_string();
        assert_eq!(parse_request(line.as_bytes()), Ok(built), "{line:?}");
    }
}

fn reply(u: &mut Unstructured) -> Result<Reply> {
    let data: Option<String> = u.arbitrary()?;
    let error = match u.int_in_range(0..=CODES.len())? {
        0 => None,
        i => Some(CODES[i - 1]),
    };
    let text: String = u.arbitrary()?;
    Ok(Reply {
        data,
        error,
        text: text.into(),
    })
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn check_reply(rest: &[u8]) {
    let Ok(reply) = reply(&mut Unstructured::new(rest)) else {
        return;
    };
    let bytes = reply.to_bytes();
    assert!(
        bytes.len() <= MAX_REPLY_BYTES,
        "a reply of {} bytes",
        bytes.len()
    );
    assert!(
        bytes
            .iter()
            .all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)),
        "a reply byte that is neither printable ASCII nor LF"
    );
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let expected_lines = 1 + usize::from(reply.data.is_some());
    assert_eq!(lines.len(), expected_lines, "{bytes:?}");
    for line in &lines {
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"\n"), "a line without its LF");
    }
    assert!(lines.last().unwrap().starts_with(b"status "));
    if reply.data.is_some() {
        assert!(lines[0].starts_with(b"data "));
    }
    let parsed = Reply::parse(&bytes).expect("an encoded reply parses");
    assert_eq!(parsed.to_bytes(), bytes, "re-encoding changed the reply");
    let natural = reply.data.as_ref().map_or(0, |d| "data \n".len() + d.len())
        + format!("status error 400 {}\n", reply.text).len()
        - if reply.is_ok() { 3 } else { 0 }; // "ok 200" is 3 bytes shorter than "error 400"
    let fits = natural <= MAX_REPLY_BYTES;
    if fits && reply.data.as_deref().is_none_or(printable) && printable(&reply.text) {
        assert_eq!(parsed, reply);
    }
}

fn check_domain(rest: &[u8]) {
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(domain) = normalize(text) else {
        return;
    };
    let shown = domain.to_string();
    assert_eq!(
        normalize(&shown).as_ref(),
        Ok(&domain),
        "{text:?} normalised to {shown:?}, which does not normalise to itself"
    );
    assert!(
        !shown.is_empty() && shown.bytes().all(|b| b.is_ascii_graphic()),
        "{shown:?} is not a legal request value"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_request(rest),
        1 => check_reply(rest),
        _ => check_domain(rest),
    }
});
