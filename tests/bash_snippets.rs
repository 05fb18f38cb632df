//! The seed's bash snippets (shared/seeds/004), run by real bash against a real certline with
//! only the host and port changed. Both send through `/dev/tcp`, never close, and read once
//! with `dd bs=1000 count=1`.

mod support;
use certline::apikey::ApiKey;
use std::process::Output;
use support::server::InProcess;

async fn bash(script: &str) -> Output {
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("bash runs");
    assert!(out.status.success(), "bash failed: {out:?}");
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The seed's first snippet: `echo -e` (with a newline), key `28a7e10-1fea`. That key is
/// shorter than a client may create, so it exists here the way it would in production: an
/// operator migrated it from KeyChest (the store's `create_key`, as an import does).
#[tokio::test(flavor = "multi_thread")]
async fn add_domain_snippet_prints_data_and_ok_from_one_read() {
    let s = InProcess::start().await;
    let key = ApiKey::parse("28a7e10-1fea").unwrap();
    s.store
        .create_key(
            &key.hash(),
            None,
            &Default::default(),
            "127.0.0.1".parse().unwrap(),
            0,
        )
        .await
        .unwrap();
    let port = s.addr.port();
    let script = format!(
        r#"exec 3<> "/dev/tcp/127.0.0.1/{port}"
echo -e "command add domain keychest.net apikey 28a7e10-1fea" >&3
echo "$(dd bs=1000 count=1 <&3 2>/dev/null)""#
    );
    let out = bash(&script).await;
    assert_eq!(
        stdout(&out),
        "data keychest.net\nstatus ok 200 domain added\n"
    );
    s.stop().await;
}

/// The seed's second snippet: `echo -ne` (no newline, never closed). Verbatim it pipes into
/// `head -l 1`, a typo GNU head rejects (`invalid option -- 'l'`), so verbatim it prints an
/// empty line whatever the server does; the server must not mind. With the typo fixed to
/// `head -n 1`, as its author meant, it prints the key; and the single `dd` read it makes
/// holds the whole reply, data and status.
#[tokio::test(flavor = "multi_thread")]
async fn apikey_snippet_without_newline_gets_the_whole_reply_in_one_read() {
    let s = InProcess::start().await;
    let port = s.addr.port();
    let snippet = |head: &str| {
        format!(
            r#"TCP_DEV="/dev/tcp/127.0.0.1/{port}"
exec 3<> "$TCP_DEV"
echo -ne "command apikey" >&3
RESPONSE=$(dd bs=1000 count=1 <&3 2>/dev/null {head})
echo $RESPONSE # this will return "data 28a7e10-1fea…""#
        )
    };

    let verbatim = bash(&snippet("| head -l 1")).await;
    assert_eq!(stdout(&verbatim), "\n");
    assert!(String::from_utf8_lossy(&verbatim.stderr).contains("invalid option"));

    let fixed = stdout(&bash(&snippet("| head -n 1")).await);
    let key = fixed.trim().strip_prefix("data ").expect(&fixed);
    assert!(ApiKey::parse(key).is_ok(), "{key:?}");

    // The same single read without the pipe: both lines arrive together. `echo $RESPONSE`
    // (unquoted, as in the seed) joins them with a space.
    let whole = stdout(&bash(&snippet("")).await);
    let (data, status) = whole.trim().split_once(" status ").expect(&whole);
    assert!(data.starts_with("data "), "{whole}");
    assert_eq!(status, "ok 200 api key created");
    s.stop().await;
}

/// The full KeyChest flow the README shows, one connection per call, as a first-boot script
/// would do it: mint, claim, add, each read once.
#[tokio::test(flavor = "multi_thread")]
async fn readme_flow_mint_claim_add_in_bash() {
    let s = InProcess::start().await;
    let port = s.addr.port();
    let script = format!(
        r#"set -u
call() {{ exec 3<> /dev/tcp/127.0.0.1/{port}; echo -ne "$1" >&3; dd bs=1000 count=1 <&3 2>/dev/null; exec 3<&-; }}
KEY=$(call "command apikey" | sed -n 's/^data //p')
call "command claim apikey $KEY email ops@example.org"
call "command add domain www.example.org apikey $KEY"
call "command list apikey $KEY""#
    );
    let out = stdout(&bash(&script).await);
    assert_eq!(
        out,
        "status ok 200 api key claimed\n\
         data www.example.org\nstatus ok 200 domain added\n\
         data total=1 offset=0 domains=www.example.org\nstatus ok 200 ok\n"
    );
    s.stop().await;
}
