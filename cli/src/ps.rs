//! `vm ps` and `vm inspect`: containers as Docker shows them, with its
//! columns, filters, Go-template `--format` and inspect's JSON shape.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use runtime::container::{self, Container, State, Status};
use serde_json::{json, Value};

use crate::template::{tabwrite, Template};

/// Docker's human durations ("About a minute", "3 hours").
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let mins = secs / 60;
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if mins == 1 => "About a minute".into(),
        _ if mins < 60 => format!("{mins} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 14 => format!("{} days", hours / 24),
        _ if hours < 24 * 60 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 730 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

pub fn ago(t: &str) -> String {
    container::since(t)
        .map(|d| format!("{} ago", human_duration(d)))
        .unwrap_or_default()
}

/// The STATUS column.
pub fn status_text(s: &State) -> String {
    let up = || {
        container::since(&s.started_at)
            .map(human_duration)
            .unwrap_or_default()
    };
    // Docker's health note, while it runs.
    let health = match s.health.as_ref().map(|h| h.status.as_str()) {
        Some("starting") => " (health: starting)".to_string(),
        Some(h) => format!(" ({h})"),
        None => String::new(),
    };
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}{health}", up()),
        Status::Paused => format!("Up {} (Paused)", up()),
        Status::Restarting => format!("Restarting ({}) {}", s.exit_code, ago(&s.finished_at)),
        Status::Exited => format!("Exited ({}) {}", s.exit_code, ago(&s.finished_at)),
        Status::Dead => "Dead".into(),
    }
}

/// "2026-11-30 15:40:00 +0000 UTC" from an RFC 3339 time.
pub fn docker_time(t: &str) -> String {
    let (date, rest) = t.split_once('T').unwrap_or((t, ""));
    let time = rest.get(..8).unwrap_or(rest);
    format!("{date} {time} +0000 UTC")
}

fn command_text(c: &Container, full: bool) -> String {
    let cmd = crate::escape(&c.config.process.args.join(" "));
    if full || cmd.chars().count() <= 20 {
        return format!("\"{cmd}\"");
    }
    let short: String = cmd.chars().take(19).collect();
    format!("\"{short}…\"")
}

/// One container as `ps` templates see it (Docker's field names).
fn ps_value(c: &Container, s: &State, no_trunc: bool) -> Value {
    let labels: Vec<String> = c
        .config
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    json!({
        "ID": if no_trunc { c.config.id.clone() } else { c.short_id().to_string() },
        "Image": c.config.image,
        "Command": command_text(c, no_trunc),
        "CreatedAt": docker_time(&c.config.created),
        "RunningFor": ago(&c.config.created),
        "Ports": ports_text(s),
        "State": s.status.as_str(),
        "Status": status_text(s),
        "Size": "",
        "Names": c.config.name,
        "Labels": labels.join(","),
        "Mounts": "",
        "Networks": c.config.network.endpoints().iter().map(|e| e.network.as_str()).collect::<Vec<_>>().join(","),
    })
}

