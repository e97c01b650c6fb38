//! `vm volume create|ls|inspect|rm|prune`: Docker's volume commands over
//! the runtime's volumes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use runtime::volume::{self, Volume};
use serde_json::{json, Value};

use crate::images::finish;
use crate::ps::print_formatted;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a random name when none is given).
    Create(CreateArgs),
    /// List volumes.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show volumes as JSON.
    Inspect(InspectArgs),
    /// Remove volumes (refused while a container uses one).
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove the anonymous volumes no container uses (-a: every unused
    /// volume).
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The driver: `local`, the only one there is.
    #[arg(short = 'd', long, default_value = "local")]
    driver: String,
    /// KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Driver options: the local driver here takes none.
    #[arg(short = 'o', long = "opt")]
    opts: Vec<String>,
    #[arg(long = "name", hide = true)]
    name_flag: Option<String>,
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Only names.
    #[arg(short, long)]
    quiet: bool,
    /// Filter: name=, label=KEY[=VALUE], dangling=true|false, driver=.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// `table` (default), `json`, or a Go template.
    #[arg(long)]
    format: Option<String>,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A Go template for each volume.
    #[arg(short, long)]
    format: Option<String>,
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// No error for a volume that does not exist.
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Every unused volume, not only anonymous ones.
    #[arg(short, long)]
    all: bool,
    /// Filter: label=KEY[=VALUE], label!=KEY[=VALUE].
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
}

pub fn main(c: VolumeCommand, root: Option<PathBuf>) -> ExitCode {
    let state = match crate::containers::state(root) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match c {
        VolumeCommand::Create(a) => create(a, &state),
        VolumeCommand::Ls(a) => finish(ls(a, &state)),
        VolumeCommand::Inspect(a) => inspect(a, &state),
        VolumeCommand::Rm(a) => rm(a, &state),
        VolumeCommand::Prune(a) => prune(a, &state),
    }
}

fn labels_of(list: &[String]) -> BTreeMap<String, String> {
    list.iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn create(a: CreateArgs, state: &Path) -> ExitCode {
    if a.driver != "local" {
        return crate::fail(&format!(
            "volume driver {:?} is not available: only \"local\" is",
            a.driver
        ));
    }
    if let Some(o) = a.opts.first() {
        return crate::fail(&format!(
            "volume option {o:?} is not supported: the local driver here keeps a directory in the state root and takes no options"
        ));
    }
    let name = match (a.name, a.name_flag) {
        (Some(x), Some(y)) if x != y => {
            return crate::fail(&format!(
                "conflicting options: either specify --name or provide positional arg, not both ({x:?}, {y:?})"
            ))
        }
        (x, y) => x.or(y),
    };
    match volume::create(state, name.as_deref(), &labels_of(&a.labels), false) {
        Ok(v) => {
            println!("{}", v.name);
            ExitCode::SUCCESS
        }
        Err(e) => crate::runtime_error(&e),
    }
}

/// Whether `labels` match a `label=` filter value (KEY or KEY=VALUE).
fn label_matches(labels: &BTreeMap<String, String>, v: &str) -> bool {
    match v.split_once('=') {
        Some((k, val)) => labels.get(k).is_some_and(|x| x == val),
        None => labels.contains_key(v),
    }
}

fn ls(a: LsArgs, state: &Path) -> Result<(), String> {
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    for f in &a.filter {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("bad format of filter {f:?} (expected name=value)"))?;
        if !["name", "label", "dangling", "driver"].contains(&k) {
            return Err(format!(
                "invalid filter '{k}': use name, label, dangling or driver"
            ));
        }
        if k == "dangling" && !["true", "false", "1", "0"].contains(&v) {
            return Err(format!("invalid filter 'dangling={v}': use true or false"));
        }
        filters.entry(k.into()).or_default().push(v.into());
    }
    let used = volume::usage(state);
    let links = |v: &Volume| used.get(&v.name).copied().unwrap_or(0);
    let volumes: Vec<Volume> = volume::list(state)
        .into_iter()
        .filter(|vol| {
            filters.iter().all(|(k, vs)| {
                vs.iter().any(|v| match k.as_str() {
                    "name" => vol.name.contains(v.as_str()),
                    "label" => label_matches(&vol.labels, v),
                    "dangling" => (links(vol) == 0) == (v == "true" || v == "1"),
                    "driver" => v == "local",
                    _ => false,
                })
            })
        })
        .collect();
    if a.quiet {
        for v in &volumes {
            println!("{}", v.name);
        }
        return Ok(());
    }
    let values: Vec<Value> = volumes
        .iter()
        .map(|v| {
            json!({
                "Name": v.name,
                "Driver": "local",
                "Scope": "local",
                "Mountpoint": v.mountpoint.display().to_string(),
                "Labels": v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                "Links": links(v).to_string(),
            })
        })
        .collect();
    let headers = HashMap::from([
        ("Name", "VOLUME NAME"),
        ("Driver", "DRIVER"),
        ("Scope", "SCOPE"),
        ("Mountpoint", "MOUNTPOINT"),
        ("Labels", "LABELS"),
        ("Links", "LINKS"),
    ]);
    print_formatted(
        &values,
        a.format.as_deref(),
        "table {{.Driver}}\t{{.Name}}",
        &headers,
    )
}

