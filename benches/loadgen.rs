//! Load generator for certline's side-by-side benchmark against Redis.
//!
//! ```text
//! cargo bench --bench loadgen -- --target certline|redis --addr 127.0.0.1:P \
//!     --connections N --requests M [--mode persistent|connect-per-request|pipelined]
//!     [--pipeline D] [--warmup K] [--server-pid PID] [--json]
//! cargo bench --bench loadgen -- --target certline|redis --addr 127.0.0.1:P --idle N
//! cargo bench --bench loadgen -- --target certline --addr 127.0.0.1:P --list-depth 40000 \
//!     [--list-offsets 0,20000,40000] [--list-reps 50] [--server-pid PID]
//! cargo bench --bench loadgen -- --report results.jsonl [--report-json summary.json]
//! ```
//!
//! Load: N connections, each with exactly one request in flight; M requests in total, split
//! across the connections; the first K (also split) are a warm-up and are left out of the
//! figures. All connections finish their warm-up, then start the measured part together.
//!
//! - certline: every connection first gets its own API key with `command apikey` (or all use
//!   `--apikey K`), then sends `command add domain d<unique>.bench.example apikey K\n` and reads
//!   until the reply's `status` line. A non-200 reply is an error, counted by code.
//! - redis: `SADD domains:<key> d<unique>.bench.example`, expecting an integer reply.
//! - `--mode connect-per-request` opens a new TCP connection for every request and closes it
//!   after the reply, like the bash `/dev/tcp` clients do. The latency includes the connect.
//! - `--mode pipelined --pipeline D`: each connection writes D requests back to back (a
//!   burst), while reading the D replies in order; then the next burst. A request's latency
//!   runs from the start of its burst to its reply. For Redis: pipelined `SADD`s.
//! - `--server-pid PID`: the server's CPU time (`utime + stime` of all its threads, from
//!   `/proc/PID/stat`) over the measured part, divided by the successful requests: CPU per
//!   request. It is steadier than requests per second on a shared machine. The clock tick
//!   is 10 ms, so a run should last a good fraction of a second for the figure to mean much.
//! - `--list-depth N` (certline): registers N domains under one key (pipelined), then times
//!   `command list` at each of `--list-offsets`, `--list-reps` times each: what a page costs
//!   deep into a key.
//! - `--idle N` opens N connections, sends one `ping` on each (so the server has really taken
//!   them on), prints `ready N idle connections` and holds them until killed (or `--hold-secs`).
//! - `--report FILE` reads the JSON lines written by `benches/side-by-side.sh` and prints the
//!   medians and certline/Redis ratios as markdown tables.
//!
//! Latencies are kept in microseconds in an HDR histogram (3 significant digits).

#[path = "loadgen/proto.rs"]
mod proto;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use proto::{CertlineReply, Resp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Certline,
    Redis,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Certline => "certline",
            Target::Redis => "redis",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Each connection is opened once and carries all of its requests.
    Persistent,
    /// A new TCP connection for every request (the bash `/dev/tcp` pattern).
    ConnectPerRequest,
    /// Each connection writes `--pipeline` requests back to back, then reads their replies.
    Pipelined,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::ConnectPerRequest => "connect-per-request",
            Mode::Pipelined => "pipelined",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "certline / Redis load generator (see BENCHMARKS.md)")]
struct Args {
    /// Which protocol to speak.
    #[arg(long, value_enum, required_unless_present = "report")]
    target: Option<Target>,
    /// Server address (loopback only). Repeat it to spread the connections over several
    /// servers (connection i goes to the (i mod n)-th address): two certline instances
    /// sharing one PostgreSQL schema.
    #[arg(long = "addr", default_value = "127.0.0.1:10023")]
    addrs: Vec<String>,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured requests in total, split across the connections.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Warm-up requests in total (split across the connections), not counted.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    #[arg(long, value_enum, default_value = "persistent")]
    mode: Mode,
    /// With `--mode pipelined`: requests written back to back per burst.
    #[arg(long, default_value_t = 100)]
    pipeline: u64,
    /// The server's pid: report its CPU time per request (from `/proc/PID/stat`). Repeat it
    /// for several servers: their CPU times are summed.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// PostgreSQL's postmaster pid: also report the CPU of its children (the backends) whose
    /// process title names `--db-user`, i.e. the database work done for the servers.
    #[arg(long, requires = "db_user")]
    db_postmaster: Option<u32>,
    /// With --db-postmaster: the role the servers connect as (a role of their own, so other
    /// clients' backends are left out).
    #[arg(long)]
    db_user: Option<String>,
    /// certline: register this many domains under one key, then time `list` at each offset.
    #[arg(long)]
    list_depth: Option<u64>,
    /// With --list-depth: the offsets to time (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 20_000, 40_000])]
    list_offsets: Vec<u64>,
    /// With --list-depth: how many `list` requests per offset.
    #[arg(long, default_value_t = 50)]
    list_reps: u64,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Open this many idle connections, print `ready`, and hold them.
    #[arg(long)]
    idle: Option<usize>,
    /// With --idle: release the connections and exit after this many seconds.
    #[arg(long)]
    hold_secs: Option<u64>,
    /// certline: use this API key on every connection instead of one `command apikey` each.
    #[arg(long)]
    apikey: Option<String>,
    /// Prefix that makes domain names (and Redis keys) unique to this run; random by default.
    #[arg(long)]
    run_id: Option<String>,
    /// A request without a complete reply after this long counts as an error.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// `key=value` copied into the JSON output (used by side-by-side.sh to label runs).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Summarise a JSON-lines results file as markdown instead of generating load.
    #[arg(long)]
    report: Option<PathBuf>,
    /// With --report: also write the summary as JSON to this file.
    #[arg(long, requires = "report")]
    report_json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(path) = &args.report {
        return report(path, args.report_json.as_deref());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if let Some(n) = args.idle {
            idle(&args, n).await
        } else if let Some(n) = args.list_depth {
            list_depth(&args, n).await
        } else {
            load(&args).await
        }
    })
}