/// The published ports of a running container, as `docker ps` writes
/// them: `0.0.0.0:8080->80/tcp, 0.0.0.0:5353->53/udp`.
fn ports_text(s: &State) -> String {
    running_network(s)
        .map(|n| {
            n.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn running_network(s: &State) -> Option<&runtime::network::Settings> {
    match s.status {
        Status::Running | Status::Paused => s.network.as_ref(),
        _ => None,
    }
}

/// `NetworkSettings` as `docker inspect` has it.
fn network_json(c: &Container, s: &State) -> Value {
    let n = running_network(s);
    let mut ports = serde_json::Map::new();
    for p in n.map(|n| n.ports.as_slice()).unwrap_or_default() {
        let key = format!("{}/{}", p.container_port, p.proto.as_str());
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({ "HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string() }));
        }
    }
    let ip = n
        .and_then(|n| n.ip)
        .map(|i| i.to_string())
        .unwrap_or_default();
    let gateway = n
        .and_then(|n| n.gateway)
        .map(|i| i.to_string())
        .unwrap_or_default();
    let prefix = n.map_or(0, |n| n.prefix);
    let mac = n.map(|n| n.mac.clone()).unwrap_or_default();
    // Every network the container joins; addresses while it runs.
    let mut networks = serde_json::Map::new();
    for e in c.config.network.endpoints() {
        let j = n.and_then(|n| n.networks.iter().find(|j| j.network == e.network));
        networks.insert(
            e.network.clone(),
            json!({
                "Aliases": e.aliases,
                "NetworkID": j.map(|j| j.network_id.clone()).unwrap_or_default(),
                "IPAddress": j.map(|j| j.ip.to_string()).unwrap_or_default(),
                "IPPrefixLen": j.map_or(0, |j| j.prefix),
                "Gateway": j.map(|j| j.gateway.to_string()).unwrap_or_default(),
                "MacAddress": j.map(|j| j.mac.clone()).unwrap_or_default(),
                "IPAMConfig": e.ip.map(|ip| json!({ "IPv4Address": ip.to_string() })),
            }),
        );
    }
    if c.config.network.mode == "none" {
        networks.insert("none".into(), json!({}));
    }
    json!({
        "Bridge": n.map(|n| n.bridge.clone()).unwrap_or_default(),
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "Gateway": gateway,
        "MacAddress": mac,
        "Ports": ports,
        "Networks": networks,
    })
}

#[derive(clap::Args)]
pub struct PortArgs {
    /// The container.
    container: String,
    /// Only this port: PORT[/tcp|/udp].
    port: Option<String>,
}

/// `vm port`: a running container's published ports.
pub fn port(args: PortArgs, root: Option<PathBuf>) -> ExitCode {
    let state = match runtime::state_root(root.as_deref()) {
        Ok(s) => s,
        Err(e) => return crate::fail(&e),
    };
    let c = match container::find(&state, &args.container) {
        Ok(c) => c,
        Err(e) => return crate::fail(&e),
    };
    let s = c.state();
    let ports = running_network(&s)
        .map(|n| n.ports.clone())
        .unwrap_or_default();
    let want = match args.port.as_deref().map(|p| {
        let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        n.parse::<u16>().ok().map(|n| (n, proto.to_string()))
    }) {
        Some(None) => {
            return crate::fail(&format!(
                "invalid port {:?}: use PORT or PORT/tcp, PORT/udp",
                args.port.unwrap_or_default()
            ))
        }
        Some(Some(w)) => Some(w),
        None => None,
    };
    let mut shown = 0;
    for p in &ports {
        match &want {
            Some((n, proto)) if (*n, proto.as_str()) != (p.container_port, p.proto.as_str()) => {}
            Some(_) => {
                println!("{}:{}", p.host_ip, p.host_port);
                shown += 1;
            }
            None => {
                println!(
                    "{}/{} -> {}:{}",
                    p.container_port,
                    p.proto.as_str(),
                    p.host_ip,
                    p.host_port
                );
                shown += 1;
            }
        }
    }
    if let (Some(p), 0) = (&args.port, shown) {
        return crate::fail(&format!(
            "no public port '{p}' published for {}",
            args.container
        ));
    }
    ExitCode::SUCCESS
}

#[derive(clap::Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The last N created containers (all states).
    #[arg(short = 'n', long = "last", value_name = "N")]
    last: Option<usize>,
    /// The latest created container (all states).
    #[arg(short = 'l', long)]
    latest: bool,
    /// Do not truncate output.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Filter: status=, name=, id=, label=KEY[=VALUE], ancestor=, network=.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// `table` (default), `json`, or a Go template.
    #[arg(long)]
    format: Option<String>,
}

/// Filters: values of one key are alternatives; keys must all match.
fn matches(
    state: &std::path::Path,
    filters: &HashMap<String, Vec<String>>,
    c: &Container,
    s: &State,
) -> bool {
    filters.iter().all(|(key, values)| {
        values.iter().any(|v| match key.as_str() {
            "status" => s.status.as_str() == v,
            "name" => c.config.name.contains(v.trim_start_matches('/')),
            "id" => c.config.id.starts_with(v.as_str()),
            "label" => match v.split_once('=') {
                Some((k, val)) => c.config.labels.get(k).is_some_and(|x| x == val),
                None => c.config.labels.contains_key(v),
            },
            "network" => {
                let wanted = runtime::network::net::find(state, v)
                    .map(|n| n.name)
                    .unwrap_or_else(|_| v.clone());
                c.config
                    .network
                    .endpoints()
                    .iter()
                    .any(|e| e.network == wanted)
            }
            "ancestor" => {
                let bare = |s: &str| {
                    s.trim_start_matches("docker.io/")
                        .trim_start_matches("library/")
                        .trim_end_matches(":latest")
                        .to_string()
                };
                bare(&c.config.image) == bare(v)
                    || c.config
                        .image_id
                        .trim_start_matches("sha256:")
                        .starts_with(v.trim_start_matches("sha256:"))
                    || c.config.image_digest == *v
            }
            _ => false,
        })
    })
}

fn parse_filters(raw: &[String]) -> Result<HashMap<String, Vec<String>>, String> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for f in raw {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("bad format of filter {f:?} (expected name=value)"))?;
        if !["status", "name", "id", "label", "ancestor", "network"].contains(&k) {
            return Err(format!(
                "invalid filter '{k}': use status, name, id, label, ancestor or network"
            ));
        }
        if k == "status"
            && ![
                "created",
                "restarting",
                "running",
                "removing",
                "paused",
                "exited",
                "dead",
            ]
            .contains(&v)
        {
            return Err(format!(
                "invalid filter 'status={v}': use created, restarting, running, removing, paused, exited or dead"
            ));
        }
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    Ok(out)
}

const PS_TABLE: &str =
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";

fn ps_headers() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("ID", "CONTAINER ID"),
        ("Image", "IMAGE"),
        ("Command", "COMMAND"),
        ("CreatedAt", "CREATED AT"),
        ("RunningFor", "CREATED"),
        ("Ports", "PORTS"),
        ("State", "STATE"),
        ("Status", "STATUS"),
        ("Size", "SIZE"),
        ("Names", "NAMES"),
        ("Labels", "LABELS"),
        ("Mounts", "MOUNTS"),
        ("Networks", "NETWORKS"),
    ])
}

