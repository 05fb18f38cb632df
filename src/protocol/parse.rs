//! The request grammar (protocol.md §3): a line of whitespace-separated key/value pairs.
//!
//! ```abnf
//! request     = *WSP pair *( 1*WSP pair ) *WSP
//! pair        = key 1*WSP value
//! key         = 1*( ALPHA / DIGIT / "_" / "-" )        ; case-insensitive
//! value       = 1*( %x21-7E / UTF8-NONASCII )          ; no space, no control character
//! WSP         = SP / HTAB
//! ```
//!
//! Parsing happens in two steps, like imap-codec separates lexing from meaning: the line is
//! split into tokens at spaces and tabs, then [`parse_request`] pairs them up and builds a
//! typed [`Request`]. Values stay strings here; whether an e-mail or a domain is *valid* is the
//! service's concern (422/406), while everything here is a malformed line (400) or an unknown
//! command (404).
//!
//! This runs once per request, so it borrows from the line until the end: the pairs live on
//! the stack, keys are compared ignoring ASCII case instead of being lower-cased copies, and
//! the only allocations are the values the [`Request`] owns.
//!
//! Tolerated client quirks, each tested below: keys in any order and any case, command names in
//! any case, unknown keys (ignored), tabs and repeated spaces, leading/trailing whitespace.

use std::fmt;
use thiserror::Error;

/// A well-formed request. Field values are exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `command apikey [email E]`: mint a key, optionally claiming it at once.
    Apikey { email: Option<String> },
    /// `command claim apikey K email E`.
    Claim { apikey: String, email: String },
    /// `command add apikey K domain D`.
    Add { apikey: String, domain: String },
    /// `command status apikey K domain D`.
    Status { apikey: String, domain: String },
    /// `command list apikey K [offset N]`.
    List {
        apikey: String,
        offset: Option<String>,
    },
    /// `command remove apikey K domain D`.
    Remove { apikey: String, domain: String },
    /// `command ping`.
    Ping,
}

/// Why a line is not a request. Each maps to one wire code and text (protocol.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("invalid byte in request")]
    InvalidByte,
    #[error("invalid key {0}")]
    InvalidKey(String),
    #[error("missing value for key {0}")]
    MissingValue(String),
    #[error("repeated key {0}")]
    RepeatedKey(String),
    #[error("missing command")]
    MissingCommand,
    #[error("missing key {0}")]
    MissingKey(&'static str),
    #[error("unknown command {0}")]
    UnknownCommand(String),
}

impl ParseError {
    /// The wire status code: 404 for an unknown command, 400 for everything else.
    pub fn code(&self) -> u16 {
        match self {
            ParseError::UnknownCommand(_) => 404,
            _ => 400,
        }
    }
}

/// The longest piece of client input echoed back in an error text. Echoing helps a person
/// see *which* key was wrong; bounding it keeps every reply far below 1000 bytes.
const MAX_ECHO: usize = 40;

/// Client input made safe to echo: at most [`MAX_ECHO`] characters of printable ASCII.
fn echo(s: &str) -> String {
    s.chars()
        .take(MAX_ECHO)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The whitespace-separated tokens of a line (protocol.md §3: `WSP = SP / HTAB`).
fn tokens(line: &str) -> impl Iterator<Item = &str> {
    line.split([' ', '\t']).filter(|t| !t.is_empty())
}

fn is_key(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Control characters (C0, DEL, C1) have no business in a request; rejecting them here keeps
/// them out of every store record, log line and reply.
fn has_control(line: &str) -> bool {
    // C0 and DEL are single bytes; C1 (U+0080–U+009F) is `0xC2 0x80..=0x9F` in UTF-8, so
    // a byte scan finds every one without decoding characters.
    let bytes = line.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        (b < 0x20 && b != b'\t')
            || b == 0x7f
            || (b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
    })
}

/// The key/value pairs of a line, in order, borrowed from it. Keys keep the client's case and
/// are compared ignoring ASCII case.
struct Pairs<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Pairs<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|&(_, v)| v)
    }

    fn take(&self, key: &str) -> Option<String> {
        self.get(key).map(str::to_owned)
    }

    fn require(&self, key: &'static str) -> Result<String, ParseError> {
        self.take(key).ok_or(ParseError::MissingKey(key))
    }
}

/// Is this line blank (nothing but spaces, tabs and CRs, protocol.md §2)? Blank lines get no
/// reply. The framer drops only the CR right before an LF, so `\r\r\n` or ` \r \n` reach
/// here with a CR left in them.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| b == b' ' || b == b'\t' || b == b'\r')
}

/// Parses one request line (without its LF).
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidByte)?;
    if has_control(line) {
        return Err(ParseError::InvalidByte);
    }
    let mut pairs = Pairs {
        pairs: Vec::with_capacity(4),
    };
    let mut tokens = tokens(line);
    while let Some(key) = tokens.next() {
        if !is_key(key) {
            return Err(ParseError::InvalidKey(echo(key)));
        }
        let Some(value) = tokens.next() else {
            return Err(ParseError::MissingValue(echo(key)));
        };
        if pairs.get(key).is_some() {
            return Err(ParseError::RepeatedKey(echo(&key.to_ascii_lowercase())));
        }
        pairs.pairs.push((key, value));
    }
    let command = pairs.get("command").ok_or(ParseError::MissingCommand)?;
    let is = |name: &str| command.eq_ignore_ascii_case(name);
    let request = if is("add") {
        Request::Add {
            apikey: pairs.require("apikey")?,
            domain: pairs.require("domain")?,
        }
    } else if is("status") {
        Request::Status {
            apikey: pairs.require("apikey")?,
            domain: pairs.require("domain")?,
        }
    } else if is("apikey") {
        Request::Apikey {
            email: pairs.take("email"),
        }
    } else if is("claim") {
        Request::Claim {
            apikey: pairs.require("apikey")?,
            email: pairs.require("email")?,
        }
    } else if is("list") {
        Request::List {
            apikey: pairs.require("apikey")?,
            offset: pairs.take("offset"),
        }
    } else if is("remove") {
        Request::Remove {
            apikey: pairs.require("apikey")?,
            domain: pairs.require("domain")?,
        }
    } else if is("ping") {
        Request::Ping
    } else {
        return Err(ParseError::UnknownCommand(echo(command)));
    };
    Ok(request)
}

