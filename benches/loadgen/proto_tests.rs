//! Unit tests of the load generator's reply parsers (`proto.rs`), run by `cargo test`.

#[path = "proto.rs"]
mod proto;

use proto::*;

#[test]
fn certline_reply_with_data_line() {
    let buf = b"data www.example.org\nstatus ok 200 domain added\nrest";
    let (reply, used) = parse_certline_reply(buf).unwrap().unwrap();
    assert_eq!(reply.data.as_deref(), Some("www.example.org"));
    assert_eq!(reply.code, 200);
    assert_eq!(reply.text, "domain added");
    assert!(reply.is_ok());
    assert_eq!(&buf[used..], b"rest");
}

#[test]
fn certline_error_reply_without_data() {
    let buf = b"status error 429 too many requests\n";
    let (reply, used) = parse_certline_reply(buf).unwrap().unwrap();
    assert_eq!(reply.data, None);
    assert_eq!(reply.code, 429);
    assert_eq!(reply.text, "too many requests");
    assert!(!reply.is_ok());
    assert_eq!(used, buf.len());
}

#[test]
fn certline_incomplete_reply_needs_more() {
    assert_eq!(parse_certline_reply(b"").unwrap(), None);
    assert_eq!(parse_certline_reply(b"data x\n").unwrap(), None);
    assert_eq!(parse_certline_reply(b"data x\nstatus ok 2").unwrap(), None);
}

#[test]
fn certline_garbage_is_an_error() {
    assert!(parse_certline_reply(b"hello\n").is_err());
    assert!(parse_certline_reply(b"status ok 500 nope\n").is_err());
    assert!(parse_certline_reply(b"status error 200 nope\n").is_err());
    assert!(parse_certline_reply(b"status maybe\n").is_err());
    assert!(parse_certline_reply(b"data a\ndata b\nstatus ok 200 x\n").is_err());
}

#[test]
fn certline_two_replies_back_to_back() {
    let buf = b"status ok 200 pong\nstatus ok 200 pong\n";
    let (_, used) = parse_certline_reply(buf).unwrap().unwrap();
    let (reply, used2) = parse_certline_reply(&buf[used..]).unwrap().unwrap();
    assert_eq!(reply.text, "pong");
    assert_eq!(used + used2, buf.len());
}

#[test]
fn resp_scalars() {
    assert_eq!(parse_resp(b":1\r\n").unwrap(), Some((Resp::Integer(1), 4)));
    assert_eq!(
        parse_resp(b":-12\r\nxx").unwrap(),
        Some((Resp::Integer(-12), 6))
    );
    assert_eq!(
        parse_resp(b"+PONG\r\n").unwrap(),
        Some((Resp::Simple("PONG".into()), 7))
    );
    assert_eq!(
        parse_resp(b"-ERR wrong\r\n").unwrap(),
        Some((Resp::Error("ERR wrong".into()), 12))
    );
}

#[test]
fn resp_bulk_and_arrays() {
    assert_eq!(
        parse_resp(b"$3\r\nfoo\r\n").unwrap(),
        Some((Resp::Bulk(Some(b"foo".to_vec())), 9))
    );
    assert_eq!(parse_resp(b"$-1\r\n").unwrap(), Some((Resp::Bulk(None), 5)));
    let buf = b"*2\r\n:1\r\n$2\r\nab\r\n";
    assert_eq!(
        parse_resp(buf).unwrap(),
        Some((
            Resp::Array(Some(vec![
                Resp::Integer(1),
                Resp::Bulk(Some(b"ab".to_vec()))
            ])),
            buf.len()
        ))
    );
}

#[test]
fn resp_incomplete_needs_more() {
    assert_eq!(parse_resp(b"").unwrap(), None);
    assert_eq!(parse_resp(b":1").unwrap(), None);
    assert_eq!(parse_resp(b":1\r").unwrap(), None);
    assert_eq!(parse_resp(b"$3\r\nfo").unwrap(), None);
    assert_eq!(parse_resp(b"*2\r\n:1\r\n").unwrap(), None);
}

#[test]
fn resp_garbage_is_an_error() {
    assert!(parse_resp(b"?what\r\n").is_err());
    assert!(parse_resp(b":one\r\n").is_err());
    assert!(parse_resp(b"$3\r\nfooXX").is_err());
}

#[test]
fn resp_encoding_round_trips() {
    let mut out = Vec::new();
    encode_resp_command(&mut out, &[b"SADD", b"domains:k", b"d1.bench.example"]);
    assert_eq!(
        out,
        b"*3\r\n$4\r\nSADD\r\n$9\r\ndomains:k\r\n$16\r\nd1.bench.example\r\n"
    );
    let (value, used) = parse_resp(&out).unwrap().unwrap();
    assert_eq!(used, out.len());
    assert_eq!(
        value,
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"SADD".to_vec())),
            Resp::Bulk(Some(b"domains:k".to_vec())),
            Resp::Bulk(Some(b"d1.bench.example".to_vec())),
        ]))
    );
}
