//! Image commands on the local store: `vm load`, `vm images`, `vm tag`,
//! `vm rmi`, `vm image inspect`, `vm save`.

use std::path::PathBuf;
use std::process::ExitCode;

use vm_image::name::Name;
use vm_image::store::{Entry, Store};

use runtime::state_root;

#[derive(clap::Args)]
pub struct LoadArgs {
    /// A docker-archive or oci-archive file, or an OCI layout directory.
    #[arg(short = 'i', long = "input", value_name = "PATH")]
    input: PathBuf,
}

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// `table` (default) or `json` (one object a line, like Docker's
    /// `--format json`).
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(clap::Args)]
pub struct TagArgs {
    /// The image to tag: a name, or an image ID as `vm images` shows it.
    source: String,
    /// The new name.
    target: String,
}

pub fn store(root: Option<PathBuf>) -> Result<Store, String> {
    let root = state_root(root.as_deref())?;
    Store::open(&root).map_err(|e| e.to_string())
}

pub fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm: error: {e}");
            ExitCode::from(crate::EXIT_VM_FAILED)
        }
    }
}

pub fn load(args: LoadArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let images = vm_image::open_path_all(&args.input)
            .map_err(|e| format!("{}: {e}", args.input.display()))?;
        for image in &images {
            let mut names = Vec::new();
            for n in &image.names {
                match Name::parse(n) {
                    Ok(n) => names.push(n),
                    Err(e) => {
                        eprintln!("vm: warning: {}: skipping name: {e}", args.input.display())
                    }
                }
            }
            let digest = store
                .add(image, &names)
                .map_err(|e| format!("{}: {e}", args.input.display()))?;
            if names.is_empty() {
                println!("Loaded image ID: {digest}");
            }
            for n in &names {
                println!(
                    "Loaded image: {}:{}",
                    n.familiar_repository(),
                    n.tag.as_deref().unwrap_or("latest")
                );
            }
        }
        Ok(())
    })())
}

pub fn images(args: ImagesArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let json = match args.format.as_str() {
            "table" => false,
            "json" => true,
            other => return Err(format!("unknown --format {other:?}; use table or json")),
        };
        let store = store(root)?;
        let entries = store.list().map_err(|e| e.to_string())?;
        if !json {
            println!(
                "{:<40} {:<16} {:<14} {:<22} {:>10}",
                "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
            );
        }
        // Newest first, as Docker lists them.
        let mut rows = Vec::new();
        for e in &entries {
            let img = store
                .entry_image(e)
                .map_err(|err| format!("{}: {err}", e.manifest))?;
            let (repo, tag) = match e.name.as_deref().map(Name::parse) {
                Some(Ok(n)) => (
                    n.familiar_repository(),
                    n.tag.clone().unwrap_or_else(|| "<none>".into()),
                ),
                _ => ("<none>".to_string(), "<none>".to_string()),
            };
            let id = vm_image::Digest::of_bytes(&img.raw_config.data);
            let size: u64 = img.layers.iter().map(|l| l.source.size).sum::<u64>()
                + img.raw_config.data.len() as u64;
            rows.push((img.created, repo, tag, id, e.manifest.clone(), size));
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2))));
        for (created, repo, tag, id, manifest, size) in rows {
            if json {
                let v = serde_json::json!({
                    "Repository": repo, "Tag": tag, "ID": id.to_string(),
                    "Digest": manifest.to_string(), "CreatedAt": created, "Size": size,
                });
                println!("{v}");
            } else {
                let when = created.get(..19).unwrap_or(&created).replace('T', " ");
                println!(
                    "{:<40} {:<16} {:<14} {:<22} {:>10}",
                    repo,
                    tag,
                    &id.hex()[..12],
                    when,
                    human(size)
                );
            }
        }
        Ok(())
    })())
}

pub fn tag(args: TagArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let dst = Name::parse(&args.target).map_err(|e| e.to_string())?;
        let image = match image_by_id(&store, &args.source)? {
            // An image ID (an untagged image has nothing else).
            Some(entry) => store.entry_image(&entry).map_err(|e| e.to_string())?,
            None => {
                let src = Name::parse(&args.source).map_err(|e| e.to_string())?;
                store.image(&src).map_err(|e| e.to_string())?
            }
        };
        store.add(&image, &[dst]).map_err(|e| e.to_string())?;
        Ok(())
    })())
}

