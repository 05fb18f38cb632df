//! Property tests of the wire types and of the server's replies (protocol.md §3, §4, §6).
//!
//! - every request the parser accepts renders to a line that parses to the same request;
//! - domain normalisation is idempotent;
//! - no reply is longer than 1000 bytes or carries a newline anywhere but at a line end:
//!   for the pure encoder over arbitrary replies (many cases), and for the real server over
//!   TCP (fewer cases: each is a connection).

mod support;

use certline::domain::normalize;
use certline::protocol::{ErrorCode, MAX_REPLY_BYTES, Reply, Request, parse_request};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use std::net::SocketAddr;
use support::client::{self, PATIENCE};
use support::server::InProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Strategies

/// Whitespace between tokens: one or more spaces and tabs.
fn gap() -> impl Strategy<Value = String> {
    "[ \t]{1,3}"
}

/// A value token: anything but space, tab and control characters (protocol.md §3).
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9.@:/*_-]{1,40}",
        "[^ \t\\p{Cc}]{1,20}",
        Just("28a7e10-1fea-4c2b-9d11".to_owned()),
    ]
}

/// `word` with the letters that `mask` marks in upper case.
fn with_case(word: &str, mask: &[bool]) -> String {
    word.chars()
        .zip(mask.iter().cycle())
        .map(|(c, &upper)| if upper { c.to_ascii_uppercase() } else { c })
        .collect()
}

/// A well-formed request and a line for it: keys in any order and case, command names in
/// any case, extra unknown keys, irregular whitespace.
fn request_line() -> impl Strategy<Value = (Request, String)> {
    (
        0..8usize,
        (value(), value(), proptest::option::of(value())),
        proptest::collection::vec(("x[a-z0-9_-]{0,6}", value()), 0..3),
        proptest::collection::vec(any::<bool>(), 2..8),
        any::<u64>(),
        proptest::collection::vec(gap(), 1..4),
        ("[ \t]{0,2}", "[ \t]{0,2}"),
    )
        .prop_map(
            |(cmd, (a, b, opt), extra, mask, seed, gaps, (lead, trail))| {
                let (name, request, mut pairs) = match cmd {
                    0 => (
                        "apikey",
                        Request::Apikey { email: opt.clone() },
                        opt.map(|e| vec![("email", e)]).unwrap_or_default(),
                    ),
                    1 => (
                        "claim",
                        Request::Claim {
                            apikey: a.clone(),
                            email: b.clone(),
                        },
                        vec![("apikey", a), ("email", b)],
                    ),
                    2 => (
                        "add",
                        Request::Add {
                            apikey: a.clone(),
                            domain: b.clone(),
                        },
                        vec![("apikey", a), ("domain", b)],
                    ),
                    3 => (
                        "status",
                        Request::Status {
                            apikey: a.clone(),
                            domain: b.clone(),
                        },
                        vec![("apikey", a), ("domain", b)],
                    ),
                    4 => {
                        let mut pairs = vec![("apikey", a.clone())];
                        pairs.extend(opt.clone().map(|o| ("offset", o)));
                        (
                            "list",
                            Request::List {
                                apikey: a,
                                offset: opt,
                            },
                            pairs,
                        )
                    }
                    5 => (
                        "remove",
                        Request::Remove {
                            apikey: a.clone(),
                            domain: b.clone(),
                        },
                        vec![("apikey", a), ("domain", b)],
                    ),
                    6 => (
                        "acme",
                        Request::Acme { apikey: a.clone() },
                        vec![("apikey", a)],
                    ),
                    _ => ("ping", Request::Ping, vec![]),
                };
                pairs.push(("command", with_case(name, &mask)));
                let mut tokens: Vec<(String, String)> = pairs
                    .into_iter()
                    .map(|(k, v)| (with_case(k, &mask[1..]), v))
                    .collect();
                // Unknown keys may not repeat (that is a 400).
                for (k, v) in extra {
                    if !tokens.iter().any(|(t, _)| t.eq_ignore_ascii_case(&k)) {
                        tokens.push((k, v));
                    }
                }
                // A deterministic shuffle: order does not matter.
                let mut s = seed | 1;
                for i in (1..tokens.len()).rev() {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    tokens.swap(i, (s % (i as u64 + 1)) as usize);
                }
                let mut gaps = gaps.iter().cycle();
                let mut line = lead;
                for (i, (k, v)) in tokens.iter().enumerate() {
                    if i > 0 {
                        line.push_str(gaps.next().unwrap());
                    }
                    line.push_str(k);
                    line.push_str(gaps.next().unwrap());
                    line.push_str(v);
                }
                line.push_str(&trail);
                (request, line)
            },
        )
}

/// Domain-like text: schemes, wildcards, Unicode labels, ports, trailing dots, IP literals,
/// and junk.
fn domain_like() -> impl Strategy<Value = String> {
    let label = prop_oneof![
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?",
        "[a-zà-ÿß-]{1,8}",
        "(bücher|日本|ΑΒΓ|ｅｘａｍｐｌｅ|xn--bcher-kva|xn--|-a|a-|_a)",
    ];
    let host = prop_oneof![
        4 => proptest::collection::vec(label, 1..5).prop_map(|l| l.join(".")),
        1 => any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
        1 => "[ -~]{0,20}",
    ];
    (
        "(|http://|https://|HTTPS://|hTtP://)",
        "(|\\*\\.)",
        host,
        "(|\\.)",
        prop_oneof![
            Just(String::new()),
            (0u32..70000).prop_map(|p| format!(":{p}"))
        ],
        "(|/)",
    )
        .prop_map(|(scheme, wild, host, dot, port, slash)| {
            format!("{scheme}{wild}{host}{dot}{port}{slash}")
        })
}

fn error_code() -> impl Strategy<Value = Option<ErrorCode>> {
    use ErrorCode::*;
    proptest::option::of(proptest::sample::select(vec![
        BadRequest,
        UnknownKey,
        Forbidden,
        NotFound,
        InvalidDomain,
        Conflict,
        TooLong,
        InvalidField,
        TooManyRequests,
        Internal,
        Unavailable,
    ]))
}

/// Arbitrary replies, including over-long and non-ASCII fields no server code produces.
fn any_reply() -> impl Strategy<Value = Reply> {
    let text = prop_oneof![
        "[ -~]{0,40}",
        "\\PC{0,200}",
        ".{0,1100}",
        "[ -~\n\r]{990,1010}",
    ];
    (proptest::option::of(text.clone()), error_code(), text).prop_map(|(data, error, text)| Reply {
        data,
        error,
        text: text.into(),
    })
}

// ---------------------------------------------------------------------------------------
// Checks

/// The wire shape of one reply: at most 1000 bytes, printable ASCII, one LF at the end of
/// each of its one or two lines, the last line a status line. Returns the parsed reply.
fn check_reply_bytes(bytes: &[u8]) -> Result<Reply, TestCaseError> {
    prop_assert!(
        bytes.len() <= MAX_REPLY_BYTES,
        "reply of {} bytes",
        bytes.len()
    );
    prop_assert!(
        bytes
            .iter()
            .all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)),
        "non-printable byte in {:?}",
        String::from_utf8_lossy(bytes)
    );
    prop_assert!(bytes.ends_with(b"\n"), "no final LF: {bytes:?}");
    let lines: Vec<&[u8]> = bytes[..bytes.len() - 1].split(|&b| b == b'\n').collect();
    prop_assert!(
        lines.len() == 1 || (lines.len() == 2 && lines[0].starts_with(b"data ")),
        "stray newline in {:?}",
        String::from_utf8_lossy(bytes)
    );
    prop_assert!(lines.last().unwrap().starts_with(b"status "));
    Reply::parse(bytes).map_err(|e| TestCaseError::fail(format!("{e}: {bytes:?}")))
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn well_formed_lines_parse_to_their_request_and_render_back((request, line) in request_line()) {
        let parsed = parse_request(line.as_bytes());
        prop_assert_eq!(parsed.as_ref(), Ok(&request), "line {:?}", line);
        let rendered = request.to_string();
        prop_assert_eq!(parse_request(rendered.as_bytes()), Ok(request));
    }

    #[test]
    fn any_accepted_line_renders_and_reparses_to_the_same_request(
        line in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            "[ \t]*(command|COMMAND|apikey|email|domain|offset|x)[ \t]+[^ \t]{1,12}([ \t]+[^ \t]{1,12}){0,7}[ \t]*"
                .prop_map(String::into_bytes),
        ]
    ) {
        if let Ok(request) = parse_request(&line) {
            let rendered = request.to_string();
            prop_assert_eq!(parse_request(rendered.as_bytes()), Ok(request));
        }
    }

    #[test]
    fn domain_normalisation_is_idempotent(input in domain_like()) {
        if let Ok(domain) = normalize(&input) {
            let shown = domain.to_string();
            let again = normalize(&shown);
            prop_assert_eq!(again, Ok(domain), "{:?} -> {:?}", input, shown);
            prop_assert!(shown.bytes().all(|b| b.is_ascii_graphic()), "{:?}", shown);
        }
    }

    #[test]
    fn plain_host_names_are_accepted_and_lower_cased(
        labels in proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 1..5)
    ) {
        // A label starting `xn--` claims to be punycode, and most such strings are not valid
        // punycode: refusing them is right, so they are outside this property (the
        // idempotence property above covers them).
        prop_assume!(labels.iter().all(|l| !l.to_ascii_lowercase().starts_with("xn--")));
        let name = labels.join(".");
        let domain = normalize(&name).map_err(|_| TestCaseError::fail(format!("{name:?} refused")))?;
        prop_assert_eq!(domain.to_string(), name.to_ascii_lowercase());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn every_encoded_reply_fits_and_has_no_stray_newline(reply in any_reply()) {
        let bytes = reply.to_bytes();
        let parsed = check_reply_bytes(&bytes)?;
        prop_assert_eq!(parsed.data.is_some(), reply.data.is_some());
        prop_assert_eq!(parsed.error, reply.error);
        prop_assert_eq!(&parsed.to_bytes()[..], &bytes[..], "re-encoding changed the reply");
        let natural = reply.data.as_ref().map_or(0, |d| 6 + d.len())
            + format!("status error 400 {}\n", reply.text).len();
        if natural <= MAX_REPLY_BYTES - 3
            && reply.data.as_deref().is_none_or(printable)
            && printable(&reply.text)
        {
            prop_assert_eq!(parsed, reply);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Through the server

/// A request line for the server: mostly requests that reach every command's checks, with
/// the known key (so `add`, `list` and `status` build data lines) and long values, plus junk.
fn server_line(key: String) -> impl Strategy<Value = Vec<u8>> {
    let apikey = prop_oneof![
        3 => Just(key),
        1 => value(),
        1 => "[a-f0-9-]{16,64}",
    ];
    let field = prop_oneof![
        domain_like(),
        value(),
        "[a-z]{60,63}(\\.[a-z]{60,63}){2}\\.[a-z]{2,10}(:[0-9]{1,5})?",
        "[0-9]{1,12}",
        "[^ \t\\p{Cc}]{100,300}",
    ];
    let command = prop_oneof![
        "add", "list", "status", "remove", "claim", "apikey", "ping", "fly", "LiSt",
    ];
    let structured = (
        command,
        apikey,
        field.clone(),
        field,
        proptest::option::of("[a-z]{1,8}"),
    )
        .prop_map(|(command, apikey, d, o, extra)| {
            let mut line = format!("command {command} apikey {apikey} domain {d} offset {o}");
            if let Some(extra) = extra {
                line.push(' ');
                line.push_str(&extra);
            }
            line.into_bytes()
        });
    prop_oneof![
        4 => structured,
        1 => proptest::collection::vec(any::<u8>().prop_filter("no LF", |&b| b != b'\n'), 0..1200),
        1 => "[ \t\r]{0,5}".prop_map(String::into_bytes),
    ]
}

/// Sends `line` + LF on a fresh connection, half-closes, and returns everything the server
/// sent before closing.
async fn exchange(addr: SocketAddr, line: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    stream.write_all(&bytes).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut reply))
        .await
        .expect("the server closes after EOF")
        .expect("read");
    reply
}

#[test]
fn no_line_makes_the_server_reply_over_1000_bytes_or_with_a_stray_newline() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, key) = rt.block_on(async {
        let server = InProcess::start().await;
        let key = client::new_key(server.addr).await;
        // Enough long domains that `list` pages are full and `next=` appears.
        for i in 0..40 {
            let domain = format!("{i:02}{}.example.org", "a".repeat(60));
            let reply = client::call(
                server.addr,
                &format!("command add apikey {key} domain {domain}"),
            )
            .await;
            assert!(reply.is_ok(), "{reply:?}");
        }
        (server, key)
    });
    let addr = server.addr;
    let mut runner = TestRunner::new(ProptestConfig::with_cases(300));
    runner
        .run(&server_line(key.clone()), |line| {
            let reply = rt.block_on(exchange(addr, &line));
            let too_long = line.len() > 1024;
            let blank = line.iter().all(|b| b" \t\r".contains(b));
            if blank && !too_long {
                prop_assert!(reply.is_empty(), "a blank line got {reply:?}");
                return Ok(());
            }
            let parsed = check_reply_bytes(&reply)?;
            if too_long {
                prop_assert_eq!(parsed, Reply::error(ErrorCode::TooLong, "request too long"));
            }
            Ok(())
        })
        .unwrap();
    // The known key's full pages were exercised: `list` shows `next=` and fits.
    rt.block_on(async {
        let reply = client::call(addr, &format!("command list apikey {key}")).await;
        let data = reply.data.clone().expect("list has data");
        assert!(
            data.contains(" next="),
            "40 long domains should not fit on one page: {data}"
        );
        assert!(reply.to_bytes().len() <= MAX_REPLY_BYTES);
        server.stop().await;
    });
}
