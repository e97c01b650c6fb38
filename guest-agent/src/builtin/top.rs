//! `vm top`: the container's processes, read from its own /proc (its
//! PID namespace, so PIDs are the ones the container sees).

use agent_protocol::TopRow;

use super::{emit, pids};

pub fn run() -> Result<(), String> {
    let clk = clock_ticks();
    let boot = boot_time();
    let uptime = uptime_secs();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for pid in pids() {
        // A process that ends while we look is left out.
        if let Some(row) = row(pid, clk, boot, uptime, &passwd) {
            emit(&row)?;
        }
    }
    Ok(())
}

fn row(pid: i32, clk: u64, boot: u64, uptime: f64, passwd: &str) -> Option<TopRow> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, rest) = parse_stat(&stat)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid: i32 = f.get(1)?.parse().ok()?;
    let tty_nr = num(4)?;
    let cpu_ticks = num(11)? + num(12)?;
    let start_ticks = num(19)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = if cmdline.is_empty() {
        format!("[{comm}]")
    } else {
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cpu_secs = cpu_ticks / clk;
    let started_secs = start_ticks as f64 / clk as f64;
    let alive = (uptime - started_secs).max(0.0);
    let cpu = if alive > 0.0 {
        ((cpu_ticks as f64 / clk as f64) / alive * 100.0) as u32
    } else {
        0
    };
    Some(TopRow {
        uid,
        user: user_name(passwd, uid),
        pid,
        ppid,
        cpu,
        started: boot + started_secs as u64,
        tty: tty_name(tty_nr),
        cpu_secs,
        cmd,
    })
}

/// `(comm, the fields after it)` from /proc/PID/stat; comm may hold
/// spaces and parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, &str)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    Some((stat.get(open + 1..close)?, stat.get(close + 1..)?))
}

fn user_name(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

fn tty_name(nr: u64) -> String {
    let major = (nr >> 8) & 0xfff;
    let minor = (nr & 0xff) | ((nr >> 12) & 0xfff00);
    match major {
        0 => "?".into(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 1 => "console".into(),
        _ => format!("{major}:{minor}"),
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and returns one.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

fn boot_time() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .unwrap_or(0)
}

fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_users_and_ttys() {
        let (comm, rest) = parse_stat("42 (a (b) c) S 1 42").expect("parse");
        assert_eq!(comm, "a (b) c");
        assert_eq!(rest.split_whitespace().nth(1), Some("1"));
        let passwd = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        assert_eq!(user_name(passwd, 65534), "nobody");
        assert_eq!(user_name(passwd, 7), "7");
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(136 << 8 | 3), "pts/3");
        assert_eq!(tty_name(4 << 8 | 64), "ttyS0");
    }
}