/// Everything a worker needs to build and check requests.
struct Ctx {
    target: Target,
    mode: Mode,
    /// Connection i talks to `addrs[i % addrs.len()]`.
    addrs: Vec<String>,
    run_id: String,
    apikey: Option<String>,
    timeout: Duration,
    /// Requests per burst in pipelined mode.
    pipeline: u64,
}

/// One open connection with its read buffer.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
}

/// What came back for one request.
enum Outcome {
    Ok,
    /// A well-formed reply that is not a success: its label, e.g. `certline 429`.
    Refused(String),
}

impl Conn {
    async fn connect(addr: &str) -> Result<Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
        })
    }

    async fn fill(&mut self) -> Result<(), BoxError> {
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err("server closed the connection".into());
        }
        Ok(())
    }

    /// Sends `request` and reads until `parse` finds one complete reply.
    async fn exchange<T>(
        &mut self,
        request: &[u8],
        parse: fn(&[u8]) -> proto::Parsed<T>,
    ) -> Result<T, BoxError> {
        self.stream.write_all(request).await?;
        loop {
            if let Some((reply, used)) = parse(&self.rbuf)? {
                let _ = self.rbuf.split_to(used);
                return Ok(reply);
            }
            self.fill().await?;
        }
    }

    async fn certline(&mut self, request: &[u8]) -> Result<CertlineReply, BoxError> {
        self.exchange(request, proto::parse_certline_reply).await
    }

    async fn redis(&mut self, request: &[u8]) -> Result<Resp, BoxError> {
        self.exchange(request, proto::parse_resp).await
    }

    /// Sends a ping in the target's protocol and checks the answer.
    async fn ping(&mut self, target: Target) -> Result<(), BoxError> {
        match target {
            Target::Certline => {
                let reply = self.certline(b"command ping\n").await?;
                if !reply.is_ok() {
                    return Err(format!("ping: {} {}", reply.code, reply.text).into());
                }
            }
            Target::Redis => match self.redis(b"*1\r\n$4\r\nPING\r\n").await? {
                Resp::Simple(s) if s == "PONG" => {}
                other => return Err(format!("PING: unexpected {other:?}").into()),
            },
        }
        Ok(())
    }

    /// Asks certline for a fresh API key.
    async fn new_apikey(&mut self) -> Result<String, BoxError> {
        let reply = self.certline(b"command apikey\n").await?;
        match reply.data {
            Some(key) if reply.is_ok() => Ok(key),
            _ => Err(format!(
                "command apikey: {} {} (raise rate_limit.apikey_burst or pass --apikey)",
                reply.code, reply.text
            )
            .into()),
        }
    }
}

impl Ctx {
    /// The server worker `worker`'s connections go to.
    fn addr(&self, worker: usize) -> &str {
        &self.addrs[worker % self.addrs.len()]
    }

    /// Appends the request bytes for the `seq`-th domain of worker `worker`, whose key is
    /// `key`, to `out`.
    fn request(&self, worker: usize, seq: u64, key: &str, out: &mut Vec<u8>) {
        let domain = format!("d{}-{worker}-{seq}.bench.example", self.run_id);
        match self.target {
            Target::Certline => {
                out.extend_from_slice(
                    format!("command add domain {domain} apikey {key}\n").as_bytes(),
                );
            }
            Target::Redis => {
                let set = format!("domains:{key}");
                proto::encode_resp_command(out, &[b"SADD", set.as_bytes(), domain.as_bytes()]);
            }
        }
    }

    /// The key a worker writes under: its own API key from certline, or a Redis set name.
    async fn worker_key(&self, worker: usize, conn: Option<&mut Conn>) -> Result<String, BoxError> {
        if let Some(key) = &self.apikey {
            return Ok(key.clone());
        }
        match self.target {
            Target::Redis => Ok(format!("{}-{worker}", self.run_id)),
            Target::Certline => match conn {
                Some(conn) => conn.new_apikey().await,
                None => Conn::connect(self.addr(worker)).await?.new_apikey().await,
            },
        }
    }