impl Request {
    /// The command's name as it appears on the wire; used in logs and metrics.
    pub fn command_name(&self) -> &'static str {
        match self {
            Request::Apikey { .. } => "apikey",
            Request::Claim { .. } => "claim",
            Request::Add { .. } => "add",
            Request::Status { .. } => "status",
            Request::List { .. } => "list",
            Request::Remove { .. } => "remove",
            Request::Ping => "ping",
        }
    }
}

/// Renders the canonical line for a request (no LF): what a well-behaved client sends.
/// `parse_request(render(r)) == r` for every request the parser accepts (property-tested).
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command {}", self.command_name())?;
        match self {
            Request::Apikey { email } => {
                if let Some(email) = email {
                    write!(f, " email {email}")?;
                }
            }
            Request::Claim { apikey, email } => write!(f, " apikey {apikey} email {email}")?,
            Request::Add { apikey, domain }
            | Request::Status { apikey, domain }
            | Request::Remove { apikey, domain } => write!(f, " apikey {apikey} domain {domain}")?,
            Request::List { apikey, offset } => {
                write!(f, " apikey {apikey}")?;
                if let Some(offset) = offset {
                    write!(f, " offset {offset}")?;
                }
            }
            Request::Ping => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a CR that the framer did not strip (`\r\r\n`) made a blank line a 400,
    /// though protocol.md §2 says lines of spaces, tabs or CR are ignored. Found by the
    /// server property test in tests/properties.rs.
    #[test]
    fn lines_of_spaces_tabs_and_crs_are_blank() {
        for blank in ["", " ", "\t", "\r", "\r\r", " \r\t\r "] {
            assert!(is_blank(blank.as_bytes()), "{blank:?}");
        }
        for not_blank in ["x", " \0", "\r\n", "\x0b", "\u{a0}"] {
            assert!(!is_blank(not_blank.as_bytes()), "{not_blank:?}");
        }
    }

    fn parse(s: &str) -> Result<Request, ParseError> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn keychest_examples_parse_in_any_order() {
        let expected = Request::Add {
            apikey: "28a7e10-1fea".into(),
            domain: "keychest.net".into(),
        };
        assert_eq!(
            parse("command add domain keychest.net apikey 28a7e10-1fea"),
            Ok(expected.clone())
        );
        assert_eq!(
            parse("command add apikey 28a7e10-1fea domain keychest.net"),
            Ok(expected)
        );
        assert_eq!(parse("command apikey"), Ok(Request::Apikey { email: None }));
    }

    #[test]
    fn keys_and_command_names_are_case_insensitive_values_are_not() {
        assert_eq!(
            parse("COMMAND Claim APIKEY AbC-0123456789abcdef Email X@Y.org"),
            Ok(Request::Claim {
                apikey: "AbC-0123456789abcdef".into(),
                email: "X@Y.org".into()
            })
        );
    }

    #[test]
    fn whitespace_quirks_and_unknown_keys_are_tolerated() {
        assert_eq!(parse("  command\tping   extra 1 "), Ok(Request::Ping));
    }

    #[test]
    fn malformed_lines_are_400_with_a_precise_text() {
        assert_eq!(
            parse("command add domain"),
            Err(ParseError::MissingValue("domain".into()))
        );
        assert_eq!(
            parse("command ping Command ping"),
            Err(ParseError::RepeatedKey("command".into()))
        );
        assert_eq!(parse("domain example.org"), Err(ParseError::MissingCommand));
        assert_eq!(
            parse("command add domain x.org"),
            Err(ParseError::MissingKey("apikey"))
        );
        assert_eq!(parse("command ping\0"), Err(ParseError::InvalidByte));
        assert_eq!(parse_request(b"command \xff"), Err(ParseError::InvalidByte));
        assert_eq!(
            parse("command ping a.b c"),
            Err(ParseError::InvalidKey("a.b".into()))
        );
        assert_eq!(parse(""), Err(ParseError::MissingCommand));
        assert!(
            parse("command add domain x.org")
                .unwrap_err()
                .code()
                .eq(&400)
        );
    }

    #[test]
    fn unknown_command_is_404_and_its_echo_is_bounded_and_printable() {
        let long = "é".repeat(500);
        let err = parse(&format!("command {long}")).unwrap_err();
        assert_eq!(err.code(), 404);
        assert_eq!(
            err.to_string(),
            format!("unknown command {}", "?".repeat(40))
        );
    }

    #[test]
    fn utf8_values_are_accepted() {
        assert_eq!(
            parse("command add apikey k domain bücher.example"),
            Ok(Request::Add {
                apikey: "k".into(),
                domain: "bücher.example".into()
            })
        );
    }

    #[test]
    fn rendering_round_trips() {
        for line in [
            "command apikey",
            "command apikey email a@b.org",
            "command list apikey k offset 3",
            "command list apikey k",
            "command remove apikey k domain d",
            "command ping",
        ] {
            let r = parse(line).unwrap();
            assert_eq!(r.to_string(), line);
            assert_eq!(parse(&r.to_string()), Ok(r));
        }
    }
}
