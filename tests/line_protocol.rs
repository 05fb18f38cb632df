//! Every command and every status code over real TCP, byte-exact, plus framing and limits.

mod support;
use certline::apikey::ApiKey;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::client::{
    self, PATIENCE, call, list_all, list_from, new_key, pipelined, read_reply, request,
};
use support::server::{InProcess, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn apikey_claim_add_status_list_remove_byte_exact() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;

    let claim = format!("command claim apikey {key} email ops@example.org\n");
    assert_eq!(
        request(s.addr, &claim).await,
        "status ok 200 api key claimed\n"
    );
    assert_eq!(
        request(s.addr, &claim).await,
        "status ok 200 api key already claimed\n"
    );
    assert_eq!(
        request(
            s.addr,
            &format!("command claim apikey {key} email other@example.org\n")
        )
        .await,
        "status error 409 api key claimed by another email\n"
    );

    let add = format!("command add domain www.example.org apikey {key}\n");
    assert_eq!(
        request(s.addr, &add).await,
        "data www.example.org\nstatus ok 200 domain added\n"
    );
    assert_eq!(
        request(s.addr, &add).await,
        "data www.example.org\nstatus ok 200 domain already registered\n"
    );

    let status = request(
        s.addr,
        &format!("command status apikey {key} domain www.example.org\n"),
    )
    .await;
    let data = status
        .strip_prefix("data domain=www.example.org registered=")
        .expect(&status);
    let (time, rest) = data.split_once(' ').unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    assert_eq!(rest, "key=unconfirmed sectigo=off\nstatus ok 200 ok\n");

    assert_eq!(
        request(s.addr, &format!("command list apikey {key}\n")).await,
        "data total=1 offset=0 domains=www.example.org\nstatus ok 200 ok\n"
    );
    let remove = format!("command remove apikey {key} domain WWW.example.org\n");
    assert_eq!(
        request(s.addr, &remove).await,
        "data www.example.org\nstatus ok 200 domain removed\n"
    );
    assert_eq!(
        request(s.addr, &remove).await,
        "data www.example.org\nstatus ok 200 domain was not registered\n"
    );
    assert_eq!(
        request(
            s.addr,
            &format!("command status apikey {key} domain www.example.org\n")
        )
        .await,
        "status error 404 domain not registered\n"
    );
    assert_eq!(
        request(s.addr, &format!("command list apikey {key}\n")).await,
        "data total=0 offset=0 domains=\nstatus ok 200 ok\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn apikey_with_email_claims_at_once_and_the_audit_trail_records_it() {
    let s = InProcess::start().await;
    let reply = call(s.addr, "command apikey email ops@example.org").await;
    assert_eq!(reply.text, "api key created and claimed");
    let key = reply.data.unwrap();
    assert_eq!(
        request(
            s.addr,
            &format!("command claim apikey {key} email OPS@example.org\n")
        )
        .await,
        "status ok 200 api key already claimed\n"
    );
    let hash = ApiKey::parse(&key).unwrap().hash();
    let record = s.store.key(&hash).await.unwrap().unwrap();
    assert_eq!(record.email.as_deref(), Some("ops@example.org"));
    let events = support::store::audit_trail(&s.store).await;
    let names: Vec<_> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["new-apikey", "claim-apikey"]);
    assert!(
        events
            .iter()
            .all(|e| e.key_id == hash.id() && e.ip.is_loopback())
    );
    s.stop().await;
}

#[tokio::test]
async fn keys_are_stored_only_as_hashes() {
    let s = InProcess::start_sled().await;
    let key = new_key(s.addr).await;
    call(
        s.addr,
        &format!("command add apikey {key} domain a.example.org"),
    )
    .await;
    s.store.flush().await.unwrap();
    let dir = s.stop().await.unwrap();
    let mut haystack = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            haystack.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(
        haystack
            .windows(b"a.example.org".len())
            .any(|w| w == b"a.example.org"),
        "the search itself works"
    );
    assert!(
        !haystack.windows(key.len()).any(|w| w == key.as_bytes()),
        "key stored in clear"
    );
}

#[tokio::test]
async fn client_made_keys_can_be_claimed_and_used() {
    let s = InProcess::start().await;
    let key = "my-own-key-0123456789";
    assert_eq!(
        call(s.addr, &format!("command add apikey {key} domain a.org"))
            .await
            .code(),
        401
    );
    assert!(
        call(s.addr, &format!("command claim apikey {key} email a@b.org"))
            .await
            .is_ok()
    );
    assert!(
        call(s.addr, &format!("command add apikey {key} domain a.org"))
            .await
            .is_ok()
    );
    s.stop().await;
}