    /// Is this reply a success? A well-formed refusal becomes [`Outcome::Refused`].
    fn judge_certline(reply: CertlineReply) -> Outcome {
        if reply.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Refused(format!("certline {} {}", reply.code, reply.text))
        }
    }

    fn judge_redis(reply: Resp) -> Outcome {
        match reply {
            Resp::Integer(0 | 1) => Outcome::Ok,
            Resp::Error(e) => Outcome::Refused(format!("redis {e}")),
            other => Outcome::Refused(format!("redis unexpected {other:?}")),
        }
    }

    /// Reads the next reply from `conn`'s buffer (filling it from `read` as needed).
    async fn next_outcome<R: AsyncReadExt + Unpin>(
        &self,
        read: &mut R,
        rbuf: &mut BytesMut,
    ) -> Result<Outcome, BoxError> {
        loop {
            let parsed = match self.target {
                Target::Certline => proto::parse_certline_reply(rbuf)?
                    .map(|(reply, used)| (Self::judge_certline(reply), used)),
                Target::Redis => {
                    proto::parse_resp(rbuf)?.map(|(reply, used)| (Self::judge_redis(reply), used))
                }
            };
            if let Some((outcome, used)) = parsed {
                let _ = rbuf.split_to(used);
                return Ok(outcome);
            }
            if read.read_buf(rbuf).await? == 0 {
                return Err("server closed the connection".into());
            }
        }
    }

    /// Sends one request and reads its reply, on `conn` or on a connection of its own.
    async fn one(
        &self,
        worker: usize,
        conn: &mut Option<Conn>,
        request: &[u8],
    ) -> Result<Outcome, BoxError> {
        let work = async {
            if conn.is_none() {
                *conn = Some(Conn::connect(self.addr(worker)).await?);
            }
            let c = conn.as_mut().expect("connected above");
            c.stream.write_all(request).await?;
            self.next_outcome(&mut c.stream, &mut c.rbuf).await
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        };
        if result.is_err() || self.mode == Mode::ConnectPerRequest {
            // A broken connection is replaced on the next request; in connect-per-request
            // mode every connection is closed after its reply, as the bash clients do.
            *conn = None;
        }
        result
    }

    /// Writes `requests` (`n` of them, back to back) while reading their `n` replies in
    /// order; `tally` gets each reply's latency from the start of the burst. The writing and
    /// the reading run together, so a server that answers before it has read the whole
    /// burst never blocks on a full socket buffer.
    async fn burst(
        &self,
        worker: usize,
        conn: &mut Option<Conn>,
        requests: &[u8],
        n: u64,
        tally: &mut Tally,
    ) {
        let start = Instant::now();
        let mut answered = 0u64;
        let work = async {
            if conn.is_none() {
                *conn = Some(Conn::connect(self.addr(worker)).await?);
            }
            let c = conn.as_mut().expect("connected above");
            let (mut read, mut write) = c.stream.split();
            let rbuf = &mut c.rbuf;
            let send = async {
                write.write_all(requests).await?;
                Ok::<_, BoxError>(())
            };
            let receive = async {
                while answered < n {
                    let outcome = self.next_outcome(&mut read, rbuf).await?;
                    tally.record(Ok(outcome), start);
                    answered += 1;
                }
                Ok::<_, BoxError>(())
            };
            let (sent, received) = tokio::join!(send, receive);
            sent.and(received)
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        };
        if let Err(e) = result {
            let label = format!("io: {e}");
            for _ in answered..n {
                tally.record(Err(label.clone().into()), start);
            }
            *conn = None;
        }
    }

    /// Runs `count` requests of worker `index` (numbered from `*seq` on) in this run's mode.
    async fn drive(
        &self,
        index: usize,
        seq: &mut u64,
        key: &str,
        conn: &mut Option<Conn>,
        count: u64,
        tally: &mut Tally,
    ) {
        let mut buf = Vec::with_capacity(256);
        if self.mode == Mode::Pipelined {
            let mut left = count;
            while left > 0 {
                let n = left.min(self.pipeline.max(1));
                buf.clear();
                for _ in 0..n {
                    self.request(index, *seq, key, &mut buf);
                    *seq += 1;
                }
                self.burst(index, conn, &buf, n, tally).await;
                left -= n;
            }
            return;
        }
        for _ in 0..count {
            buf.clear();
            self.request(index, *seq, key, &mut buf);
            *seq += 1;
            let start = Instant::now();
            let outcome = self.one(index, conn, &buf).await;
            tally.record(outcome, start);
        }
    }
}

