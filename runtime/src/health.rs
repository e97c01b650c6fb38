//! Health checks, as Docker's: the image's `HEALTHCHECK` or the
//! `--health-*` flags give a command that runs inside the running
//! container (as `vm exec` runs one) every interval; its exit status
//! makes the container `healthy` (0) or, after `retries` failures in a
//! row, `unhealthy`. Failures during the start period do not count. The
//! last five probes are kept with their output for `inspect`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// The shortest interval, timeout or start period (Docker's).
const MINIMUM: Duration = Duration::from_millis(1);
/// Probes kept, and the most output kept of each, as Docker keeps them.
const KEPT_PROBES: usize = 5;
pub const MAX_OUTPUT: usize = 4096;

/// The check a container runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The command: `["CMD", program, args...]` or `["CMD-SHELL", line]`.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

impl Check {
    /// The command line the probe runs.
    pub fn args(&self) -> Vec<String> {
        match self.test.split_first() {
            Some((kind, rest)) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            Some((kind, rest)) if kind == "CMD" => rest.to_vec(),
            _ => self.test.clone(),
        }
    }
}

/// The `--health-*` flags as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub cmd: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub retries: Option<i64>,
    /// `--no-healthcheck`.
    pub none: bool,
}

/// The image config's `Healthcheck` (durations in nanoseconds).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageCheck {
    #[serde(default)]
    test: Vec<String>,
    #[serde(default)]
    interval: u64,
    #[serde(default)]
    timeout: u64,
    #[serde(default)]
    start_period: u64,
    #[serde(default)]
    retries: u32,
}

fn duration(flag: &str, value: &Option<String>) -> Result<Option<Duration>, String> {
    let Some(text) = value else {
        return Ok(None);
    };
    if text.trim_start().starts_with('-') {
        return Err(format!("--{flag} cannot be negative"));
    }
    humantime::parse_duration(text).map(Some).map_err(|e| {
        format!("invalid --{flag} {text:?}: {e} (use a duration such as 30s or 1m30s)")
    })
}

impl Flags {
    /// The check for a container of an image whose config is
    /// `image_config` (JSON): the image's, with what the flags say over
    /// it; None for none (`--no-healthcheck`, `NONE`, or no command).
    pub fn resolve(&self, image_config: &[u8]) -> Result<Option<Check>, String> {
        let any_flag = self.cmd.is_some()
            || self.interval.is_some()
            || self.timeout.is_some()
            || self.start_period.is_some()
            || self.retries.is_some();
        if self.none && any_flag {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        let interval = duration("health-interval", &self.interval)?;
        let timeout = duration("health-timeout", &self.timeout)?;
        let start_period = duration("health-start-period", &self.start_period)?;
        let retries = match self.retries {
            Some(n) if n < 0 => return Err("--health-retries cannot be negative".into()),
            Some(n) => Some(u32::try_from(n).map_err(|_| "--health-retries is too large")?),
            None => None,
        };
        if self.none {
            return Ok(None);
        }
        let image: ImageCheck = serde_json::from_slice::<serde_json::Value>(image_config)
            .ok()
            .and_then(|v| serde_json::from_value(v["config"]["Healthcheck"].clone()).ok())
            .unwrap_or_default();
        let test = match &self.cmd {
            Some(cmd) => vec!["CMD-SHELL".to_string(), cmd.clone()],
            None => image.test,
        };
        if test.is_empty() || test[0] == "NONE" || test.len() < 2 {
            return Ok(None);
        }
        // Docker's floor, for the flags and the image alike.
        for (what, d) in [
            (
                "Interval",
                interval.unwrap_or(Duration::from_nanos(image.interval)),
            ),
            (
                "Timeout",
                timeout.unwrap_or(Duration::from_nanos(image.timeout)),
            ),
            (
                "StartPeriod",
                start_period.unwrap_or(Duration::from_nanos(image.start_period)),
            ),
        ] {
            if !d.is_zero() && d < MINIMUM {
                return Err(format!("{what} in Healthcheck cannot be less than 1ms"));
            }
        }
        let or_default = |d: Duration, default: Duration| if d.is_zero() { default } else { d };
        Ok(Some(Check {
            test,
            interval: or_default(
                interval.unwrap_or(Duration::from_nanos(image.interval)),
                DEFAULT_INTERVAL,
            ),
            timeout: or_default(
                timeout.unwrap_or(Duration::from_nanos(image.timeout)),
                DEFAULT_TIMEOUT,
            ),
            start_period: start_period.unwrap_or(Duration::from_nanos(image.start_period)),
            retries: match retries.unwrap_or(image.retries) {
                0 => DEFAULT_RETRIES,
                n => n,
            },
        }))
    }
}

/// Where a container's health stands (`inspect`'s `State.Health`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<Probe>,
}

