//! Wire formats the load generator speaks: certline's line protocol (see `protocol.md`) and
//! Redis's RESP.
//!
//! Both parsers are incremental: they look at what has been read so far and either return a
//! complete reply with the number of bytes it used, or `Ok(None)` when more bytes are needed.
//! Its unit tests are in `proto_tests.rs`, a test target of its own, because the bench has no
//! test harness and `cargo test` would not run tests kept inside it.

use std::fmt;

/// A reply that could not be understood: the server (or the load generator) is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtoError {}

/// What an incremental parser returns: a complete value and the bytes it used, or `None` when
/// more bytes are needed.
pub type Parsed<T> = Result<Option<(T, usize)>, ProtoError>;

/// One certline reply: an optional `data` line and the `status` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertlineReply {
    pub data: Option<String>,
    /// The status code: 200 for `status ok 200 ...`, else the code of `status error CODE ...`.
    pub code: u16,
    pub text: String,
}

impl CertlineReply {
    pub fn is_ok(&self) -> bool {
        self.code == 200
    }
}

/// Parses one certline reply from the front of `buf`.
///
/// ```abnf
/// reply       = [ data-line ] status-line
/// data-line   = "data" SP data LF
/// status-line = "status" SP ( "ok" SP "200" / "error" SP code ) SP text LF
/// ```
///
/// The text after the code is optional here, so that `status ok 200` alone is accepted.
pub fn parse_certline_reply(buf: &[u8]) -> Parsed<CertlineReply> {
    let mut pos = 0;
    let mut data = None;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + nl])
            .map_err(|_| ProtoError("reply line is not UTF-8".into()))?;
        let next = pos + nl + 1;
        if let Some(rest) = line.strip_prefix("data ") {
            if data.is_some() {
                return Err(ProtoError(format!("two data lines in one reply: {line:?}")));
            }
            data = Some(rest.to_string());
            pos = next;
            continue;
        }
        let Some(rest) = line.strip_prefix("status ") else {
            return Err(ProtoError(format!("unexpected reply line {line:?}")));
        };
        let mut words = rest.splitn(3, ' ');
        let word = words.next().unwrap_or_default();
        let code: u16 = words
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ProtoError(format!("status line without a code: {line:?}")))?;
        let text = words.next().unwrap_or_default().to_string();
        match (word, code) {
            ("ok", 200) => {}
            ("error", c) if (100..=999).contains(&c) && c != 200 => {}
            _ => return Err(ProtoError(format!("malformed status line {line:?}"))),
        }
        return Ok(Some((CertlineReply { data, code, text }, next)));
    }
}

/// A RESP (REdis Serialization Protocol, version 2) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array `*-1`.
    Array(Option<Vec<Resp>>),
}

/// Parses one RESP value from the front of `buf`.
pub fn parse_resp(buf: &[u8]) -> Parsed<Resp> {
    let Some((&kind, _)) = buf.split_first() else {
        return Ok(None);
    };
    let Some(end) = find_crlf(buf) else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end])
        .map_err(|_| ProtoError("RESP header is not UTF-8".into()))?;
    let after = end + 2;
    let int = || {
        line.parse::<i64>()
            .map_err(|_| ProtoError(format!("bad RESP integer {line:?}")))
    };
    match kind {
        b'+' => Ok(Some((Resp::Simple(line.to_string()), after))),
        b'-' => Ok(Some((Resp::Error(line.to_string()), after))),
        b':' => Ok(Some((Resp::Integer(int()?), after))),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let len = len as usize;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(ProtoError("bulk string not ended by CRLF".into()));
            }
            let body = buf[after..after + len].to_vec();
            Ok(Some((Resp::Bulk(Some(body)), after + len + 2)))
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Resp::Array(None), after)));
            }
            let mut items = Vec::with_capacity(n.min(1024) as usize);
            let mut pos = after;
            for _ in 0..n {
                match parse_resp(&buf[pos..])? {
                    Some((item, used)) => {
                        items.push(item);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(Some(items)), pos)))
        }
        other => Err(ProtoError(format!("unknown RESP type byte {other:#04x}"))),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Encodes a command as a RESP array of bulk strings, as redis-cli sends it.
pub fn encode_resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}