/// Prints values through a `--format`: `table` (with `default`), `json`,
/// or a template; a `table` template gets a header and aligned columns.
pub fn print_formatted(
    values: &[Value],
    format: Option<&str>,
    default: &str,
    headers: &HashMap<&str, &str>,
) -> Result<(), String> {
    print!("{}", format_values(values, format, default, headers)?);
    Ok(())
}

/// What [`print_formatted`] prints.
pub fn format_values(
    values: &[Value],
    format: Option<&str>,
    default: &str,
    headers: &HashMap<&str, &str>,
) -> Result<String, String> {
    let src = match format {
        None | Some("table") => default,
        Some("json") => {
            return Ok(values.iter().map(|v| format!("{v}\n")).collect());
        }
        Some(f) => f,
    };
    let t = Template::parse(src).map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    if t.is_table() {
        lines.push(t.render_header(headers));
    }
    for v in values {
        lines.push(t.render(v).map_err(|e| e.to_string())?);
    }
    if t.is_table() {
        Ok(tabwrite(&lines))
    } else {
        Ok(lines.into_iter().map(|l| l + "\n").collect())
    }
}

pub fn ps(args: PsArgs, root: Option<PathBuf>) -> ExitCode {
    let run = || -> Result<(), String> {
        let state = runtime::state_root(root.as_deref())?;
        let filters = parse_filters(&args.filter)?;
        let mut rows = Vec::new();
        let last = if args.latest { Some(1) } else { args.last };
        for c in container::list(&state) {
            let s = c.state();
            if !args.all && last.is_none() && !filters.contains_key("status") && !s.status.is_live()
            {
                continue;
            }
            if !matches(&state, &filters, &c, &s) {
                continue;
            }
            rows.push((c, s));
        }
        if let Some(n) = last {
            rows.truncate(n);
        }
        if args.quiet {
            for (c, _) in &rows {
                println!(
                    "{}",
                    if args.no_trunc {
                        c.config.id.as_str()
                    } else {
                        c.short_id()
                    }
                );
            }
            return Ok(());
        }
        let values: Vec<Value> = rows
            .iter()
            .map(|(c, s)| ps_value(c, s, args.no_trunc))
            .collect();
        print_formatted(&values, args.format.as_deref(), PS_TABLE, &ps_headers())
    };
    crate::images::finish(run())
}

