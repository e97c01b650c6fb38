//! `vm top` and `vm stats`: what runs in a container and what it uses,
//! as the guest sees it (the agent reads the guest's /proc).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::agent::{StatsSample, TopRow};
use runtime::container::{self, Container, Status};
use serde_json::{json, Value};

use crate::containers::one;
use crate::escape;

#[derive(clap::Args)]
pub struct TopArgs {
    container: String,
    /// ps options: only `-ef` (the default) is taken.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    ps_options: Vec<String>,
}

pub fn top(args: TopArgs, root: Option<PathBuf>) -> ExitCode {
    if args.ps_options.iter().any(|o| o != "-ef") {
        return crate::fail(&"vm top takes no ps options but -ef: the agent reads the container's processes itself");
    }
    let (state, c) = match one(root, &args.container) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let rows = match runtime::builtin::top(&state, &c) {
        Ok(r) => r,
        Err(e) => return crate::runtime_error(&e),
    };
    let now = now_secs();
    let mut lines = vec!["UID\tPID\tPPID\tC\tSTIME\tTTY\tTIME\tCMD".to_string()];
    for r in &rows {
        lines.push(top_line(r, now));
    }
    print!("{}", crate::template::tabwrite(&lines));
    ExitCode::SUCCESS
}

fn top_line(r: &TopRow, now: u64) -> String {
    let t = r.cpu_secs;
    // The guest's words, with no tab to fake a column either.
    let text = |s: &str| escape(s).replace('\t', "\\t");
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{:02}:{:02}:{:02}\t{}",
        text(&r.user),
        r.pid,
        r.ppid,
        r.cpu,
        start_time(r.started, now),
        text(&r.tty),
        t / 3600,
        t / 60 % 60,
        t % 60,
        text(&r.cmd)
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// As ps(1) shows STIME: `HH:MM` today, `MonDD` before (UTC).
fn start_time(secs: u64, now: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Past the year 9999 (only a guest's lie), there is no date to show.
    if secs > 253_402_300_799 {
        return "?".into();
    }
    let t = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string();
    // YYYY-MM-DDTHH:MM:SSZ
    if secs / 86400 == now / 86400 {
        return t.get(11..16).unwrap_or("?").to_string();
    }
    let month = t
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("?");
    format!("{month}{}", t.get(8..10).unwrap_or("?"))
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Show all containers (default: the running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// Print one sample and exit.
    #[arg(long)]
    no_stream: bool,
    /// Do not truncate IDs.
    #[arg(long)]
    no_trunc: bool,
    /// `table`, `json` or a Go template ({{.Name}}, {{.CPUPerc}}, ...).
    #[arg(long)]
    format: Option<String>,
    containers: Vec<String>,
}

const STATS_TABLE: &str = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";

fn stats_headers() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("ID", "CONTAINER ID"),
        ("Container", "CONTAINER"),
        ("Name", "NAME"),
        ("CPUPerc", "CPU %"),
        ("MemUsage", "MEM USAGE / LIMIT"),
        ("MemPerc", "MEM %"),
        ("NetIO", "NET I/O"),
        ("BlockIO", "BLOCK I/O"),
        ("PIDs", "PIDS"),
    ])
}

/// The last two samples of one container.
#[derive(Default, Clone)]
struct Seen {
    prev: Option<StatsSample>,
    cur: Option<StatsSample>,
    error: Option<String>,
}

type Table = Arc<Mutex<HashMap<String, Seen>>>;

pub fn stats(args: StatsArgs, root: Option<PathBuf>) -> ExitCode {
    let state = match crate::containers::state(root.clone()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let targets: Vec<(String, Container)> = if args.containers.is_empty() {
        container::list(&state)
            .into_iter()
            .filter(|c| args.all || c.state().status == Status::Running)
            .map(|c| (c.config.name.clone(), c))
            .collect()
    } else {
        let mut v = Vec::new();
        for n in &args.containers {
            match one(root.clone(), n) {
                Ok((_, c)) => v.push((n.clone(), c)),
                Err(code) => return code,
            }
        }
        v
    };
    let table: Table = Arc::default();
    let count = if args.no_stream { 2 } else { 0 };
    let mut threads = Vec::new();
    for (_, c) in &targets {
        if c.state().status != Status::Running {
            continue;
        }
        let (state, c, table) = (state.clone(), c.clone(), table.clone());
        let t = std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || sample(&state, &c, count, &table));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => return crate::fail(&format!("starting a stats thread: {e}")),
        }
    }
    let show = |table: &Table| {
        let g = table.lock().unwrap_or_else(|e| e.into_inner());
        let values: Vec<Value> = targets
            .iter()
            .map(|(given, c)| row(given, c, g.get(&c.config.id), args.no_trunc))
            .collect();
        drop(g);
        crate::ps::format_values(&values, args.format.as_deref(), STATS_TABLE, &stats_headers())
    };
    if args.no_stream {
        for t in threads {
            let _ = t.join();
        }
        let g = table.lock().unwrap_or_else(|e| e.into_inner());
        for (given, c) in &targets {
            if let Some(e) = g.get(&c.config.id).and_then(|s| s.error.as_ref()) {
                eprintln!("vm: error: {given}: {}", escape(e));
            }
        }
        drop(g);
        return match show(&table) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(&e),
        };
    }
    let clear = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let out = match show(&table) {
            Ok(s) => s,
            Err(e) => return crate::fail(&e),
        };
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        print!("{out}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if threads.iter().all(|t| t.is_finished()) && !threads.is_empty() {
            return ExitCode::SUCCESS;
        }
    }
}