#[tokio::test]
async fn every_error_code_has_its_documented_text() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;
    let cases = [
        (
            "command add domain",
            "status error 400 missing value for key domain\n".to_owned(),
        ),
        (
            "command ping COMMAND ping",
            "status error 400 repeated key command\n".into(),
        ),
        ("domain x.org", "status error 400 missing command\n".into()),
        (
            "command add domain x.org",
            "status error 400 missing key apikey\n".into(),
        ),
        (
            "command claim apikey x",
            "status error 400 missing key email\n".into(),
        ),
        (
            "command ping a.b c",
            "status error 400 invalid key a.b\n".into(),
        ),
        (
            "command add domain x.org apikey 00000000-0000-0000-0000-000000000000",
            "status error 401 unknown api key\n".into(),
        ),
        (
            "command launch",
            "status error 404 unknown command launch\n".into(),
        ),
        (
            &format!("command add domain exa_mple.org apikey {key}"),
            "status error 406 invalid domain\n".into(),
        ),
        (
            "command claim apikey 0123456789abcdef email nope",
            "status error 422 invalid email\n".into(),
        ),
        (
            "command add domain x.org apikey bad_key",
            "status error 422 invalid api key format\n".into(),
        ),
        (
            "command claim apikey short email a@b.org",
            "status error 422 invalid api key format\n".into(),
        ),
        (
            "command add domain x.org apikey short",
            "status error 401 unknown api key\n".into(),
        ),
        (
            &format!("command list apikey {key} offset -1"),
            "status error 422 invalid offset\n".into(),
        ),
        (
            &format!("command list apikey {key} offset 99999999999"),
            "status error 422 invalid offset\n".into(),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(request(s.addr, &format!("{line}\n")).await, want, "{line}");
    }
    // Control characters and invalid UTF-8 are 400 too.
    assert_eq!(
        request(s.addr, "command ping\0\n").await,
        "status error 400 invalid byte in request\n"
    );
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(b"command \xff\xfe\n").await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await,
        b"status error 400 invalid byte in request\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn revoked_keys_get_403_everywhere() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;
    let hash = ApiKey::parse(&key).unwrap().hash();
    assert!(
        s.store
            .revoke_key(&hash, "127.0.0.1".parse().unwrap(), 0)
            .await
            .unwrap()
    );
    for line in [
        format!("command add apikey {key} domain a.org"),
        format!("command status apikey {key} domain a.org"),
        format!("command list apikey {key}"),
        format!("command remove apikey {key} domain a.org"),
    ] {
        assert_eq!(
            request(s.addr, &format!("{line}\n")).await,
            "status error 403 api key revoked\n"
        );
    }
    assert_eq!(
        request(
            s.addr,
            &format!("command claim apikey {key} email a@b.org\n")
        )
        .await,
        "status error 403 api key revoked\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn list_pages_never_exceed_1000_bytes_and_cover_everything_once() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;
    let mut want = Vec::new();
    for i in 0..60 {
        // Long names make pages fill up quickly.
        let d = format!("{}-{i:03}.example.org", "x".repeat(40));
        assert!(
            call(s.addr, &format!("command add apikey {key} domain {d}"))
                .await
                .is_ok()
        );
        want.push(d);
    }
    want.sort();
    let listing = list_all(s.addr, &key).await;
    for page in &listing.pages {
        assert!(page.len() <= 1000, "page of {} bytes", page.len());
        assert!(page.starts_with("data total=60 offset="), "{page}");
    }
    assert!(listing.pages.len() > 1);
    assert_eq!(listing.domains, want);
    s.stop().await;
}

/// Short names: the store hands a page's names out in several reads (sized for longer
/// names), and the page is still filled exactly as far as it goes: 110 names of 7 bytes take
/// 879 of the 880 bytes a reply has for names (with their commas); the 111th would not fit.
#[tokio::test]
async fn list_pages_of_short_names_are_filled_to_the_byte_across_store_reads() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;
    let mut want: Vec<String> = (0..250).map(|i| format!("s{i:03}.io")).collect();
    for d in &want {
        assert!(
            call(s.addr, &format!("command add apikey {key} domain {d}"))
                .await
                .is_ok()
        );
    }
    want.sort();
    let listing = list_all(s.addr, &key).await;
    assert_eq!(listing.domains, want);
    let per_page: Vec<usize> = listing
        .pages
        .iter()
        .map(|page| {
            let names = page
                .split("domains=")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap();
            names.split(',').count()
        })
        .collect();
    assert_eq!(per_page, [110, 110, 30], "{:?}", listing.pages);
    s.stop().await;
}

