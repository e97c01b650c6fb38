//! `vm network create|ls|inspect|rm|prune|connect|disconnect`: Docker's
//! network commands over the runtime's networks.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use runtime::container::{self, Status};
use runtime::network::net::{self, Net};
use serde_json::{json, Value};

use crate::images::finish;
use crate::ps::print_formatted;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network: a bridge of its own, with its own subnet and DNS.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks as JSON.
    Inspect(InspectArgs),
    /// Remove networks.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove the user-defined networks no container uses.
    Prune(crate::containers::PruneArgs),
    /// Connect a stopped container to a network (from its next start).
    Connect(ConnectArgs),
    /// Disconnect a stopped container from a network.
    Disconnect(DisconnectArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The driver: `bridge`, the only one there is.
    #[arg(short = 'd', long, default_value = "bridge")]
    driver: String,
    /// The subnet, as 10.50.0.0/24 (default: a free /24 of 10.214.0.0/15).
    #[arg(long)]
    subnet: Option<String>,
    /// The gateway (the host's address on the network; default: the
    /// subnet's first).
    #[arg(long)]
    gateway: Option<String>,
    /// No way out: no NAT, no routing, no published ports.
    #[arg(long)]
    internal: bool,
    /// KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    name: String,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Only IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate IDs.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Filter: name=, id=, label=KEY[=VALUE], driver=, type=custom|builtin.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// `table` (default), `json`, or a Go template.
    #[arg(long)]
    format: Option<String>,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A Go template for each network.
    #[arg(short, long)]
    format: Option<String>,
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct RmArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// The container's address on the network.
    #[arg(long)]
    ip: Option<String>,
    /// Another name the container has on the network.
    #[arg(long = "alias")]
    aliases: Vec<String>,
    network: String,
    container: String,
}

#[derive(clap::Args)]
pub struct DisconnectArgs {
    /// Accepted for Docker's sake: a stopped container has nothing to force.
    #[arg(short, long)]
    force: bool,
    network: String,
    container: String,
}

pub fn main(c: NetworkCommand, root: Option<PathBuf>) -> ExitCode {
    let state = match crate::containers::state(root) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match c {
        NetworkCommand::Create(a) => create(a, &state),
        NetworkCommand::Ls(a) => finish(ls(a, &state)),
        NetworkCommand::Inspect(a) => inspect(a, &state),
        NetworkCommand::Rm(a) => rm(a, &state),
        NetworkCommand::Prune(a) => prune(a, &state),
        NetworkCommand::Connect(a) => connect(a, &state),
        NetworkCommand::Disconnect(a) => disconnect(a, &state),
    }
}

fn create(a: CreateArgs, state: &Path) -> ExitCode {
    if a.driver != "bridge" {
        return crate::fail(&format!(
            "network driver {:?} is not supported: networks here are bridges (--driver bridge)",
            a.driver
        ));
    }
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let o = net::CreateOptions {
        name: a.name,
        subnet: a.subnet,
        gateway: a.gateway,
        internal: a.internal,
        labels,
    };
    match net::create(state, &o) {
        Ok(n) => {
            println!("{}", n.id);
            ExitCode::SUCCESS
        }
        Err(e) => crate::runtime_error(&e),
    }
}

fn ls(a: LsArgs, state: &Path) -> Result<(), String> {
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    for f in &a.filter {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("bad format of filter {f:?} (expected name=value)"))?;
        if !["name", "id", "label", "driver", "type"].contains(&k) {
            return Err(format!(
                "invalid filter '{k}': use name, id, label, driver or type"
            ));
        }
        filters.entry(k.into()).or_default().push(v.into());
    }
    let nets: Vec<Net> = net::list(state)
        .into_iter()
        .filter(|n| {
            filters.iter().all(|(k, vs)| {
                vs.iter().any(|v| match k.as_str() {
                    "name" => n.name.contains(v.as_str()),
                    "id" => n.id.starts_with(v.as_str()),
                    "label" => match v.split_once('=') {
                        Some((k, val)) => n.labels.get(k).is_some_and(|x| x == val),
                        None => n.labels.contains_key(v),
                    },
                    "driver" => v == "bridge",
                    "type" => (v == "builtin") == n.is_default(),
                    _ => false,
                })
            })
        })
        .collect();
    let id = |n: &Net| {
        if a.no_trunc {
            n.id.clone()
        } else {
            n.id[..12.min(n.id.len())].to_string()
        }
    };
    if a.quiet {
        for n in &nets {
            println!("{}", id(n));
        }
        return Ok(());
    }
    let values: Vec<Value> = nets
        .iter()
        .map(|n| {
            json!({
                "ID": id(n),
                "Name": n.name,
                "Driver": "bridge",
                "Scope": "local",
                "Internal": n.internal.to_string(),
                "IPv6": "false",
                "CreatedAt": n.created,
                "Labels": n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            })
        })
        .collect();
    let headers = HashMap::from([
        ("ID", "NETWORK ID"),
        ("Name", "NAME"),
        ("Driver", "DRIVER"),
        ("Scope", "SCOPE"),
        ("Internal", "INTERNAL"),
        ("IPv6", "IPV6"),
        ("CreatedAt", "CREATED AT"),
        ("Labels", "LABELS"),
    ]);
    print_formatted(
        &values,
        a.format.as_deref(),
        "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}",
        &headers,
    )
}