/// `inspect`'s `Mounts`: volumes and bind mounts (tmpfs mounts are in
/// `HostConfig.Tmpfs`, as Docker shows them).
fn mounts_json(state: &std::path::Path, cfg: &runtime::container::Config) -> Vec<Value> {
    use runtime::volume::Kind;
    cfg.mounts
        .iter()
        .filter(|m| m.kind != Kind::Tmpfs)
        .map(|m| {
            let mut v = json!({
                "Type": m.kind.name(),
                "Source": match m.kind {
                    Kind::Volume => runtime::volume::data_dir(state, &m.source).display().to_string(),
                    _ => m.source.clone(),
                },
                "Destination": m.target,
                "Mode": m.mode(),
                "RW": !m.read_only,
                "Propagation": if m.kind == Kind::Bind { "rprivate" } else { "" },
            });
            if m.kind == Kind::Volume {
                v["Name"] = json!(m.source);
                v["Driver"] = json!("local");
            }
            v
        })
        .collect()
}

/// Docker's options string for a tmpfs mount.
fn tmpfs_options(m: &runtime::volume::Mount) -> Value {
    let mut o = vec![if m.read_only { "ro" } else { "rw" }.to_string()];
    if !m.tmpfs_exec {
        o.push("noexec".into());
    }
    o.push("nosuid".into());
    o.push("nodev".into());
    if m.tmpfs_size > 0 {
        o.push(format!("size={}", m.tmpfs_size));
    }
    if let Some(mode) = m.tmpfs_mode {
        o.push(format!("mode={mode:o}"));
    }
    json!(o.join(","))
}