/// What a run of requests produced.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, outcome: Result<Outcome, BoxError>, start: Instant) {
        match outcome {
            Ok(Outcome::Ok) => {
                let us = start.elapsed().as_micros().max(1) as u64;
                self.hist.saturating_record(us);
                self.ok += 1;
            }
            Ok(Outcome::Refused(label)) => *self.errors.entry(label).or_default() += 1,
            Err(e) => *self.errors.entry(format!("io: {e}")).or_default() += 1,
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What one worker measured.
struct WorkerStats {
    tally: Tally,
    warmup_errors: u64,
    finished: Instant,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Splits `total` into `parts` shares that differ by at most one.
fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    total / parts + u64::from((index as u64) < total % parts)
}

async fn worker(
    ctx: Arc<Ctx>,
    index: usize,
    warmup: u64,
    measured: u64,
    barrier: Arc<Barrier>,
) -> Result<WorkerStats, BoxError> {
    let mut seq = 0u64;
    let setup = async {
        let mut conn = None;
        if ctx.mode != Mode::ConnectPerRequest {
            conn = Some(Conn::connect(ctx.addr(index)).await?);
        }
        let key = ctx.worker_key(index, conn.as_mut()).await?;
        let mut warm = Tally::new();
        ctx.drive(index, &mut seq, &key, &mut conn, warmup, &mut warm)
            .await;
        Ok::<_, BoxError>((conn, key, warm.error_count()))
    }
    .await;
    // Wait even after a failed set-up, so that the other workers are not left hanging.
    barrier.wait().await;
    let (mut conn, key, warmup_errors) = setup?;
    let mut tally = Tally::new();
    ctx.drive(index, &mut seq, &key, &mut conn, measured, &mut tally)
        .await;
    Ok(WorkerStats {
        tally,
        warmup_errors,
        finished: Instant::now(),
    })
}

/// The CPU time a process has used so far (`utime + stime` of all its threads, live and
/// exited, from `/proc/PID/stat`), in microseconds.
fn process_cpu_us(pid: u32) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e} (is --server-pid right?)"))?;
    // The command name (field 2) may contain spaces; the fields after it are plain numbers.
    let rest = &stat[stat.rfind(')').ok_or("malformed /proc/PID/stat")? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64, BoxError> {
        Ok(fields
            .get(i)
            .ok_or("short /proc/PID/stat")?
            .parse::<u64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((ticks(11)? + ticks(12)?) * 1_000_000 / hz)
}

/// CPU time of the servers' pids between two readings, as JSON fields (or none without a
/// pid). Several pids (several instances) are summed.
struct CpuMeter {
    pids: Vec<u32>,
    start_us: u64,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> Result<Self, BoxError> {
        let mut start_us = 0;
        for &pid in pids {
            start_us += process_cpu_us(pid)?;
        }
        Ok(Self {
            pids: pids.to_vec(),
            start_us,
        })
    }

    /// `server_cpu_us` and `server_cpu_us_per_request` for `requests` successful requests.
    fn finish(&self, requests: u64) -> Result<Value, BoxError> {
        let Some(&first) = self.pids.first() else {
            return Ok(Value::Null);
        };
        let mut now = 0;
        for &pid in &self.pids {
            now += process_cpu_us(pid)?;
        }
        let used = now.saturating_sub(self.start_us);
        let per = (requests > 0).then(|| used as f64 / requests as f64);
        Ok(json!({"pid": first, "pids": self.pids, "cpu_us": used, "cpu_us_per_request": per}))
    }
}

/// The CPU of PostgreSQL's backends serving the servers under test: the postmaster's
/// children whose process title (`postgres: [CLUSTER: ]USER DB HOST(PORT) ...`) names the
/// servers' own role. A backend that starts during the run counts from zero; one that exits during it is
/// lost (the servers' pools keep theirs open). PostgreSQL's shared background processes
/// (WAL writer, checkpointer) are not counted: other clients use them too.
struct DbCpuMeter {
    target: Option<(u32, String)>,
    start: BTreeMap<u32, u64>,
}

impl DbCpuMeter {
    fn backends(postmaster: u32, user: &str) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        let user = format!(" {user} ");
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let ppid = stat[close + 2..]
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(postmaster) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&cmdline);
            if !(title.starts_with("postgres:") && title.contains(&user)) {
                continue;
            }
            if let Ok(us) = process_cpu_us(pid) {
                out.insert(pid, us);
            }
        }
        out
    }

    fn start(args: &Args) -> Result<Self, BoxError> {
        let target = match (args.db_postmaster, &args.db_user) {
            (Some(pid), Some(user)) => Some((pid, user.clone())),
            _ => None,
        };
        let start = match &target {
            Some((pid, user)) => Self::backends(*pid, user),
            None => BTreeMap::new(),
        };
        Ok(Self { target, start })
    }

    fn finish(&self, requests: u64) -> Result<Value, BoxError> {
        let Some((pid, user)) = &self.target else {
            return Ok(Value::Null);
        };
        let now = Self::backends(*pid, user);
        let used: u64 = now
            .iter()
            .map(|(p, us)| us.saturating_sub(self.start.get(p).copied().unwrap_or(0)))
            .sum();
        let per = (requests > 0).then(|| used as f64 / requests as f64);
        Ok(
            json!({"postmaster": pid, "user": user, "backends": now.len(),
                  "cpu_us": used, "cpu_us_per_request": per}),
        )
    }
}

fn random_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:x}",
        (nanos as u64) ^ (u64::from(std::process::id()) << 40)
    )
}