/// Sizes as Docker prints them (decimal units).
pub fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}kB", f / 1e3)
    } else {
        format!("{n}B")
    }
}

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Images to remove: names, or image IDs (a prefix of at least four
    /// hex digits, as `vm images` shows them).
    #[arg(required = true)]
    names: Vec<String>,
    /// Remove an image given by ID even when it has several names, or
    /// one a running container uses.
    #[arg(short, long)]
    force: bool,
}

/// The stored image whose ID (config digest) or manifest digest starts
/// with `id` (one of its index entries); `None` when `id` does not look
/// like one or matches nothing.
fn image_by_id(store: &Store, id: &str) -> Result<Option<Entry>, String> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() < 4
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Ok(None);
    }
    let mut found: Vec<Entry> = Vec::new();
    for e in store.list().map_err(|e| e.to_string())? {
        let config = store
            .entry_image(&e)
            .map(|img| vm_image::Digest::of_bytes(&img.raw_config.data))
            .map_err(|err| format!("{}: {err}", e.manifest))?;
        let hit = config.hex().starts_with(hex) || e.manifest.hex().starts_with(hex);
        if hit && !found.iter().any(|f| f.manifest == e.manifest) {
            found.push(e);
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "{id} matches {} images; give more of the ID, or the manifest digest (`vm images --format json` shows it as Digest)",
            found.len()
        )),
    }
}

/// Refuses to remove the last reference to an image a running container
/// uses (Docker's rule), unless forced.
fn check_unused(
    state: &std::path::Path,
    what: &str,
    manifest: &vm_image::Digest,
) -> Result<(), String> {
    let running = runtime::in_use::running(state);
    match runtime::in_use::users(state, manifest).first() {
        Some(id) if running.iter().any(|(r, _)| r == id) => Err(format!(
            "image {what} is in use by running container {}; stop it first, or use --force",
            id.get(..12).unwrap_or(id)
        )),
        Some(id) => Err(format!(
            "image {what} is used by container {} (stopped); remove it first (vm rm), or use --force",
            id.get(..12).unwrap_or(id)
        )),
        None => Ok(()),
    }
}

fn untagged(name: &Name) {
    match &name.digest {
        Some(d) if name.tag.is_none() => {
            println!("Untagged: {}@{d}", name.familiar_repository())
        }
        _ => println!(
            "Untagged: {}:{}",
            name.familiar_repository(),
            name.tag.as_deref().unwrap_or("latest")
        ),
    }
}

pub fn rmi(args: RmiArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let state = state_root(root.as_deref())?;
        let store = Store::open(&state).map_err(|e| e.to_string())?;
        for n in &args.names {
            let freed = if let Some(entry) = image_by_id(&store, n)? {
                let manifest = entry.manifest;
                let names = store.names_of(&manifest).map_err(|e| e.to_string())?;
                if names.len() > 1 && !args.force {
                    return Err(format!(
                        "image {n} has {} names; remove them by name, or use --force",
                        names.len()
                    ));
                }
                if !args.force {
                    check_unused(&state, n, &manifest)?;
                }
                let freed = store.remove_image(&manifest).map_err(|e| e.to_string())?;
                for name in names.iter().filter_map(|n| Name::parse(n).ok()) {
                    untagged(&name);
                }
                freed
            } else {
                let name = Name::parse(n).map_err(|e| e.to_string())?;
                if !args.force {
                    let image = store.image(&name).map_err(|e| e.to_string())?;
                    let names = store
                        .names_of(&image.manifest_digest)
                        .map_err(|e| e.to_string())?;
                    if names.len() <= 1 {
                        check_unused(&state, n, &image.manifest_digest)?;
                    }
                }
                let freed = store.remove(&name).map_err(|e| e.to_string())?;
                untagged(&name);
                freed
            };
            for d in &freed.images {
                println!("Deleted: {d}");
            }
        }
        Ok(())
    })())
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
}

/// Asks `[y/N]` after `warning`; true for yes.
pub fn confirm(warning: &str) -> bool {
    eprint!("{warning}\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// `vm image prune`: removes untagged images, the blobs nothing uses,
/// and cached root file systems of images no longer in the store.
pub fn prune(args: PruneArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let state = state_root(root.as_deref())?;
        if !args.force && !confirm("WARNING! This will remove all dangling images and the unpacked root file systems no stored image uses.") {
            return Ok(());
        }
        let p = prune_images(&state, false)?;
        print_pruned_images(&p);
        println!("Total reclaimed space: {}", human(p.bytes));
        Ok(())
    })())
}

