//! Pulling images for the runtime and the CLI: registry options from the
//! flags and the config file, then the image crate's client.

use std::path::PathBuf;

use vm_image::auth::Config;
use vm_image::name::Name;
use vm_image::registry::{Options, Progress};
use vm_image::store::Store;

use crate::error::{Error, Kind, Result};

/// How to reach registries beyond what the config file says.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Registries (host[:port]) that may be reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA files (PEM) to trust.
    pub ca_files: Vec<PathBuf>,
}

/// When `vm run` and `vm create` pull the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

/// The options for talking to `registry`: `connect`, then the config file.
pub fn options(registry: &str, connect: &Connect) -> Result<Options> {
    let config = Config::load().map_err(|e| Error::invalid(e.to_string()))?;
    let mut insecure = connect.insecure.clone();
    insecure.extend(config.insecure_registries());
    let mut ca_files = connect.ca_files.clone();
    ca_files.extend(config.ca_files(registry));
    Ok(Options {
        insecure,
        credentials: config.credentials(registry),
        ca_files,
    })
}

/// Pulls `name` into `store`, reporting progress to `progress`.
pub fn pull(
    store: &Store,
    name: &Name,
    connect: &Connect,
    progress: &mut dyn FnMut(Progress),
) -> Result<vm_image::Digest> {
    let opts = options(&name.registry, connect)?;
    vm_image::registry::pull(store, name, &opts, progress)
        .map_err(|e| Error::new(Kind::Image, format!("pulling {name}: {e}")))
}