fn tags_json(tags: &[String]) -> Result<serde_json::Map<String, Value>, BoxError> {
    let mut map = serde_json::Map::new();
    for tag in tags {
        let (k, v) = tag
            .split_once('=')
            .ok_or_else(|| format!("--tag {tag:?}: expected key=value"))?;
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(map)
}

async fn load(args: &Args) -> Result<(), BoxError> {
    let target = args.target.ok_or("--target is required")?;
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let ctx = Arc::new(Ctx {
        target,
        mode: args.mode,
        addrs: args.addrs.clone(),
        run_id: args.run_id.clone().unwrap_or_else(random_run_id),
        apikey: args.apikey.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
        pipeline: args.pipeline,
    });
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        tasks.push(tokio::spawn(worker(
            ctx.clone(),
            i,
            share(args.warmup, args.connections, i),
            share(args.requests, args.connections, i),
            barrier.clone(),
        )));
    }
    barrier.wait().await;
    let cpu = CpuMeter::start(&args.server_pids)?;
    let db_cpu = DbCpuMeter::start(args)?;
    let start = Instant::now();

    let mut total = Tally::new();
    let mut warmup_errors = 0;
    let mut end = start;
    let mut failed = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(s) => {
                total.hist.add(&s.tally.hist)?;
                total.ok += s.tally.ok;
                warmup_errors += s.warmup_errors;
                for (k, v) in s.tally.errors {
                    *total.errors.entry(k).or_default() += v;
                }
                end = end.max(s.finished);
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    let server = cpu.finish(total.ok)?;
    let db = db_cpu.finish(total.ok)?;
    let Tally { hist, ok, errors } = total;
    if let Some(first) = failed.first() {
        return Err(format!(
            "{} of {} connections failed: {first}",
            failed.len(),
            args.connections
        )
        .into());
    }
    let elapsed = (end - start).as_secs_f64();
    let error_count: u64 = errors.values().sum();
    let rps = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let q = |p: f64| hist.value_at_quantile(p);
    let result = json!({
        "kind": "throughput",
        "target": target.name(),
        "mode": args.mode.name(),
        "pipeline": (args.mode == Mode::Pipelined).then_some(args.pipeline),
        "addr": args.addrs.join(","),
        "connections": args.connections,
        "requests": args.requests,
        "warmup": args.warmup,
        "warmup_errors": warmup_errors,
        "ok": ok,
        "errors": error_count,
        "error_kinds": errors,
        "elapsed_s": elapsed,
        "throughput_rps": rps,
        "latency_us": {
            "mean": hist.mean(),
            "p50": q(0.50),
            "p90": q(0.90),
            "p99": q(0.99),
            "p999": q(0.999),
            "max": hist.max(),
        },
        "server": server,
        "db": db,
        "tags": tags_json(&args.tags)?,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} {} | {} connections | {} requests (+{} warm-up) | {} ok, {} errors in {:.3} s",
            target.name(),
            args.mode.name(),
            args.connections,
            args.requests,
            args.warmup,
            ok,
            error_count,
            elapsed
        );
        println!("throughput: {rps:.0} req/s");
        if let Some(per) = server["cpu_us_per_request"].as_f64() {
            println!(
                "server CPU: {} µs in all, {per:.1} µs per request",
                server["cpu_us"]
            );
        }
        if let Some(per) = db["cpu_us_per_request"].as_f64() {
            println!(
                "database backends' CPU: {} µs in all ({} backends), {per:.1} µs per request",
                db["cpu_us"], db["backends"]
            );
        }
        println!(
            "latency µs: p50 {} | p90 {} | p99 {} | p99.9 {} | max {} | mean {:.1}",
            q(0.50),
            q(0.90),
            q(0.99),
            q(0.999),
            hist.max(),
            hist.mean()
        );
        for (label, n) in &errors {
            println!("error: {n} × {label}");
        }
        if warmup_errors > 0 {
            println!("warm-up errors (not counted above): {warmup_errors}");
        }
    }
    Ok(())
}