#[tokio::test]
async fn framing_lf_crlf_quiet_period_and_half_close_all_end_a_request() {
    let s = InProcess::start().await;
    assert_eq!(
        request(s.addr, "command ping\r\n").await,
        "status ok 200 pong\n"
    );
    // No newline and the connection stays open: the quiet period ends the request.
    assert_eq!(
        request(s.addr, "command ping").await,
        "status ok 200 pong\n"
    );
    // Half-close right after the bytes: EOF ends the request, the reply still comes.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(b"command ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, b"status ok 200 pong\n");
    // Blank lines get no reply.
    assert_eq!(
        request(s.addr, "\n \t\r\ncommand ping\n").await,
        "status ok 200 pong\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let mut batch = String::new();
    for i in 0..50 {
        batch.push_str(&format!(
            "command add apikey {key} domain d{i}.example.org\n"
        ));
    }
    batch.push_str("command ping\n");
    stream.write_all(batch.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    let mut want = String::new();
    for i in 0..50 {
        want.push_str(&format!(
            "data d{i}.example.org\nstatus ok 200 domain added\n"
        ));
    }
    want.push_str("status ok 200 pong\n");
    assert_eq!(all, want);
    s.stop().await;
}

/// A pipelined burst of writes shares commit rounds (Redis answers a pipeline with one sync):
/// before, each add waited for its own log write and sync before the next line was read, so
/// N adds cost N rounds. Replies stay in order, and what a later line sees follows from the
/// earlier ones (add, remove, add again; an invalid domain and an unknown command answered in
/// place; a `list` at the end that sees every add).
#[tokio::test]
async fn a_pipelined_burst_of_writes_shares_commit_rounds_and_keeps_its_order() {
    const ADDS: usize = 300;
    let s = InProcess::start_sled().await;
    let key = new_key(s.addr).await;
    let mut burst = String::new();
    let mut want = String::new();
    for i in 0..ADDS {
        burst.push_str(&format!(
            "command add apikey {key} domain d{i}.example.org\n"
        ));
        want.push_str(&format!(
            "data d{i}.example.org\nstatus ok 200 domain added\n"
        ));
    }
    burst.push_str(&format!(
        "command remove apikey {key} domain d0.example.org\n"
    ));
    want.push_str("data d0.example.org\nstatus ok 200 domain removed\n");
    burst.push_str(&format!("command add apikey {key} domain d0.example.org\n"));
    want.push_str("data d0.example.org\nstatus ok 200 domain added\n");
    burst.push_str(&format!("command add apikey {key} domain -bad-\n"));
    want.push_str("status error 406 invalid domain\n");
    burst.push_str("command nonsense\n");
    want.push_str("status error 404 unknown command nonsense\n");
    burst.push_str(&format!("command list apikey {key} offset {}\n", ADDS - 1));
    want.push_str(&format!(
        "data total={ADDS} offset={} domains=d99.example.org\nstatus ok 200 ok\n",
        ADDS - 1
    ));
    let stats = s
        .store
        .group_commit()
        .expect("sled has group commit")
        .stats();
    let rounds_before = stats.flushes.load(Ordering::SeqCst);
    let all = pipelined(s.addr, &burst).await;
    assert_eq!(all, want);
    let rounds = stats.flushes.load(Ordering::SeqCst) - rounds_before;
    // About 19 KiB of requests in one write arrive together on loopback; the server answers
    // what it has read (up to 64 KiB, 1,024 requests) as one batch. A few rounds leave room
    // for the kernel handing the bytes over in pieces; one round per add would be 302.
    assert!(
        (1..=6).contains(&rounds),
        "{rounds} commit rounds for {} pipelined writes",
        ADDS + 2
    );
    s.stop().await;
}

/// Pipelined `add`s or `remove`s of `domains` under `key`, all expected to succeed.
async fn pipeline_writes(addr: std::net::SocketAddr, command: &str, key: &str, domains: &[String]) {
    let lines: String = domains
        .iter()
        .map(|d| format!("command {command} apikey {key} domain {d}\n"))
        .collect();
    let all = pipelined(addr, &lines).await;
    assert_eq!(
        all.matches("status ok 200").count(),
        domains.len(),
        "{command}: {all}"
    );
}

/// Deep pages start from a rank index (one entry per 512 domains) that must stay exact as
/// domains are added and removed around its entries: every page, from offset 0 or from any
/// deep offset, must show exactly what the sorted list of domains has there.
#[tokio::test]
async fn deep_list_pages_stay_exact_as_domains_come_and_go() {
    let s = InProcess::start().await;
    let key = new_key(s.addr).await;
    let name = |i: usize| format!("d{i:05}.example.org");
    let mut want: Vec<String> = (0..3000).map(|i| name(2 * i)).collect();
    pipeline_writes(s.addr, "add", &key, &want).await;
    assert_eq!(list_all(s.addr, &key).await.domains, want);
    // A deep page builds the index; then change the key around its entries.
    assert_eq!(list_from(s.addr, &key, 2000).await.domains, want[2000..]);
    let removed: Vec<String> = [0, 512, 513, 1024, 2047, 2999]
        .iter()
        .map(|&i| name(2 * i))
        .collect();
    pipeline_writes(s.addr, "remove", &key, &removed).await;
    let added: Vec<String> = [1, 1025, 3001, 5997, 7001]
        .iter()
        .map(|&i| name(i))
        .collect();
    pipeline_writes(s.addr, "add", &key, &added).await;
    want.retain(|d| !removed.contains(d));
    want.extend(added);
    want.sort();
    for offset in [0, 511, 512, 1000, 1536, 2500, want.len() - 1, want.len()] {
        assert_eq!(
            list_from(s.addr, &key, offset as u64).await.domains,
            want[offset..],
            "offset {offset}"
        );
    }
    s.stop().await;
}

/// A pipelined batch whose commit round fails is answered 500 for every write in it, in
/// order; nothing of it is stored, and the connection goes on.
#[tokio::test]
async fn a_failed_round_fails_every_write_of_a_pipelined_batch() {
    let s = InProcess::start_sled().await;
    let key = new_key(s.addr).await;
    s.store
        .group_commit()
        .expect("sled has group commit")
        .inject_flush_failures(1);
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let burst = format!(
        "command add apikey {key} domain a.example.org\n\
         command add apikey {key} domain b.example.org\n\
         command ping\n"
    );
    stream.write_all(burst.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    while all.iter().filter(|&&b| b == b'\n').count() < 3 {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        String::from_utf8(all).unwrap(),
        "status error 500 storage failure\nstatus error 500 storage failure\nstatus ok 200 pong\n"
    );
    // Neither write is there; the same connection carries on, and once the store has mended
    // its log (within a second or two) a retry is acknowledged.
    for domain in ["a.example.org", "b.example.org"] {
        let status = format!("command status apikey {key} domain {domain}");
        assert_eq!(call(s.addr, &status).await.code(), 404);
    }
    let started = std::time::Instant::now();
    loop {
        stream
            .write_all(format!("command add apikey {key} domain b.example.org\n").as_bytes())
            .await
            .unwrap();
        let reply = String::from_utf8(read_reply(&mut stream).await).unwrap();
        if reply == "data b.example.org\nstatus ok 200 domain added\n" {
            break;
        }
        assert_eq!(reply, "status error 500 storage failure\n");
        assert!(started.elapsed() < PATIENCE, "writes not taken again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn an_over_long_line_gets_413_then_a_graceful_close() {
    let s = InProcess::start().await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // Keep sending after the cap: the server must still deliver its reply, not a reset.
    let junk = vec![b'a'; 64 * 1024];
    let _ = stream.write_all(&junk).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .unwrap();
    assert_eq!(all, b"status error 413 request too long\n");
    // A line of exactly the cap is fine.
    let line = format!(
        "command ping pad {}",
        "p".repeat(1024 - "command ping pad ".len())
    );
    assert_eq!(line.len(), 1024);
    assert_eq!(
        request(s.addr, &format!("{line}\n")).await,
        "status ok 200 pong\n"
    );
    assert_eq!(
        request(s.addr, &format!("{line}x\n")).await,
        "status error 413 request too long\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.limits.idle_timeout_secs = 1;
    let s = InProcess::start_with(config).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed without a reply");
    s.stop().await;
}

/// Opens `n` connections and keeps them; a round trip on each proves the server has accepted
/// and counted it.
async fn hold_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"command ping\n").await.unwrap();
        assert_eq!(read_reply(&mut c).await, b"status ok 200 pong\n");
        held.push(c);
    }
    held
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_others_are_served_once_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.limits.max_connections = 3;
    let s = InProcess::start_with(config).await;
    let mut held = hold_connections(s.addr, 3).await;
    assert_eq!(
        request(s.addr, "command ping").await,
        "status error 503 too many connections\n"
    );
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        if request(s.addr, "command ping\n").await == "status ok 200 pong\n" {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served);
    s.stop().await;
}

#[tokio::test]
async fn per_address_cap_limits_one_source_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.limits.max_connections_per_ip = 2;
    let s = InProcess::start_with(config).await;
    let _held = hold_connections(s.addr, 2).await;
    assert_eq!(
        request(s.addr, "command ping").await,
        "status error 503 too many connections\n"
    );
    // Another loopback source address is not affected.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(s.addr).await.unwrap();
    other.write_all(b"command ping\n").await.unwrap();
    assert_eq!(read_reply(&mut other).await, b"status ok 200 pong\n");
    s.stop().await;
}

#[tokio::test]
async fn apikey_and_claim_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.rate_limit = certline::service::RateLimits::default();
    let s = InProcess::start_with(config).await;
    let burst = certline::service::RateLimits::default().apikey_burst.get();
    for _ in 0..burst {
        assert!(call(s.addr, "command apikey").await.is_ok());
    }
    assert_eq!(
        request(s.addr, "command apikey\n").await,
        "status error 429 too many requests\n"
    );
    for i in 0..burst {
        let line = format!("command claim apikey client-key-{i:010} email a@b.org");
        assert!(call(s.addr, &line).await.is_ok());
    }
    assert_eq!(
        request(
            s.addr,
            "command claim apikey client-key-xxxxxxxxxx email a@b.org\n"
        )
        .await,
        "status error 429 too many requests\n"
    );
    // Other commands are not limited.
    assert_eq!(
        request(s.addr, "command ping\n").await,
        "status ok 200 pong\n"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failed_flush_is_answered_500_and_nothing_is_acknowledged() {
    let s = InProcess::start_sled().await;
    let key = new_key(s.addr).await;
    s.store
        .group_commit()
        .expect("sled has group commit")
        .inject_flush_failures(1);
    let add = format!("command add apikey {key} domain a.example.org");
    assert_eq!(
        request(s.addr, &format!("{add}\n")).await,
        "status error 500 storage failure\n"
    );
    // The refused registration is not there.
    assert_eq!(
        call(
            s.addr,
            &format!("command status apikey {key} domain a.example.org")
        )
        .await
        .code(),
        404
    );
    // The store mends the log by itself (within a second or two), and a retry is
    // acknowledged.
    let started = std::time::Instant::now();
    loop {
        let reply = call(s.addr, &add).await;
        if reply.is_ok() {
            break;
        }
        assert_eq!(reply.code(), 500, "{reply:?}");
        assert!(started.elapsed() < PATIENCE, "writes not taken again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn shutdown_answers_new_requests_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.limits.shutdown_grace_ms = 5000;
    config.limits.quiet_period_ms = 1000;
    let s = InProcess::start_with(config).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(b"command ping\n").await.unwrap();
    assert_eq!(read_reply(&mut stream).await, b"status ok 200 pong\n");
    s.shutdown.cancel();
    // The request is on its way while the server drains (within one quiet period).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stream.write_all(b"command ping\n").await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .unwrap();
    assert_eq!(all, b"status error 503 shutting down\n");
    s.task.await.unwrap();
    // New connections are refused by the OS once the listener is gone.
    assert!(TcpStream::connect(s.addr).await.is_err());
}

#[tokio::test]
async fn many_short_connections_one_request_each() {
    let s = InProcess::start().await;
    for _ in 0..20 {
        assert_eq!(
            client::request(s.addr, "command ping").await,
            "status ok 200 pong\n"
        );
    }
    s.stop().await;
}

/// 400 connections at once over a cap of 1: each gets the 503 line and a close. Before the
/// listener had a deep accept backlog, some of them completed their handshake on the client
/// side only and then waited 20 s for nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_the_cap_gets_the_503_line_on_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.limits.max_connections = 1;
    let s = InProcess::start_with(config).await;
    let _held = hold_connections(s.addr, 1).await;
    let mut burst = Vec::new();
    for _ in 0..400 {
        burst.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(s.addr).await.unwrap();
            let mut all = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, c.read_to_end(&mut all)).await;
            all
        }));
    }
    for b in burst {
        assert_eq!(
            String::from_utf8(b.await.unwrap()).unwrap(),
            "status error 503 too many connections\n"
        );
    }
    s.stop().await;
}