/// A container as `vm inspect` shows it: Docker's shape, for the fields
/// that apply.
pub fn inspect_value(state: &std::path::Path, c: &Container) -> Value {
    let s = c.state();
    let cfg = &c.config;
    let p = &cfg.process;
    let (restart_name, restart_max) = cfg.restart.name_and_max();
    json!({
        "Id": cfg.id,
        "Created": cfg.created,
        "Path": p.args.first().cloned().unwrap_or_default(),
        "Args": p.args.iter().skip(1).cloned().collect::<Vec<_>>(),
        "State": {
            "Status": s.status.as_str(),
            "Running": matches!(s.status, Status::Running | Status::Paused),
            "Paused": s.status == Status::Paused,
            "Restarting": s.status == Status::Restarting,
            "OOMKilled": false,
            "Dead": s.status == Status::Dead,
            "Pid": s.pid,
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": s.started_at,
            "FinishedAt": s.finished_at,
            "Health": s.health.as_ref().map(|h| json!({
                "Status": h.status,
                "FailingStreak": h.failing_streak,
                "Log": h.log.iter().map(|p| json!({
                    "Start": p.start, "End": p.end, "ExitCode": p.exit_code, "Output": p.output,
                })).collect::<Vec<_>>(),
            })),
        },
        "Image": cfg.image_id,
        "NetworkSettings": network_json(c, &s),
        "Mounts": mounts_json(state, cfg),
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": c.log_path().display().to_string(),
        "Name": format!("/{}", cfg.name),
        "RestartCount": s.restart_count,
        "Driver": "microvm",
        "Platform": "linux",
        "HostConfig": {
            "LogConfig": {
                "Type": "json-file",
                "Config": {
                    "max-size": cfg.log.max_size.to_string(),
                    "max-file": cfg.log.max_files.to_string(),
                },
            },
            "RestartPolicy": { "Name": restart_name, "MaximumRetryCount": restart_max },
            "AutoRemove": cfg.auto_remove,
            "ReadonlyRootfs": cfg.read_only,
            "StorageOpt": match cfg.scratch_mib {
                Some(mib) => json!({ "size": format!("{mib}m") }),
                None => Value::Null,
            },
            "BlkioWeight": cfg.limits.blkio_weight.unwrap_or(0),
            "DiskRateLimits": {
                "Bps": rate_json(cfg.limits.disk_bps),
                "Iops": rate_json(cfg.limits.disk_iops),
            },
            "VsockRateLimits": {
                "Bps": rate_json(cfg.limits.vsock_bps),
                "Ops": rate_json(cfg.limits.vsock_ops),
            },
            "NetworkMode": cfg.network.mode,
            "PortBindings": port_bindings(&cfg.network.ports),
            "Dns": cfg.network.dns,
            "DnsSearch": cfg.network.dns_search,
            "DnsOptions": cfg.network.dns_options,
            "ExtraHosts": cfg.network.add_hosts.iter().map(|(n, a)| format!("{n}:{a}")).collect::<Vec<_>>(),
            "Binds": cfg.mounts.iter().filter(|m| m.kind != runtime::volume::Kind::Tmpfs && !m.anonymous).map(|m| {
                let mode = m.mode();
                if mode.is_empty() { format!("{}:{}", m.source, m.target) } else { format!("{}:{}:{mode}", m.source, m.target) }
            }).collect::<Vec<_>>(),
            "Tmpfs": cfg.mounts.iter().filter(|m| m.kind == runtime::volume::Kind::Tmpfs).map(|m| (m.target.clone(), tmpfs_options(m))).collect::<serde_json::Map<String, Value>>(),
            "Memory": cfg.memory_mib << 20,
            "MemoryReservation": cfg.memory_reservation.unwrap_or(0),
            "MemorySwap": cfg.memory_swap.unwrap_or(0),
            "CpusetCpus": cfg.cpuset_cpus.clone().unwrap_or_default(),
            "NanoCpus": u64::from(cfg.cpus) * 1_000_000_000,
            "Runtime": "vm",
        },
        "Config": {
            "Hostname": cfg.hostname,
            "User": p.user,
            "AttachStdin": false,
            "Tty": p.terminal,
            "OpenStdin": p.stdin,
            "Env": p.env,
            "Cmd": cfg.cmd,
            "Image": cfg.image,
            "WorkingDir": p.cwd,
            "Entrypoint": if cfg.entrypoint.is_empty() { Value::Null } else { json!(cfg.entrypoint) },
            "Labels": cfg.labels,
            "StopSignal": signal_name(cfg.stop_signal),
            "StopTimeout": cfg.stop_timeout,
            "Healthcheck": cfg.healthcheck.as_ref().map(|h| json!({
                "Test": h.test,
                "Interval": h.interval.as_nanos() as u64,
                "Timeout": h.timeout.as_nanos() as u64,
                "StartPeriod": h.start_period.as_nanos() as u64,
                "Retries": h.retries,
            })),
        },
        "VmConfig": {
            "Cpus": cfg.cpus,
            "MemoryMiB": cfg.memory_mib,
            "ImageDigest": cfg.image_digest,
            "MonitorLog": c.monitor_log_path().display().to_string(),
            "ControlSocket": c.control_socket(state).display().to_string(),
        },
    })
}

