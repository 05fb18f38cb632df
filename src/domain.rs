//! Domain-name normalisation and validation (protocol.md §6), following KeyChest's
//! `servers/add` rules so that what a host sends is stored once, in one spelling.
//!
//! `normalize(normalize(x)) == normalize(x)` for every accepted input (property-tested).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use thiserror::Error;

/// The port a domain has when none is given: TLS's.
pub const DEFAULT_PORT: u16 = 443;
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A normalised domain: an A-label host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain {
    host: String,
    port: u16,
}

/// The input is not a domain certline can register (`406 invalid domain`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid domain")]
pub struct InvalidDomain;

impl Domain {
    /// The host part: lower-case A-labels, an IPv4 address, or a bracketed IPv6 address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (443 unless one was given).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Is the host an IP literal rather than a name? IP literals are never forwarded to
    /// Sectigo, which validates names.
    pub fn is_ip(&self) -> bool {
        self.host.starts_with('[') || Ipv4Addr::from_str(&self.host).is_ok()
    }
}

/// `host`, or `host:port` when the port is not 443: the form stored, listed and returned.
impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == DEFAULT_PORT {
            f.write_str(&self.host)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Domain {
    type Err = InvalidDomain;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        normalize(s)
    }
}

/// Normalises a domain as a client sent it. See protocol.md §6 for the steps.
pub fn normalize(input: &str) -> Result<Domain, InvalidDomain> {
    let mut s = input.trim();
    for scheme in ["https://", "http://"] {
        // `get`, not indexing: the input is arbitrary UTF-8, and a byte count may end inside
        // a character (`http://ß` once panicked here).
        if s.get(..scheme.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
        {
            s = &s[scheme.len()..];
            break;
        }
    }
    s = s.strip_suffix('/').unwrap_or(s);
    let (host, port) = split_port(s)?;
    if let Some(v6) = host.strip_prefix('[') {
        let addr = v6
            .strip_suffix(']')
            .and_then(|a| Ipv6Addr::from_str(a).ok())
            .ok_or(InvalidDomain)?;
        return Ok(Domain {
            host: format!("[{addr}]"),
            port,
        });
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host.strip_prefix("*.").unwrap_or(host);
    if let Ok(v4) = Ipv4Addr::from_str(host) {
        return Ok(Domain {
            host: v4.to_string(),
            port,
        });
    }
    let ascii = idna::domain_to_ascii(host).map_err(|_| InvalidDomain)?;
    if !is_host_name(&ascii) {
        return Err(InvalidDomain);
    }
    Ok(Domain { host: ascii, port })
}

/// Splits an optional `:port`. A bracketed IPv6 literal keeps its inner colons.
fn split_port(s: &str) -> Result<(&str, u16), InvalidDomain> {
    let colon = if s.starts_with('[') {
        match s.find(']') {
            Some(end) if end + 1 < s.len() => Some(end + 1),
            _ => None,
        }
    } else {
        s.rfind(':')
    };
    let Some(colon) = colon else {
        return Ok((s, DEFAULT_PORT));
    };
    // After `[…]` anything but `:` is invalid. Checked before slicing: `colon + 1` is a
    // character boundary only if the byte at `colon` is the ASCII `:` (`[::1]ü` once
    // panicked here).
    if s.as_bytes()[colon] != b':' {
        return Err(InvalidDomain);
    }
    let (host, port) = (&s[..colon], &s[colon + 1..]);
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidDomain);
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(InvalidDomain),
    }
}

/// Letters, digits and inner hyphens per label (KeyChest's `[a-z\d](-*[a-z\d])*`), labels of
/// 1–63 characters, at most 253 in all. Underscores are refused: no certificate can name them.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_LABEL
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<String, InvalidDomain> {
        normalize(s).map(|d| d.to_string())
    }

    #[test]
    fn normalises_case_dots_wildcards_schemes_and_ports() {
        assert_eq!(n(" WWW.Example.ORG. ").unwrap(), "www.example.org");
        assert_eq!(n("*.example.org").unwrap(), "example.org");
        assert_eq!(
            n("https://www.example.org:443/").unwrap(),
            "www.example.org"
        );
        assert_eq!(
            n("HTTP://www.example.org:8443").unwrap(),
            "www.example.org:8443"
        );
        assert_eq!(n("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(
            n("*.BÜCHER.example:8443").unwrap(),
            "xn--bcher-kva.example:8443"
        );
        assert_eq!(n("192.0.2.1:8443").unwrap(), "192.0.2.1:8443");
        assert_eq!(n("[2001:DB8::0:1]").unwrap(), "[2001:db8::1]");
        assert_eq!(n("[2001:db8::1]:8443").unwrap(), "[2001:db8::1]:8443");
        assert_eq!(n("localhost").unwrap(), "localhost");
    }

    #[test]
    fn refuses_what_is_not_a_host() {
        for bad in [
            "",
            "*",
            "exa_mple.org",
            "a..b",
            ".example.org",
            "-a.example.org",
            "a-.example.org",
            "example.org:0",
            "example.org:65536",
            "example.org:",
            "example.org:+1",
            "2001:db8::1",
            "[2001:db8::1",
            "[zz]",
            "www.example.org/path",
            "xn--0.example.org",
            "a b.org",
            &format!("{}.org", "a".repeat(64)),
            &format!("{}.org", "a.".repeat(126)),
        ] {
            assert_eq!(n(bad), Err(InvalidDomain), "{bad:?}");
        }
    }

    /// Regression: a multi-byte character where a scheme prefix would end made `normalize`
    /// panic (slicing inside a character), which killed the connection without a reply.
    /// Found by the `round_trip` fuzz target and the domain property test.
    #[test]
    fn a_character_across_the_scheme_prefix_boundary_is_not_a_panic() {
        assert_eq!(n("http://ß"), n("ß"));
        assert_eq!(n("HTTPS://ß.example"), n("ß.example"));
        assert_eq!(n("httpsßß").unwrap(), "xn--https-pqaa");
        assert_eq!(n("http:/ü"), Err(InvalidDomain));
        assert_eq!(
            n("'\u{2}.`\tbücher.mwww.example.org2222"),
            Err(InvalidDomain)
        );
    }

    /// Regression: a multi-byte character right after a bracketed IPv6 literal made
    /// `split_port` slice inside it (a panic that killed the connection). Found by the
    /// `round_trip` fuzz target.
    #[test]
    fn a_character_after_an_ipv6_literal_is_invalid_not_a_panic() {
        for bad in [
            "[::1]ü",
            "[::ffff:192.0.2.1]üch)r/G E\u{1}x",
            "[2001:db8::1]ß:443",
            "[::1]é1",
        ] {
            assert_eq!(n(bad), Err(InvalidDomain), "{bad:?}");
        }
        assert_eq!(n("[::1]:8443").unwrap(), "[::1]:8443");
    }

    #[test]
    fn longest_legal_names_are_accepted() {
        let label = "a".repeat(63);
        assert!(n(&format!("{label}.org")).is_ok());
        let name = format!("{}.{}.{}.{}", label, label, label, "a".repeat(61));
        assert_eq!(name.len(), 253);
        assert!(n(&name).is_ok());
    }

    #[test]
    fn is_idempotent_on_examples() {
        for s in [
            "WWW.Example.org.",
            "*.bücher.example:8443",
            "[::1]:1",
            "10.0.0.1",
        ] {
            let once = n(s).unwrap();
            assert_eq!(n(&once).unwrap(), once);
        }
    }
}