fn sample(state: &std::path::Path, c: &Container, count: u32, table: &Table) {
    let id = c.config.id.clone();
    let mut each = |s: StatsSample| {
        let mut g = table.lock().unwrap_or_else(|e| e.into_inner());
        let seen = g.entry(id.clone()).or_default();
        seen.prev = seen.cur.take();
        seen.cur = Some(s);
        true
    };
    if let Err(e) = runtime::builtin::stats(state, c, 1000, count, &mut each) {
        let mut g = table.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(id).or_default().error = Some(e.message);
    }
}

/// Docker's stats row for one container.
fn row(given: &str, c: &Container, seen: Option<&Seen>, no_trunc: bool) -> Value {
    let id = if no_trunc {
        c.config.id.clone()
    } else {
        c.config.id.chars().take(12).collect()
    };
    let mut v = json!({
        "Container": given,
        "ID": id,
        "Name": c.config.name,
        "CPUPerc": "--",
        "MemUsage": "-- / --",
        "MemPerc": "--",
        "NetIO": "--",
        "BlockIO": "--",
        "PIDs": "--",
    });
    let Some(cur) = seen.and_then(|s| s.cur.as_ref()) else {
        return v;
    };
    let cpu = seen
        .and_then(|s| s.prev.as_ref())
        .map(|p| cpu_percent(p, cur))
        .unwrap_or(0.0);
    let used = cur.mem_total.saturating_sub(cur.mem_available);
    let mem_pct = if cur.mem_total > 0 {
        used as f64 / cur.mem_total as f64 * 100.0
    } else {
        0.0
    };
    v["CPUPerc"] = json!(format!("{cpu:.2}%"));
    v["MemUsage"] = json!(format!("{} / {}", binary(used), binary(cur.mem_total)));
    v["MemPerc"] = json!(format!("{mem_pct:.2}%"));
    v["NetIO"] = json!(format!(
        "{} / {}",
        crate::images::human(cur.net_rx),
        crate::images::human(cur.net_tx)
    ));
    v["BlockIO"] = json!(format!(
        "{} / {}",
        crate::images::human(cur.block_read),
        crate::images::human(cur.block_write)
    ));
    v["PIDs"] = json!(cur.pids.to_string());
    v
}

/// As Docker computes it: the share of all CPU time the guest was busy,
/// times its CPUs (so 2 busy CPUs show 200%).
fn cpu_percent(prev: &StatsSample, cur: &StatsSample) -> f64 {
    let busy = cur.cpu_busy.saturating_sub(prev.cpu_busy) as f64;
    let total = cur.cpu_total.saturating_sub(prev.cpu_total) as f64;
    if total <= 0.0 {
        return 0.0;
    }
    busy / total * f64::from(cur.cpus.max(1)) * 100.0
}

/// Sizes as Docker's stats shows memory: binary units.
fn binary(n: u64) -> String {
    let f = n as f64;
    let k = 1024.0;
    if f >= k * k * k {
        format!("{:.3}GiB", f / (k * k * k))
    } else if f >= k * k {
        format!("{:.2}MiB", f / (k * k))
    } else if f >= k {
        format!("{:.2}KiB", f / k)
    } else {
        format!("{n}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_times() {
        let a = StatsSample {
            cpu_busy: 10,
            cpu_total: 100,
            cpus: 2,
            ..StatsSample::default()
        };
        let b = StatsSample {
            cpu_busy: 60,
            cpu_total: 200,
            cpus: 2,
            ..StatsSample::default()
        };
        assert!((cpu_percent(&a, &b) - 100.0).abs() < 1e-9);
        assert_eq!(binary(3 * 1024 * 1024 / 2), "1.50MiB");
        assert_eq!(start_time(86400 * 3 + 3600 * 5 + 60 * 7, 86400 * 3 + 9000), "05:07");
        assert_eq!(start_time(0, 86400 * 40), "Jan01");
        assert_eq!(start_time(u64::MAX, 0), "?");
    }
}
