//! From `vm run` flags and the image's config to what the container
//! runs, with Docker's rules.

use std::path::Path;

use vm_image::RunConfig;

/// argv: `--entrypoint` replaces the image's Entrypoint and drops its Cmd;
/// arguments after the image replace the Cmd.
pub fn process_args(
    image: &RunConfig,
    entrypoint: Option<&str>,
    command: &[String],
) -> Result<Vec<String>, String> {
    let (ep, cmd): (Vec<String>, &[String]) = match entrypoint {
        Some("") => (Vec::new(), command),
        Some(e) => (vec![e.to_string()], command),
        None if command.is_empty() => (image.entrypoint.clone(), &image.cmd),
        None => (image.entrypoint.clone(), command),
    };
    let mut args = ep;
    args.extend(cmd.iter().cloned());
    if args.is_empty() {
        return Err("no command specified: the image has no Entrypoint or Cmd; give one after the image name".into());
    }
    Ok(args)
}

/// The environment: the image's, then `--env-file` lines, then `-e`, each
/// replacing an earlier value of the same name. `NAME` without `=` takes
/// the value from `lookup` (the host's environment), or is left out.
pub fn environment(
    image: &[String],
    env_files: &[String],
    env: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = image.to_vec();
    let mut set = |entry: &str| -> Result<(), String> {
        let (name, value) = match entry.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (entry.to_string(), lookup(entry)),
        };
        if name.is_empty() {
            return Err(format!(
                "invalid environment variable {entry:?}: the name is empty"
            ));
        }
        if name.contains(char::is_whitespace) {
            return Err(format!(
                "invalid environment variable {entry:?}: the name contains whitespace"
            ));
        }
        out.retain(|e| e.split('=').next() != Some(name.as_str()));
        if let Some(v) = value {
            out.push(format!("{name}={v}"));
        }
        Ok(())
    };
    for line in env_files {
        set(line)?;
    }
    for e in env {
        set(e)?;
    }
    Ok(out)
}

/// The lines of an env file that set something (no blanks, no comments).
pub fn read_env_file(path: &Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--env-file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Docker's memory sizes: a number with an optional b, k, m or g suffix
/// (bytes when none); returns MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = if let Some(n) = t.strip_suffix('k') {
        (n, 1u64 << 10)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix('g') {
        (n, 1 << 30)
    } else {
        (t, 1)
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid memory size {s:?}; use a number with b, k, m or g (e.g. 512m)")
    })?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("memory size {s:?} is too large"))?;
    Ok(bytes >> 20)
}

/// Docker's `--cpus` is a fraction of CPUs; a VM has whole vCPUs, so it
/// rounds up.
pub fn parse_cpus(s: &str) -> Result<u8, String> {
    let f: f64 = s
        .parse()
        .map_err(|_| format!("invalid --cpus {s:?}; use a number such as 1 or 1.5"))?;
    if !f.is_finite() || f <= 0.0 || f > 64.0 {
        return Err(format!(
            "--cpus {s} is out of range; use more than 0 and at most 64"
        ));
    }
    Ok(f.ceil() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(ep: &[&str], cmd: &[&str]) -> RunConfig {
        RunConfig {
            entrypoint: ep.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let i = img(&["/ep", "-x"], &["default"]);
        assert_eq!(
            process_args(&i, None, &[]).expect("args"),
            v(&["/ep", "-x", "default"])
        );
        assert_eq!(
            process_args(&i, None, &v(&["a"])).expect("args"),
            v(&["/ep", "-x", "a"])
        );
        // --entrypoint drops the image's Cmd.
        assert_eq!(process_args(&i, Some("sh"), &[]).expect("args"), v(&["sh"]));
        assert_eq!(
            process_args(&i, Some("sh"), &v(&["-c", "x"])).expect("args"),
            v(&["sh", "-c", "x"])
        );
        assert_eq!(
            process_args(&i, Some(""), &v(&["ls"])).expect("args"),
            v(&["ls"])
        );
        assert!(process_args(&img(&[], &[]), None, &[]).is_err());
        assert!(process_args(&i, Some(""), &[]).is_err());
    }

    #[test]
    fn environment_layers_and_host_lookup() {
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_string());
        let env = environment(
            &v(&["PATH=/bin", "A=image"]),
            &v(&["A=file", "B=file"]),
            &v(&["B=flag", "FROM_HOST", "UNSET_ON_HOST", "EMPTY="]),
            host,
        )
        .expect("env");
        assert_eq!(
            env,
            v(&["PATH=/bin", "A=file", "B=flag", "FROM_HOST=h", "EMPTY="])
        );
        assert!(environment(&[], &[], &v(&["=x"]), host).is_err());
    }

    #[test]
    fn memory_and_cpus() {
        assert_eq!(parse_memory("512m"), Ok(512));
        assert_eq!(parse_memory("1g"), Ok(1024));
        assert_eq!(parse_memory("1GB"), Ok(1024));
        assert_eq!(parse_memory("2097152"), Ok(2));
        assert_eq!(parse_memory("1048576k"), Ok(1024));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("99999999999g").is_err());
        assert_eq!(parse_cpus("1"), Ok(1));
        assert_eq!(parse_cpus("1.5"), Ok(2));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
    }
}
