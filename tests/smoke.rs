//! The harness itself works: a server starts in-process and as a binary, and answers.
mod support;
use support::{client, server};

#[tokio::test]
async fn in_process_server_answers_ping() {
    let s = server::InProcess::start().await;
    assert_eq!(
        client::request(s.addr, "command ping\n").await,
        "status ok 200 pong\n"
    );
    s.stop().await;
}
