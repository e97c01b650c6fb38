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
    /// Accepted as Docker's: loading shows no progress to hide; the loaded
    /// names are printed either way.
    #[arg(short = 'q', long)]
    #[allow(dead_code)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Only images of this repository (and tag), as `vm images busybox`.
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
    /// `table` (default), `json` (one object a line), or a Go template
    /// over Docker's fields: {{.Repository}} {{.Tag}} {{.ID}} {{.Digest}}
    /// {{.CreatedAt}} {{.CreatedSince}} {{.Size}}, `table ...` for columns.
    #[arg(long)]
    format: Option<String>,
    /// Only the image IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Whole IDs (sha256:...), not their first 12 digits.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Accepted as Docker's (there are no intermediate images here).
    #[arg(short = 'a', long)]
    #[allow(dead_code)]
    all: bool,
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

/// Docker's default `images` table.
const IMAGES_TABLE: &str =
    "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}";

pub fn images(args: ImagesArgs, root: Option<PathBuf>) -> ExitCode {
    finish((|| {
        let store = store(root)?;
        let entries = store.list().map_err(|e| e.to_string())?;
        let wanted = match args.reference.as_deref() {
            None => None,
            Some(r) => Some(Name::parse(r).map_err(|e| format!("{r:?}: {e}"))?),
        };
        // Newest first, as Docker lists them.
        let mut rows = Vec::new();
        for e in &entries {
            let name = e.name.as_deref().map(Name::parse).and_then(|n| n.ok());
            if let Some(w) = &wanted {
                let same = name.as_ref().is_some_and(|n| {
                    n.familiar_repository() == w.familiar_repository()
                        && (args.reference.as_deref().is_some_and(|r| !r.contains(':'))
                            || n.tag == w.tag)
                });
                if !same {
                    continue;
                }
            }
            let img = store
                .entry_image(e)
                .map_err(|err| format!("{}: {err}", e.manifest))?;
            let (repo, tag) = match &name {
                Some(n) => (
                    n.familiar_repository(),
                    n.tag.clone().unwrap_or_else(|| "<none>".into()),
                ),
                None => ("<none>".to_string(), "<none>".to_string()),
            };
            let id = vm_image::Digest::of_bytes(&img.raw_config.data);
            let size = match store.unpacked_size(&e.manifest, &img) {
                Ok(Some(n)) => n,
                // Too large or unreadable to work out: what is stored.
                _ => img.layers.iter().map(|l| l.source.size).sum::<u64>(),
            };
            let shown_id = if args.no_trunc {
                id.to_string()
            } else {
                id.hex()[..12].to_string()
            };
            rows.push((
                img.created.clone(),
                serde_json::json!({
                    "Containers": "N/A",
                    "CreatedAt": crate::ps::docker_time(&img.created),
                    "CreatedSince": crate::ps::ago(&img.created),
                    "Digest": e.manifest.to_string(),
                    "ID": shown_id,
                    "Repository": repo,
                    "SharedSize": "N/A",
                    "Size": human(size),
                    "Tag": tag,
                    "UniqueSize": "N/A",
                    "VirtualSize": human(size),
                }),
            ));
        }
        rows.sort_by(|a, b| {
            b.0.cmp(&a.0).then_with(|| {
                let key = |v: &serde_json::Value| (v["Repository"].to_string(), v["Tag"].to_string());
                key(&a.1).cmp(&key(&b.1))
            })
        });
        let values: Vec<serde_json::Value> = rows.into_iter().map(|(_, v)| v).collect();
        if args.quiet {
            for v in &values {
                println!("{}", v["ID"].as_str().unwrap_or_default());
            }
            return Ok(());
        }
        let headers = std::collections::HashMap::from([
            ("ID", "IMAGE ID"),
            ("CreatedSince", "CREATED"),
            ("CreatedAt", "CREATED AT"),
            ("VirtualSize", "SIZE"),
        ]);
        print!(
            "{}",
            crate::ps::format_values(&values, args.format.as_deref(), IMAGES_TABLE, &headers)?
        );
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
/// A size as Docker prints one: decimal units and three significant
/// digits (`1.98MB`, `72.8MB`, `123MB`, `0B`).
pub fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < units.len() {
        v /= 1000.0;
        unit += 1;
    }
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", units[unit])
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
    /// A Go template for each image (`{{.Id}}`, `{{json .Config}}`).
    #[arg(short = 'f', long)]
    format: Option<String>,
}

/// `vm image inspect`: a JSON array, one object an image, in the spirit
/// of Docker's (Id is the config digest).
pub fn inspect(args: InspectArgs, root: Option<PathBuf>) -> ExitCode {
    let store = match store(root) {
        Ok(s) => s,
        Err(e) => return crate::fail(&e),
    };
    let mut values = Vec::new();
    let mut failed = false;
    for n in &args.names {
        match image_json(&store, n) {
            Ok(v) => values.push(v),
            Err(e) => {
                eprintln!("vm: error: {e}");
                failed = true;
            }
        }
    }
    crate::ps::print_inspected(&values, args.format.as_deref(), failed)
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
    let size = match store.unpacked_size(&img.manifest_digest, &img) {
        Ok(Some(n)) => n,
        _ => img.layers.iter().map(|l| l.source.size).sum::<u64>(),
    };
    // Docker's RepoDigests: each repository with the manifest's digest.
    let mut repo_digests: Vec<String> = repo_tags
        .iter()
        .filter_map(|t| Name::parse(t).ok())
        .map(|n| format!("{}@{}", n.familiar_repository(), img.manifest_digest))
        .collect();
    repo_digests.dedup();
    let text = |key: &str| config[key].as_str().unwrap_or_default().to_string();
    Ok(serde_json::json!({
        "Id": vm_image::Digest::of_bytes(&img.raw_config.data).to_string(),
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": text("comment"),
        "Created": img.created,
        "DockerVersion": text("docker_version"),
        "Author": text("author"),
        "Config": config["config"],
        "Architecture": config["architecture"],
        "Variant": config.get("variant"),
        "Os": config["os"],
        "Size": size,
        "VirtualSize": size,
        "RootFS": config["rootfs"],
        "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
        // Ours, beyond Docker's: the manifest and its layer blobs.
        "ManifestDigest": img.manifest_digest.to_string(),
        "Layers": img.layers.iter().map(|l| serde_json::json!({
            "Digest": l.digest.to_string(), "Size": l.source.size,
        })).collect::<Vec<_>>(),
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

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_as_dockers() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(999), "999B");
        assert_eq!(human(1_980_000), "1.98MB");
        assert_eq!(human(2_100_000), "2.1MB");
        assert_eq!(human(72_840_000), "72.8MB");
        assert_eq!(human(123_400_000), "123MB");
        assert_eq!(human(5_000_000_000), "5GB");
    }
}
