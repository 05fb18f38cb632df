//! protocol.md's worked examples (§10) are executable: each example block runs against a
//! fresh server, request by request, and every reply must match byte for byte.
//!
//! Notation: `> line` is sent (without a newline; the quiet period ends it, as with
//! `echo -ne`), `< line` is an expected reply line. `<key>` in a reply matches a fresh
//! server-made key, which later requests may use as `$KEY`.

mod support;
use support::{client, server::InProcess};

#[derive(Debug)]
struct Step {
    request: String,
    reply: Vec<String>,
}

fn examples() -> Vec<Vec<Step>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md"))
        .expect("protocol.md");
    let section = doc
        .split("<!-- examples:begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- examples:end -->").next())
        .expect("protocol.md has an examples section");
    let mut blocks = Vec::new();
    for block in section.split("```example").skip(1) {
        let body = block.split("```").next().unwrap();
        let mut steps: Vec<Step> = Vec::new();
        for line in body.lines() {
            if let Some(req) = line.strip_prefix("> ") {
                steps.push(Step {
                    request: req.to_owned(),
                    reply: Vec::new(),
                });
            } else if let Some(rep) = line.strip_prefix("< ") {
                steps
                    .last_mut()
                    .expect("reply after a request")
                    .reply
                    .push(rep.to_owned());
            } else {
                assert!(
                    line.trim().is_empty(),
                    "unexpected line in example: {line:?}"
                );
            }
        }
        blocks.push(steps);
    }
    blocks
}

fn is_server_key(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase() || b == b'-')
}

#[tokio::test]
async fn every_example_in_protocol_md_holds() {
    let blocks = examples();
    assert!(
        blocks.len() >= 10,
        "found only {} example blocks",
        blocks.len()
    );
    for steps in blocks {
        let server = InProcess::start().await;
        let mut key: Option<String> = None;
        for step in &steps {
            let request = match &key {
                Some(k) => step.request.replace("$KEY", k),
                None => step.request.clone(),
            };
            let got = client::request(server.addr, &request).await;
            let got_lines: Vec<&str> = got.strip_suffix('\n').unwrap_or(&got).split('\n').collect();
            assert_eq!(got_lines.len(), step.reply.len(), "{request:?} → {got:?}");
            for (want, got_line) in step.reply.iter().zip(&got_lines) {
                if want == "data <key>" {
                    let k = got_line.strip_prefix("data ").expect("a data line");
                    assert!(is_server_key(k), "{k:?} is not a server-made key");
                    key = Some(k.to_owned());
                } else {
                    assert_eq!(got_line, want, "request {request:?}");
                }
            }
        }
        server.stop().await;
    }
}