/// One probe's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

impl Health {
    pub fn starting() -> Self {
        Self {
            status: "starting".into(),
            ..Self::default()
        }
    }

    /// Takes one probe's result; `in_start_period`: the container
    /// started less than the check's start period ago.
    pub fn record(&mut self, probe: Probe, retries: u32, in_start_period: bool) {
        if probe.exit_code == 0 {
            self.failing_streak = 0;
            self.status = "healthy".into();
        } else if !(in_start_period && self.status == "starting") {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = "unhealthy".into();
            }
        }
        self.log.push(probe);
        if self.log.len() > KEPT_PROBES {
            self.log.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(cmd: Option<&str>) -> Flags {
        Flags {
            cmd: cmd.map(str::to_string),
            ..Flags::default()
        }
    }

    #[test]
    fn flags_over_the_image() {
        let image = br#"{"config":{"Healthcheck":{"Test":["CMD","true"],"Interval":5000000000,"Retries":2}}}"#;
        let c = flags(None).resolve(image).expect("ok").expect("a check");
        assert_eq!(c.args(), ["true"]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.retries, 2);
        let mut f = flags(Some("exit 1"));
        f.interval = Some("1m30s".into());
        let c = f.resolve(image).expect("ok").expect("a check");
        assert_eq!(c.args(), ["/bin/sh", "-c", "exit 1"]);
        assert_eq!(c.interval, Duration::from_secs(90));
        assert_eq!(flags(None).resolve(b"{}").expect("ok"), None);
        let none = Flags {
            none: true,
            ..Flags::default()
        };
        assert_eq!(none.resolve(image).expect("ok"), None);
        let both = Flags {
            none: true,
            cmd: Some("true".into()),
            ..Flags::default()
        };
        assert!(both.resolve(image).is_err());
        let mut negative = flags(Some("true"));
        negative.interval = Some("-1s".into());
        assert!(negative.resolve(image).is_err());
        let busy = br#"{"config":{"Healthcheck":{"Test":["CMD","true"],"Interval":1}}}"#;
        assert!(flags(None).resolve(busy).is_err());
        let image_none = br#"{"config":{"Healthcheck":{"Test":["NONE"]}}}"#;
        assert_eq!(flags(None).resolve(image_none).expect("ok"), None);
    }

    #[test]
    fn streaks_and_the_start_period() {
        let probe = |code| Probe {
            exit_code: code,
            ..Probe::default()
        };
        let mut h = Health::starting();
        h.record(probe(1), 2, true);
        assert_eq!((h.status.as_str(), h.failing_streak), ("starting", 0));
        h.record(probe(1), 2, false);
        h.record(probe(1), 2, false);
        assert_eq!((h.status.as_str(), h.failing_streak), ("unhealthy", 2));
        h.record(probe(0), 2, false);
        assert_eq!((h.status.as_str(), h.failing_streak), ("healthy", 0));
        for _ in 0..10 {
            h.record(probe(0), 2, false);
        }
        assert_eq!(h.log.len(), KEPT_PROBES);
    }
}
