//! The inventory at scale (issue 19): with 200,000 registered domains, a full listing through
//! the admin API, and through `certline domains --json`, grows the server's resident memory
//! by less than a few MB, because the server reads the store a page at a time; the CLI's own
//! memory stays flat too, because it writes each page as it arrives.
//!
//! The server is the real binary in a child process, so its memory is measured from
//! `/proc/PID/status` (`VmRSS`), sampled every few milliseconds while the listing runs.
//! Before paging, the server held the whole inventory and its JSON (41 MB for 200,000
//! domains) and grew by about 90 MB.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::admin::{Admin, TOKEN, admin_toml};
use support::client::new_key;
use support::server::Binary;

const KEYS: usize = 200;
const DOMAINS_PER_KEY: usize = 1000;
const DOMAINS: usize = KEYS * DOMAINS_PER_KEY;

/// The growth allowed: a page of rows and its JSON are a few hundred kB; allocator slack and
/// the blocking pool's thread take the rest.
const MAX_GROWTH_KB: u64 = 6 * 1024;

/// Resident set size of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    try_rss_kb(pid).unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

fn try_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS until stopped; returns the largest sample.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // A process that is gone (the test failed and killed it) ends the sampling.
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                let Some(rss) = try_rss_kb(pid) else {
                    return peak;
                };
                peak = peak.max(rss);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(try_rss_kb(pid).unwrap_or(0))
        });
        Self { stop, thread }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("certline.toml");
    let text = format!(
        "[durability]\nmode = \"relaxed\"\n[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{}",
        admin_toml(dir)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Registers DOMAINS domains, DOMAINS_PER_KEY under each of KEYS keys, through the admin
/// import (1000 per request, several requests at once).
async fn seed(server: &Binary, admin: &Arc<Admin>) {
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..KEYS {
        let key = new_key(server.addr).await;
        let admin = admin.clone();
        tasks.spawn(async move {
            let domains: Vec<String> = (0..DOMAINS_PER_KEY)
                .map(|d| format!("host{d:04}.dept{k:03}.example.edu"))
                .collect();
            let body = serde_json::json!({ "apikey": key, "domains": domains });
            let (status, text) = admin.post("/api/domains", Some(body)).await;
            assert_eq!(status, 200, "{text}");
            assert!(!text.contains("invalid_domain"), "{text}");
        });
        if tasks.len() >= 8 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "seeds 200,000 domains (about a minute in a debug build); .ci/run runs it"]
async fn listing_200000_domains_through_the_api_and_the_cli_keeps_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Binary::start(&dir.path().join("data"), Some(&config));
    let admin_addr = server.admin.expect("admin listener");
    let admin = Arc::new(Admin::new(admin_addr));
    seed(&server, &admin).await;
    let pid = server.child.id();
    let counted = admin.json("/api/domains/count").await;
    assert_eq!(counted["count"], DOMAINS as u64);

    // Through the API: every page, in order, each domain once. The server's memory is
    // measured from a tenth of the way in: by then every thread that serves the listing has
    // its allocator's working set (mimalloc keeps per-thread heaps), so what grows after it
    // is what the listing holds, which must be nothing.
    let first = admin.json("/api/domains?limit=10").await;
    assert_eq!(first["domains"].as_array().unwrap().len(), 10);
    let mut measured: Option<(u64, RssSampler)> = None;
    let mut listed = 0usize;
    let mut last = String::new();
    let mut cursor = String::new();
    loop {
        let page = admin.json(&format!("/api/domains?cursor={cursor}")).await;
        for d in page["domains"].as_array().unwrap() {
            let name = d["domain"].as_str().unwrap().to_owned();
            assert!(name > last, "{name} after {last}: out of order or twice");
            assert_eq!(d["keys"].as_array().unwrap().len(), 1, "{d}");
            last = name;
            listed += 1;
        }
        if measured.is_none() && listed >= DOMAINS / 10 {
            measured = Some((rss_kb(pid), RssSampler::start(pid)));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let (before, sampler) = measured.expect("more than a tenth listed");
    let peak = sampler.peak();
    assert_eq!(listed, DOMAINS);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "API listing: RSS {before} kB a tenth of the way in, peak {peak} kB after (+{growth} kB)"
    );
    assert!(
        growth < MAX_GROWTH_KB,
        "the server grew by {growth} kB listing the last {} domains through the API",
        DOMAINS - DOMAINS / 10
    );

    // Through the CLI: JSON Lines on stdout, read as they come.
    let before = rss_kb(pid);
    let sampler = RssSampler::start(pid);
    let mut cli = Command::new(env!("CARGO_BIN_EXE_certline"))
        .args(["domains", "--json"])
        .env("CERTLINE_ADMIN_URL", format!("http://{admin_addr}"))
        .env("CERTLINE_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run certline domains");
    let cli_pid = cli.id();
    let stdout = BufReader::new(cli.stdout.take().unwrap());
    let mut lines = 0usize;
    let mut cli_early = 0;
    let mut cli_late = 0;
    for line in stdout.lines() {
        let line = line.unwrap();
        let d: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(d["domain"].is_string(), "{line}");
        lines += 1;
        // The CLI's memory after a tenth of the listing and after nine tenths (20,000
        // lines before the end, far more than a pipe buffers: the CLI is still running).
        if lines == DOMAINS / 10 {
            cli_early = rss_kb(cli_pid);
        }
        if lines == DOMAINS / 10 * 9 {
            cli_late = rss_kb(cli_pid);
        }
    }
    assert!(cli.wait().unwrap().success());
    let peak = sampler.peak();
    assert_eq!(lines, DOMAINS);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "CLI listing: server RSS {before} kB before, peak {peak} kB (+{growth} kB); CLI {cli_early} kB at 10%, {cli_late} kB at 90%"
    );
    assert!(
        growth < MAX_GROWTH_KB,
        "the server grew by {growth} kB listing {DOMAINS} domains to the CLI"
    );
    assert!(
        cli_late.saturating_sub(cli_early) < MAX_GROWTH_KB,
        "the CLI grew from {cli_early} kB to {cli_late} kB: it holds what it printed"
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}
