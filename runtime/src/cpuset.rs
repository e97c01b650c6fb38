//! `--cpuset-cpus`: the host CPUs a container's VM may run on. The VMM
//! process is bound to them (its vCPU threads inherit the binding), and
//! the VM gets one vCPU for each unless `--cpus` says otherwise, as a
//! Docker container on that set could use that many CPUs at once.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs a list names (`0-3,6`), in order, without repeats.
pub fn parse(s: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("invalid --cpuset-cpus {s:?}: use CPU numbers and ranges, e.g. 0-3,6");
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let first: usize = first.trim().parse().map_err(|_| bad())?;
        let last: usize = last.trim().parse().map_err(|_| bad())?;
        if first > last || last >= CpuSet::count() {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Fails, as Docker does, when the set names CPUs this process may not
/// run on.
pub fn check_available(cpus: &[usize]) -> Result<(), String> {
    let have =
        sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let available: Vec<usize> = (0..CpuSet::count())
        .filter(|c| have.is_set(*c).unwrap_or(false))
        .collect();
    if cpus.iter().all(|c| available.contains(c)) {
        return Ok(());
    }
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    Err(format!(
        "requested CPUs are not available - requested {}, available: {}",
        list(cpus),
        list(&available)
    ))
}

/// Binds this process (and the threads it makes after) to `cpus`.
pub fn bind(cpus: &[usize]) -> Result<(), String> {
    let mut set = CpuSet::new();
    for c in cpus {
        set.set(*c).map_err(|e| format!("CPU {c}: {e}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("binding the VM to CPUs {cpus:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse("0"), Ok(vec![0]));
        assert_eq!(parse("0-2,1,5"), Ok(vec![0, 1, 2, 5]));
        assert!(parse("").is_err());
        assert!(parse("2-1").is_err());
        assert!(parse("a").is_err());
        assert!(parse("0-99999").is_err());
        assert!(check_available(&[0]).is_ok());
        assert!(check_available(&[CpuSet::count() - 1]).is_err());
    }
}