/// Registers `depth` domains under one new key (pipelined, 1,000 per burst), then times
/// `command list` at each of `--list-offsets`: how a page's cost grows with its offset.
async fn list_depth(args: &Args, depth: u64) -> Result<(), BoxError> {
    if args.target != Some(Target::Certline) {
        return Err("--list-depth is for --target certline".into());
    }
    let ctx = Ctx {
        target: Target::Certline,
        mode: Mode::Pipelined,
        addrs: args.addrs.clone(),
        run_id: args.run_id.clone().unwrap_or_else(random_run_id),
        apikey: None,
        timeout: Duration::from_secs(args.timeout_secs),
        pipeline: 1000,
    };
    let mut conn = Conn::connect(&args.addrs[0]).await?;
    let key = conn.new_apikey().await?;
    let mut conn = Some(conn);
    let mut loaded = Tally::new();
    let started = Instant::now();
    ctx.drive(0, &mut 0, &key, &mut conn, depth, &mut loaded)
        .await;
    if let Some((label, n)) = loaded.errors.iter().next() {
        return Err(format!("loading {depth} domains: {n} × {label}").into());
    }
    let load_s = started.elapsed().as_secs_f64();
    let conn = conn.as_mut().ok_or("the connection broke while loading")?;
    let mut pages = Vec::new();
    for &offset in &args.list_offsets {
        let request = format!("command list apikey {key} offset {offset}\n");
        let expect = format!("offset={offset} ");
        for _ in 0..3 {
            conn.certline(request.as_bytes()).await?; // warm-up
        }
        let cpu = CpuMeter::start(&args.server_pids)?;
        let mut hist = new_histogram();
        for _ in 0..args.list_reps {
            let start = Instant::now();
            let reply = conn.certline(request.as_bytes()).await?;
            let us = start.elapsed().as_micros().max(1) as u64;
            match &reply.data {
                Some(data) if reply.is_ok() && data.contains(&expect) => {}
                _ => return Err(format!("list at offset {offset}: {reply:?}").into()),
            }
            hist.saturating_record(us);
        }
        let server = cpu.finish(args.list_reps)?;
        pages.push(json!({
            "offset": offset,
            "requests": args.list_reps,
            "latency_us": {"mean": hist.mean(), "p50": hist.value_at_quantile(0.5),
                           "p99": hist.value_at_quantile(0.99), "max": hist.max()},
            "server": server,
        }));
    }
    let result = json!({
        "kind": "list",
        "target": "certline",
        "depth": depth,
        "load_s": load_s,
        "load_rps": depth as f64 / load_s,
        "pages": pages,
        "tags": tags_json(&args.tags)?,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{depth} domains under one key, loaded pipelined in {load_s:.2} s ({:.0}/s)",
            depth as f64 / load_s
        );
        for page in &pages {
            println!(
                "list offset {}: mean {:.0} µs, p50 {} µs, p99 {} µs, server CPU {} µs/request",
                page["offset"],
                page["latency_us"]["mean"].as_f64().unwrap_or_default(),
                page["latency_us"]["p50"],
                page["latency_us"]["p99"],
                fmt_num(page["server"]["cpu_us_per_request"].as_f64()),
            );
        }
    }
    Ok(())
}

/// Opens `n` connections, pings on each, reports `ready` and holds them.
async fn idle(args: &Args, n: usize) -> Result<(), BoxError> {
    let target = args.target.ok_or("--target is required")?;
    let started = Instant::now();
    // Open connections a few hundred at a time, so the listen backlog is not overrun.
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let gate = gate.clone();
        let addr = args.addrs[0].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = Conn::connect(&addr).await?;
            conn.ping(target).await?;
            Ok::<_, BoxError>(conn)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for task in tasks {
        held.push(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({"kind": "idle", "target": target.name(), "ready": held.len(), "open_s": secs})
        );
    } else {
        println!(
            "ready {} idle connections ({secs:.2} s to open)",
            held.len()
        );
    }
    std::io::stdout().flush()?;
    match args.hold_secs {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => std::future::pending::<()>().await,
    }
    drop(held);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --report: medians and ratios from the JSON lines written by side-by-side.sh.

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn tag<'a>(v: &'a Value, key: &str) -> &'a str {
    v["tags"][key].as_str().unwrap_or("")
}

/// Server CPU per successful request over several runs: their CPU time summed, divided by
/// their requests summed (steadier than a median of per-run ratios, each of which carries the
/// 10 ms clock tick as error).
fn cpu_per_request<'a>(runs: impl Iterator<Item = &'a Value>) -> Option<f64> {
    let (mut cpu, mut ok) = (0.0, 0.0);
    for r in runs {
        if let (Some(c), Some(n)) = (r["server"]["cpu_us"].as_f64(), r["ok"].as_f64()) {
            cpu += c;
            ok += n;
        }
    }
    (ok > 0.0).then(|| cpu / ok)
}

/// `list` page cost by offset (from `--list-depth` runs): medians over runs, and each
/// offset's cost as a multiple of offset 0's.
fn list_report(rows: &[Value]) -> Vec<Value> {
    let runs: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "list").collect();
    if runs.is_empty() {
        return Vec::new();
    }
    let mut by_offset: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for run in &runs {
        for page in run["pages"].as_array().into_iter().flatten() {
            by_offset
                .entry(page["offset"].as_u64().unwrap_or(0))
                .or_default()
                .push(page);
        }
    }
    let depth = runs[0]["depth"].as_u64().unwrap_or(0);
    println!();
    println!(
        "| `list` with {depth} domains under one key: offset | p50 µs | mean µs | \
         server CPU µs/request | **mean vs offset 0** | **CPU vs offset 0** | runs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let figure = |pages: &[&Value], f: &dyn Fn(&Value) -> Option<f64>| {
        median(pages.iter().filter_map(|p| f(p)).collect())
    };
    let mean = |p: &Value| p["latency_us"]["mean"].as_f64();
    let p50 = |p: &Value| p["latency_us"]["p50"].as_f64();
    let cpu = |p: &Value| p["server"]["cpu_us_per_request"].as_f64();
    let base = by_offset.get(&0);
    let (base_mean, base_cpu) = (
        base.and_then(|b| figure(b, &mean)),
        base.and_then(|b| figure(b, &cpu)),
    );
    let mut out = Vec::new();
    for (offset, pages) in &by_offset {
        let (m, c) = (figure(pages, &mean), figure(pages, &cpu));
        println!(
            "| {offset} | {} | {} | {} | **{}×** | **{}×** | {} |",
            fmt_num(figure(pages, &p50)),
            fmt_num(m),
            fmt_num(c),
            fmt_num(ratio(m, base_mean)),
            fmt_num(ratio(c, base_cpu)),
            pages.len()
        );
        out.push(json!({
            "offset": offset, "mean_us": m, "cpu_us_per_request": c,
            "mean_vs_offset_0": ratio(m, base_mean), "cpu_vs_offset_0": ratio(c, base_cpu),
        }));
    }
    out
}

