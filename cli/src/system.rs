//! `vm system df` and `vm system prune`: what the state root holds, and
//! removing what nothing uses.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use runtime::container::{self, Status};
use serde_json::{json, Value};
use vm_image::store::Store;

use crate::images::human;

#[derive(clap::Subcommand)]
pub enum SystemCommand {
    /// Disk space used by images, containers and cached root file systems.
    Df(DfArgs),
    /// Remove stopped containers, unused images and caches.
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct DfArgs {
    /// `table`, `json` or a Go template ({{.Type}}, {{.Size}}, ...).
    #[arg(long)]
    format: Option<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Remove every image no container uses, not only untagged ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Remove unused anonymous volumes too.
    #[arg(long)]
    volumes: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
}

pub fn main(c: SystemCommand, root: Option<PathBuf>) -> ExitCode {
    let state = match crate::containers::state(root) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match c {
        SystemCommand::Df(args) => df(&state, args),
        SystemCommand::Prune(args) => prune(&state, args),
    }
}

const DF_TABLE: &str = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}";

/// One row: total count, active count, bytes, reclaimable bytes.
fn df_row(kind: &str, total: usize, active: usize, size: u64, reclaimable: u64) -> Value {
    let pct = (reclaimable * 100)
        .checked_div(size)
        .map(|p| format!(" ({p}%)"))
        .unwrap_or_default();
    json!({
        "Type": kind,
        "TotalCount": total.to_string(),
        "Active": active.to_string(),
        "Size": human(size),
        "Reclaimable": format!("{}{pct}", human(reclaimable)),
    })
}

fn df(state: &Path, args: DfArgs) -> ExitCode {
    let containers = container::list(state);
    let used: HashSet<String> = containers
        .iter()
        .map(|c| c.config.image_digest.clone())
        .collect();
    let (mut images, mut images_active) = (0, 0);
    let mut blob_users: HashMap<String, (u64, bool)> = HashMap::new();
    let mut cache_keys: HashMap<String, bool> = HashMap::new();
    if let Ok(store) = Store::open(state) {
        let mut seen = HashSet::new();
        for e in store.list().unwrap_or_default() {
            if !seen.insert(e.manifest.to_string()) {
                continue;
            }
            let Ok(img) = store.entry_image(&e) else {
                continue;
            };
            images += 1;
            let active = used.contains(&e.manifest.to_string());
            images_active += usize::from(active);
            for l in &img.layers {
                let b = blob_users
                    .entry(l.digest.to_string())
                    .or_insert((l.source.size, false));
                b.1 |= active;
            }
            let k = cache_keys
                .entry(format!("{}.ext4", runtime::rootfs_cache::key(&img)))
                .or_insert(false);
            *k |= active;
        }
    }
    let images_size: u64 = blob_users.values().map(|b| b.0).sum();
    let images_free: u64 = blob_users.values().filter(|b| !b.1).map(|b| b.0).sum();

    let (mut c_size, mut c_free, mut running) = (0, 0, 0);
    for c in &containers {
        let size = crate::containers::dir_usage(&c.dir);
        c_size += size;
        if c.state().status.is_live() || c.state().status == Status::Paused {
            running += 1;
        } else {
            c_free += size;
        }
    }

    let (mut caches, mut caches_active, mut cache_size, mut cache_free) = (0, 0, 0, 0);
    if let Ok(dir) = std::fs::read_dir(state.join("rootfs")) {
        use std::os::unix::fs::MetadataExt;
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".ext4") {
                continue;
            }
            let size = e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
            caches += 1;
            cache_size += size;
            match cache_keys.get(&name) {
                Some(true) => caches_active += 1,
                Some(false) => {}
                // No stored image unpacks to it: image prune removes it.
                None => cache_free += size,
            }
        }
    }
    // Volumes: active when a container (running or not) names one, as
    // Docker counts them; the unused ones are reclaimable.
    let (mut volumes, mut volumes_active, mut volume_size, mut volume_free) = (0, 0, 0, 0);
    let used = runtime::volume::usage(state);
    for v in runtime::volume::list(state) {
        let size = runtime::volume::disk_usage(&v.mountpoint);
        volumes += 1;
        volume_size += size;
        if !used.contains_key(&v.name) {
            volume_free += size;
        } else {
            volumes_active += 1;
        }
    }
    let rows = [
        df_row("Images", images, images_active, images_size, images_free),
        df_row("Containers", containers.len(), running, c_size, c_free),
        df_row(
            "Local Volumes",
            volumes,
            volumes_active,
            volume_size,
            volume_free,
        ),
        df_row(
            "Root FS Cache",
            caches,
            caches_active,
            cache_size,
            cache_free,
        ),
    ];
    let headers = HashMap::from([
        ("Type", "TYPE"),
        ("TotalCount", "TOTAL"),
        ("Active", "ACTIVE"),
        ("Size", "SIZE"),
        ("Reclaimable", "RECLAIMABLE"),
    ]);
    match crate::ps::print_formatted(&rows, args.format.as_deref(), DF_TABLE, &headers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(&e),
    }
}

fn prune(state: &Path, args: PruneArgs) -> ExitCode {
    let images_line = if args.all {
        "  - all images without at least one container associated to them"
    } else {
        "  - all dangling images"
    };
    let volumes_line = if args.volumes {
        "  - all anonymous volumes not used by at least one container\n"
    } else {
        ""
    };
    let warning = format!(
        "WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n{volumes_line}{images_line}\n  - all unpacked root file systems no remaining image uses\n"
    );
    if !args.force && !crate::images::confirm(&warning) {
        return ExitCode::SUCCESS;
    }
    let (ids, c_bytes) = crate::containers::prune_stopped(state);
    if !ids.is_empty() {
        println!("Deleted Containers:");
        for id in &ids {
            println!("{id}");
        }
        println!();
    }
    let nets = crate::network::prune_unused(state);
    if !nets.is_empty() {
        println!("Deleted Networks:");
        for n in &nets {
            println!("{n}");
        }
        println!();
    }
    let mut v_bytes = 0;
    if args.volumes {
        match runtime::volume::prune(state, false, &|_| false) {
            Ok((gone, bytes)) => {
                v_bytes = bytes;
                if !gone.is_empty() {
                    println!("Deleted Volumes:");
                    for v in &gone {
                        println!("{v}");
                    }
                    println!();
                }
            }
            Err(e) => return crate::runtime_error(&e),
        }
    }
    let p = match crate::images::prune_images(state, args.all) {
        Ok(p) => p,
        Err(e) => return crate::fail(&e),
    };
    crate::images::print_pruned_images(&p);
    println!("Total reclaimed space: {}", human(c_bytes + v_bytes + p.bytes));
    ExitCode::SUCCESS
}