/// A volume as `docker volume inspect` shows it.
fn inspect_value(v: &Volume) -> Value {
    json!({
        "CreatedAt": v.created,
        "Driver": "local",
        "Labels": v.labels,
        "Mountpoint": v.mountpoint.display().to_string(),
        "Name": v.name,
        "Options": {},
        "Scope": "local",
    })
}

fn inspect(a: InspectArgs, state: &Path) -> ExitCode {
    let mut values = Vec::new();
    let mut failed = false;
    for name in &a.names {
        match volume::get(state, name) {
            Ok(v) => values.push(inspect_value(&v)),
            Err(e) => {
                eprintln!("vm: error: {}", e.message);
                failed = true;
            }
        }
    }
    crate::ps::print_inspected(&values, a.format.as_deref(), failed)
}

fn rm(a: RmArgs, state: &Path) -> ExitCode {
    crate::containers::each_name(&a.names, |name| match volume::remove(state, name) {
        // -f: a volume that is not there is no error (and echoed, as
        // Docker does).
        Err(e) if a.force && e.kind == runtime::Kind::NotFound => Ok(None),
        r => r.map(|()| None),
    })
}

/// Removes unused volumes (anonymous ones unless `all`) that the
/// `label=`/`label!=` filters pick; prints what went and the space freed.
pub fn prune_unused(state: &Path, all: bool, filters: &[String]) -> Result<(), String> {
    let mut want = Vec::new();
    for f in filters {
        match f.split_once('=') {
            Some(("label", v)) => want.push((true, v.to_string())),
            Some(("label!", v)) => want.push((false, v.to_string())),
            Some(("all", v)) if v == "true" || v == "1" => {}
            _ => return Err(format!("invalid filter {f:?}: use label=... or label!=...")),
        }
    }
    let all = all || filters.iter().any(|f| f == "all=true" || f == "all=1");
    let keep = |v: &Volume| {
        !want
            .iter()
            .all(|(is, l)| label_matches(&v.labels, l) == *is)
    };
    let (gone, bytes) = volume::prune(state, all, &keep).map_err(|e| e.message)?;
    if !gone.is_empty() {
        println!("Deleted Volumes:");
        for n in &gone {
            println!("{n}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", crate::images::human(bytes));
    Ok(())
}

fn prune(a: PruneArgs, state: &Path) -> ExitCode {
    let warning = if a.all {
        "WARNING! This will remove all local volumes not used by at least one container."
    } else {
        "WARNING! This will remove anonymous local volumes not used by at least one container."
    };
    if !a.force && !crate::images::confirm(warning) {
        return ExitCode::SUCCESS;
    }
    finish(prune_unused(state, a.all, &a.filter))
}