/// For runs against certline on PostgreSQL (`--db-postmaster`): the servers' CPU, the
/// database backends' CPU and their sum per request, against Redis's.
fn db_report(groups: &BTreeMap<(u8, String, bool, String, u64), Vec<&Value>>) -> Vec<Value> {
    let with_db = |r: &&&Value| r["db"]["cpu_us"].is_number();
    if !groups.values().flatten().any(|r| with_db(&r)) {
        return Vec::new();
    }
    println!();
    println!(
        "| pairing (certline on PostgreSQL) | connections | certline CPU µs/req (all instances) | \
         PostgreSQL backends' CPU µs/req | **sum** | Redis CPU µs/req | **sum / Redis** | runs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for ((_, pair, _, mode, conns), runs) in groups {
        let ours: Vec<&Value> = runs.iter().copied().filter(|r| with_db(&r)).collect();
        if ours.is_empty() {
            continue;
        }
        let (mut server, mut db, mut ok) = (0.0, 0.0, 0.0);
        for r in &ours {
            if let (Some(c), Some(d), Some(n)) = (
                r["server"]["cpu_us"].as_f64(),
                r["db"]["cpu_us"].as_f64(),
                r["ok"].as_f64(),
            ) {
                server += c;
                db += d;
                ok += n;
            }
        }
        let per = |x: f64| (ok > 0.0).then(|| x / ok);
        let r_cpu = cpu_per_request(runs.iter().copied().filter(|r| r["target"] == "redis"));
        let label = if mode == "persistent" {
            pair.clone()
        } else {
            format!("{pair}, {mode}")
        };
        println!(
            "| {label} | {conns} | {} | {} | **{}** | {} | **{}×** | {} |",
            fmt_num(per(server)),
            fmt_num(per(db)),
            fmt_num(per(server + db)),
            fmt_num(r_cpu),
            fmt_num(ratio(per(server + db), r_cpu)),
            ours.len()
        );
        out.push(json!({
            "pair": pair, "mode": mode, "connections": conns,
            "certline_cpu_us_per_request": per(server), "db_cpu_us_per_request": per(db),
            "sum_cpu_us_per_request": per(server + db), "redis_cpu_us_per_request": r_cpu,
            "sum_ratio": ratio(per(server + db), r_cpu),
        }));
    }
    out
}