/// What [`prune_images`] removed.
pub struct Pruned {
    pub images: Vec<String>,
    pub caches: usize,
    pub bytes: u64,
}

pub fn print_pruned_images(p: &Pruned) {
    if !p.images.is_empty() {
        println!("Deleted Images:");
        for d in &p.images {
            println!("deleted: {d}");
        }
        println!();
    }
    if p.caches > 0 {
        println!("Deleted cached root file systems: {}", p.caches);
    }
}

/// Removes the untagged images (with `all`, every image no container
/// uses), then the blobs and cached root file systems nothing uses.
pub fn prune_images(state: &std::path::Path, all: bool) -> Result<Pruned, String> {
    let store = Store::open(state).map_err(|e| e.to_string())?;
    let used_by_containers: std::collections::HashSet<String> = runtime::in_use::all(state)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut freed = store
        .prune(|d| used_by_containers.contains(&d.to_string()))
        .map_err(|e| e.to_string())?;
    if all {
        let mut seen = std::collections::HashSet::new();
        for e in store.list().map_err(|e| e.to_string())? {
            let d = e.manifest.to_string();
            if used_by_containers.contains(&d) || !seen.insert(d) {
                continue;
            }
            let f = store.remove_image(&e.manifest).map_err(|e| e.to_string())?;
            freed.images.extend(f.images);
            freed.bytes += f.bytes;
        }
    }
    let mut used = std::collections::HashSet::new();
    for e in store.list().map_err(|e| e.to_string())? {
        let img = store
            .entry_image(&e)
            .map_err(|err| format!("{}: {err}", e.manifest))?;
        used.insert(format!("{}.ext4", runtime::rootfs_cache::key(&img)));
    }
    let (caches, cache_bytes) = runtime::rootfs_cache::prune(state, &used)?;
    Ok(Pruned {
        images: freed.images.iter().map(ToString::to_string).collect(),
        caches,
        bytes: freed.bytes + cache_bytes,
    })
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Images to inspect, by name.
    #[arg(required = true)]
    names: Vec<String>,
}

/// `vm image inspect`: a JSON array, one object an image, in the spirit
/// of Docker's (Id is the config digest).
pub fn inspect(args: InspectArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let mut out = Vec::new();
        for n in &args.names {
            out.push(image_json(&store, n)?);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        Ok(())
    })())
}

/// One image as `vm image inspect` shows it.
pub fn image_json(store: &Store, n: &str) -> Result<serde_json::Value, String> {
    let name = Name::parse(n).map_err(|e| e.to_string())?;
    let img = store.image(&name).map_err(|e| e.to_string())?;
    let config: serde_json::Value =
        serde_json::from_slice(&img.raw_config.data).unwrap_or(serde_json::Value::Null);
    let repo_tags = store
        .names_of(&img.manifest_digest)
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "Id": vm_image::Digest::of_bytes(&img.raw_config.data).to_string(),
        "RepoTags": repo_tags,
        "ManifestDigest": img.manifest_digest.to_string(),
        "Created": img.created,
        "Architecture": config["architecture"],
        "Os": config["os"],
        "Config": config["config"],
        "RootFS": config["rootfs"],
        "Layers": img.layers.iter().map(|l| serde_json::json!({
            "Digest": l.digest.to_string(), "Size": l.source.size,
        })).collect::<Vec<_>>(),
        "Size": img.layers.iter().map(|l| l.source.size).sum::<u64>(),
    }))
}

#[derive(clap::Args)]
pub struct SaveArgs {
    /// The archive to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// `docker-archive` (what `docker save` writes) or `oci-archive`.
    #[arg(long, default_value = "docker-archive", value_parser = ["docker-archive", "oci-archive"])]
    format: String,
    /// The image, by name.
    name: String,
}

pub fn save(args: SaveArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let name = Name::parse(&args.name).map_err(|e| e.to_string())?;
        let image = store.image(&name).map_err(|e| e.to_string())?;
        let format = if args.format == "oci-archive" {
            vm_image::save::Format::OciArchive
        } else {
            vm_image::save::Format::DockerArchive
        };
        vm_image::save::save(&image, std::slice::from_ref(&name), format, &args.output)
            .map_err(|e| format!("saving {name} to {}: {e}", args.output.display()))
    })())
}
