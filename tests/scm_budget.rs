//! The Sectigo request budget is the deployment's (issue 16): two certline instances on one
//! PostgreSQL database together stay within `[sectigo] max_requests_per_second`, each taking
//! half of it once their heartbeats show both live.
//!
//! Real binaries, a real PostgreSQL (a schema of the test's own) and the SCM simulator, with
//! far more bridge work queued than the budget lets through in the measured window, so that
//! both instances want to spend more than they may throughout. The assertion is an upper
//! bound on the simulator's request count over the window: a slow machine only lowers it.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::bridge_setup::sectigo_section;
use support::client::{call, new_key};
use support::postgres::TestSchema;
use support::scm_sim::ScmSim;
use support::server::{Binary, Launch};
use support::wait::{done_or, wait_until};

/// The deployment's budget: requests per second toward SCM, and in flight at once.
const BUDGET_RPS: f64 = 8.0;
const BUDGET_CONCURRENCY: usize = 4;

/// How long the requests are counted.
const WINDOW: Duration = Duration::from_secs(8);

/// The heartbeat of both instances (an instance is live for three of them).
/// Long enough that a loaded machine's late heartbeat does not make an instance look dead
/// (which would hand the other the whole budget for a moment).
const HEARTBEAT_MS: u64 = 2000;

struct Setup {
    dir: tempfile::TempDir,
    schema: TestSchema,
    sim: ScmSim,
}

impl Setup {
    fn config(&self, name: &str) -> PathBuf {
        let pw = self.dir.path().join("pw");
        std::fs::write(&pw, support::scm_sim::PASSWORD).unwrap();
        let settings = format!(
            "max_concurrency = {BUDGET_CONCURRENCY}\n\
             allowed_suffixes = [\"org\"]\n\
             create_missing = true\n\
             org_id = 7\n\
             require_confirmed_key = false"
        );
        let section = sectigo_section(&self.sim, &pw, &settings)
            // The harness's section allows 5000 requests per second; this test's budget:
            .replace(
                "max_requests_per_second = 5000.0",
                &format!("max_requests_per_second = {BUDGET_RPS:?}"),
            );
        assert!(section.contains(&format!("max_requests_per_second = {BUDGET_RPS:?}")));
        let text = format!(
            "[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{section}{}heartbeat_ms = {HEARTBEAT_MS}\n",
            self.schema.store_toml(name, 300)
        );
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        file
    }

    fn start(&self, name: &str) -> Binary {
        let data = self.dir.path().join(format!("data-{name}"));
        let config = self.config(name);
        let log = self.dir.path().join(format!("{name}.log"));
        Launch::new(&data)
            .config(&config)
            .logged("certline=info", Some(&log))
            .start()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Whether instance `name` logged that its share is the budget divided by two.
    fn shares_with_one_other(&self, name: &str) -> bool {
        self.log(name)
            .lines()
            .rev()
            .find(|l| l.contains("share of the Sectigo request budget"))
            .is_some_and(|l| l.contains("instances=2"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_together_stay_within_the_deployments_request_budget() {
    let sim = ScmSim::start().await;
    let s = Setup {
        dir: tempfile::tempdir().unwrap(),
        schema: TestSchema::new().await,
        sim,
    };
    let (a, b) = (s.start("a"), s.start("b"));
    // Far more work than the window lets through: each domain is looked up, created and
    // read back in SCM, several requests each.
    let key = new_key(a.addr).await;
    for i in 0..300 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let reply = call(
            addr,
            &format!("command add apikey {key} domain h{i}.budget.org"),
        )
        .await;
        assert!(reply.error.is_none(), "{reply:?}");
    }
    // Both have seen the other's heartbeat and re-divided the budget.
    wait_until(
        Duration::from_secs(30),
        "both instances sharing the budget",
        || async {
            let (sa, sb) = (s.shares_with_one_other("a"), s.shares_with_one_other("b"));
            done_or(sa && sb, format!("a: {sa}, b: {sb}"))
        },
    )
    .await;

    let before = s.sim.total_requests();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let counted = s.sim.total_requests() - before;
    let elapsed = started.elapsed().as_secs_f64();
    // Work was still queued at the end: the instances wanted more than they got.
    let synced = s.sim.domain_count();
    assert!(
        synced < 300,
        "all 300 domains reached SCM within the window"
    );
    // The deployment's budget over the window, plus per instance its burst (one request)
    // and the requests it may have in flight, let through just before the window began.
    let per_instance = 1 + (BUDGET_CONCURRENCY / 2) as u64;
    let bound = (BUDGET_RPS * elapsed).ceil() as u64 + 2 * per_instance;
    eprintln!("{counted} requests in {elapsed:.1} s; the bound is {bound}");
    assert!(
        counted <= bound,
        "{counted} requests in {elapsed:.1} s: more than the deployment's budget of \
         {BUDGET_RPS}/s allows ({bound}); each instance used more than its half"
    );
    assert!(counted > 0, "no request reached SCM in the window");
    drop((a, b));
}