/// `-p` as given, keyed by the container's port.
fn port_bindings(ports: &[runtime::network::ports::PortSpec]) -> Value {
    let mut m = serde_json::Map::new();
    for p in ports {
        let key = format!("{}/{}", p.container_port, p.proto.as_str());
        let entry = m.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            let port = if p.host_port == 0 {
                String::new()
            } else {
                p.host_port.to_string()
            };
            let ip = if p.host_ip.is_unspecified() {
                String::new()
            } else {
                p.host_ip.to_string()
            };
            a.push(json!({ "HostIp": ip, "HostPort": port }));
        }
    }
    Value::Object(m)
}

fn signal_name(n: i32) -> String {
    nix::sys::signal::Signal::try_from(n)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| n.to_string())
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Format with a Go template (`{{.State.Status}}`, `{{json .Config}}`).
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Only look for this kind of object: container or image.
    #[arg(long = "type", value_parser = ["container", "image"])]
    kind: Option<String>,
    #[arg(required = true)]
    names: Vec<String>,
}

/// `vm inspect`: containers, else images, by name or ID.
pub fn inspect(args: InspectArgs, root: Option<PathBuf>) -> ExitCode {
    let state = match runtime::state_root(root.as_deref()) {
        Ok(s) => s,
        Err(e) => return crate::fail(&e),
    };
    let mut values = Vec::new();
    let mut failed = false;
    for n in &args.names {
        let found = if args.kind.as_deref() != Some("image") {
            container::find(&state, n)
                .ok()
                .map(|c| inspect_value(&state, &c))
        } else {
            None
        };
        let found = found.or_else(|| {
            if args.kind.as_deref() == Some("container") {
                return None;
            }
            let store = vm_image::store::Store::open(&state).ok()?;
            crate::images::image_json(&store, n).ok()
        });
        match found {
            Some(v) => values.push(v),
            None => {
                eprintln!("vm: error: No such object: {n}");
                failed = true;
            }
        }
    }
    print_inspected(&values, args.format.as_deref(), failed)
}

/// What `inspect` found, as a JSON array or through a template each;
/// status 125 if some were not found (`failed`).
pub fn print_inspected(values: &[Value], format: Option<&str>, failed: bool) -> ExitCode {
    let printed = match format {
        None => serde_json::to_string_pretty(values)
            .map(|t| println!("{t}"))
            .map_err(|e| e.to_string()),
        Some(f) => Template::parse(f).map_err(|e| e.to_string()).and_then(|t| {
            for v in values {
                println!("{}", t.render(v).map_err(|e| e.to_string())?);
            }
            Ok(())
        }),
    };
    if let Err(e) = printed {
        return crate::fail(&e);
    }
    if failed {
        ExitCode::from(crate::EXIT_VM_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// A rate limit for `inspect`: per second and the one-time burst.
fn rate_json(r: Option<runtime::limits::Rate>) -> Value {
    match r {
        Some(r) => json!({ "PerSecond": r.per_second, "Burst": r.burst }),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_as_dockers() {
        let d = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(d(1)), "1 second");
        assert_eq!(human_duration(d(59)), "59 seconds");
        assert_eq!(human_duration(d(60)), "About a minute");
        assert_eq!(human_duration(d(180)), "3 minutes");
        assert_eq!(human_duration(d(3600)), "About an hour");
        assert_eq!(human_duration(d(5 * 3600)), "5 hours");
        assert_eq!(human_duration(d(3 * 86400)), "3 days");
        assert_eq!(human_duration(d(20 * 86400)), "2 weeks");
    }

    #[test]
    fn filters_parse_and_refuse() {
        let f = parse_filters(&["status=exited".into(), "name=web".into()]).expect("ok");
        assert_eq!(f["status"], vec!["exited".to_string()]);
        assert!(parse_filters(&["status=sleeping".into()]).is_err());
        assert!(parse_filters(&["colour=red".into()]).is_err());
        assert!(parse_filters(&["status".into()]).is_err());
    }

    #[test]
    fn times_in_dockers_words() {
        assert_eq!(
            docker_time("2026-11-30T15:40:01.123456789Z"),
            "2026-11-30 15:40:01 +0000 UTC"
        );
    }
}