/// A network as `docker network inspect` shows it.
fn inspect_value(state: &Path, n: &Net) -> Value {
    let mut containers = serde_json::Map::new();
    for c in net::users(state, n) {
        let s = c.state();
        if !matches!(s.status, Status::Running | Status::Paused) {
            continue;
        }
        let Some(j) = s
            .network
            .iter()
            .flat_map(|x| x.networks.iter())
            .find(|j| j.network == n.name)
        else {
            continue;
        };
        containers.insert(
            c.config.id.clone(),
            json!({
                "Name": c.config.name,
                "MacAddress": j.mac,
                "IPv4Address": format!("{}/{}", j.ip, j.prefix),
                "IPv6Address": "",
            }),
        );
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{ "Subnet": n.cidr(), "Gateway": n.gateway.to_string() }],
        },
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "Containers": containers,
        "Options": {
            "com.docker.network.bridge.name": n.bridge,
            "com.docker.network.driver.mtu": n.mtu().to_string(),
        },
        "Labels": n.labels,
    })
}

fn inspect(a: InspectArgs, state: &Path) -> ExitCode {
    let mut values = Vec::new();
    let mut failed = false;
    for name in &a.names {
        match net::find(state, name) {
            Ok(n) => values.push(inspect_value(state, &n)),
            Err(e) => {
                eprintln!("vm: error: {}", e.message);
                failed = true;
            }
        }
    }
    crate::ps::print_inspected(&values, a.format.as_deref(), failed)
}

fn rm(a: RmArgs, state: &Path) -> ExitCode {
    crate::containers::each_name(&a.names, |name| net::remove(state, name).map(|_| None))
}

/// Removes the user-defined networks no container (running or not)
/// names; returns their names.
pub fn prune_unused(state: &Path) -> Vec<String> {
    net::list(state)
        .into_iter()
        .filter(|n| !n.is_default() && net::users(state, n).is_empty())
        .filter_map(|n| net::remove(state, &n.id).ok().map(|n| n.name))
        .collect()
}

fn prune(a: crate::containers::PruneArgs, state: &Path) -> ExitCode {
    if !a.force
        && !crate::images::confirm(
            "WARNING! This will remove all custom networks not used by at least one container.",
        )
    {
        return ExitCode::SUCCESS;
    }
    let gone = prune_unused(state);
    if !gone.is_empty() {
        println!("Deleted Networks:");
        for n in gone {
            println!("{n}");
        }
    }
    ExitCode::SUCCESS
}

fn connect(a: ConnectArgs, state: &Path) -> ExitCode {
    let ip = match a.ip.as_deref().map(str::parse::<Ipv4Addr>).transpose() {
        Ok(ip) => ip,
        Err(_) => {
            return crate::fail(&format!(
                "--ip {:?} is not an IPv4 address",
                a.ip.unwrap_or_default()
            ))
        }
    };
    match container::find(state, &a.container)
        .and_then(|c| net::connect(state, &c, &a.network, ip, &a.aliases))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::runtime_error(&e),
    }
}

fn disconnect(a: DisconnectArgs, state: &Path) -> ExitCode {
    let _ = a.force;
    match container::find(state, &a.container).and_then(|c| net::disconnect(state, &c, &a.network))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::runtime_error(&e),
    }
}