fn report(path: &std::path::Path, json_out: Option<&std::path::Path>) -> Result<(), BoxError> {
    let text = std::fs::read_to_string(path)?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        rows.push(v);
    }
    let mut summary = serde_json::Map::new();

    // Throughput and latency: one line per (pairing, connection mode, connections).
    // Sorted strict before relaxed, persistent before the other modes, then by connections.
    let mut groups: BTreeMap<(u8, String, bool, String, u64), Vec<&Value>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r["kind"] == "throughput") {
        let pair = tag(r, "pair");
        let mode = match (r["mode"].as_str().unwrap_or(""), r["pipeline"].as_u64()) {
            ("pipelined", Some(depth)) => format!("pipelined ×{depth}"),
            (mode, _) => mode.to_string(),
        };
        let key = (
            u8::from(pair != "strict"),
            pair.to_string(),
            mode != "persistent",
            mode,
            r["connections"].as_u64().unwrap_or(0),
        );
        groups.entry(key).or_default().push(r);
    }
    println!(
        "| pairing | connections | certline req/s | Redis req/s | **certline/Redis** | \
         certline CPU µs/req | Redis CPU µs/req | **CPU ratio** | \
         certline p50 / p99 µs | Redis p50 / p99 µs | p99 ratio | runs | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut tp = Vec::new();
    for ((_, pair, _, mode, conns), runs) in &groups {
        let pick = |target: &str, f: &dyn Fn(&Value) -> Option<f64>| {
            median(
                runs.iter()
                    .filter(|r| r["target"] == target)
                    .filter_map(|r| f(r))
                    .collect(),
            )
        };
        let rps = |r: &Value| r["throughput_rps"].as_f64();
        let p50 = |r: &Value| r["latency_us"]["p50"].as_f64();
        let p99 = |r: &Value| r["latency_us"]["p99"].as_f64();
        let (c_rps, r_rps) = (pick("certline", &rps), pick("redis", &rps));
        let (c50, r50) = (pick("certline", &p50), pick("redis", &p50));
        let (c99, r99) = (pick("certline", &p99), pick("redis", &p99));
        let c_cpu = cpu_per_request(runs.iter().copied().filter(|r| r["target"] == "certline"));
        let r_cpu = cpu_per_request(runs.iter().copied().filter(|r| r["target"] == "redis"));
        let errors: u64 = runs.iter().filter_map(|r| r["errors"].as_u64()).sum();
        let n_c = runs.iter().filter(|r| r["target"] == "certline").count();
        let n_r = runs.len() - n_c;
        let label = if mode == "persistent" {
            pair.clone()
        } else {
            format!("{pair}, {mode}")
        };
        println!(
            "| {label} | {conns} | {} | {} | **{}×** | {} | {} | **{}×** | {} / {} | {} / {} | {}× | {n_c}+{n_r} | {errors} |",
            fmt_num(c_rps),
            fmt_num(r_rps),
            fmt_num(ratio(c_rps, r_rps)),
            fmt_num(c_cpu),
            fmt_num(r_cpu),
            fmt_num(ratio(c_cpu, r_cpu)),
            fmt_num(c50),
            fmt_num(c99),
            fmt_num(r50),
            fmt_num(r99),
            fmt_num(ratio(c99, r99)),
        );
        tp.push(json!({
            "pair": pair, "mode": mode, "connections": conns,
            "certline_rps": c_rps, "redis_rps": r_rps, "rps_ratio": ratio(c_rps, r_rps),
            "certline_cpu_us_per_request": c_cpu, "redis_cpu_us_per_request": r_cpu,
            "cpu_ratio": ratio(c_cpu, r_cpu),
            "certline_p50_us": c50, "certline_p99_us": c99,
            "redis_p50_us": r50, "redis_p99_us": r99, "p99_ratio": ratio(c99, r99),
            "certline_runs": n_c, "redis_runs": n_r, "errors": errors,
        }));
    }
    summary.insert("throughput".into(), Value::Array(tp));
    summary.insert("with_database".into(), Value::Array(db_report(&groups)));

    // Everything else: one figure per server, compared as certline/Redis.
    // (kind, label, unit, how to get the figure from a row)
    type Figure = fn(&Value) -> Option<f64>;
    let others: [(&str, &str, &str, Figure); 6] = [
        ("rss", "RSS per idle connection", "bytes", |r| {
            let (base, loaded, n) = (
                r["baseline_kb"].as_f64()?,
                r["loaded_kb"].as_f64()?,
                r["connections"].as_f64()?,
            );
            Some((loaded - base) * 1024.0 / n)
        }),
        ("disk", "disk per stored domain", "bytes", |r| {
            Some(r["bytes"].as_f64()? / r["domains"].as_f64()?)
        }),
        ("startup", "start-up with domains stored", "ms", |r| {
            r["ms"].as_f64()
        }),
        ("syncs", "sync calls per ack", "calls", |r| {
            let calls = r["calls"].as_f64()? - r["baseline_calls"].as_f64().unwrap_or(0.0);
            Some(calls / r["acks"].as_f64()?)
        }),
        ("load", "bulk load (relaxed / everysec)", "req/s", |r| {
            r["throughput_rps"].as_f64()
        }),
        ("load", "bulk load: server CPU per request", "µs", |r| {
            r["server"]["cpu_us_per_request"].as_f64()
        }),
    ];
    println!();
    println!("| measure | detail | certline | Redis | **certline/Redis** | runs |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut other_rows = Vec::new();
    for (kind, label, unit, figure) in others {
        let mut by_detail: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r["kind"] == kind) {
            by_detail
                .entry(r["detail"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(r);
        }
        for (detail, runs) in by_detail {
            let pick = |server: &str| {
                median(
                    runs.iter()
                        .filter(|r| r["server"] == server)
                        .filter_map(|r| figure(r))
                        .collect(),
                )
            };
            let (c, r) = (pick("certline"), pick("redis"));
            println!(
                "| {label} ({unit}) | {detail} | {} | {} | **{}×** | {} |",
                fmt_num(c),
                fmt_num(r),
                fmt_num(ratio(c, r)),
                runs.len()
            );
            other_rows.push(json!({
                "kind": kind, "measure": label, "unit": unit, "detail": detail,
                "certline": c, "redis": r, "ratio": ratio(c, r),
            }));
        }
    }
    summary.insert("other".into(), Value::Array(other_rows));
    summary.insert("list".into(), Value::Array(list_report(&rows)));
    summary.insert("raw".into(), Value::Array(rows.clone()));
    if let Some(out) = json_out {
        std::fs::write(out, serde_json::to_string_pretty(&Value::Object(summary))?)?;
    }
    Ok(())
}
