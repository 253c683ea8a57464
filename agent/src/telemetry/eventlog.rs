//! How many verdict events (drops, audits, reported allows) reach the agent's own
//! log when there is no `--flow-log`: at most `--event-log-lines` per interval of
//! [`INTERVAL`] as single lines; the rest are counted per flow group (verdict,
//! direction, protocol, source, destination and reason, ports left out so a port
//! scan is one group) and summarised in one line when the interval ends. A port
//! scan then costs a few lines per interval instead of one per packet; the exact
//! counts stay in the metrics (`netfence_packets_total{reason}`) and in the
//! summary lines. Pure: the caller passes the time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The summary interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The default of `--event-log-lines`.
pub const DEFAULT_LINES: u32 = 20;

/// Groups a summary names; the rest are counted together.
const TOP: usize = 5;

/// The limiter of one agent's event lines.
#[derive(Debug)]
pub struct EventLimiter {
    lines: u32,
    interval: Duration,
    /// Start of the current interval (`None` before the first event).
    started: Option<Instant>,
    shown: u32,
    held: BTreeMap<String, u64>,
}

/// The events of one interval that were not logged line by line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub interval: Duration,
    pub shown: u32,
    pub held: u64,
    /// The largest groups, largest first (ties by name).
    pub top: Vec<(String, u64)>,
    /// Groups not in `top`, and their events.
    pub other_groups: usize,
    pub other_events: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} flow events in the last {} s not logged one by one ({} were; see netfence_packets_total and --flow-log): ",
            self.held,
            self.interval.as_secs(),
            self.shown
        )?;
        let groups: Vec<String> = self
            .top
            .iter()
            .map(|(group, count)| format!("{count}x {group}"))
            .collect();
        write!(f, "{}", groups.join("; "))?;
        if self.other_groups > 0 {
            write!(
                f,
                "; {} more in {} other groups",
                self.other_events, self.other_groups
            )?;
        }
        Ok(())
    }
}

impl EventLimiter {
    /// `lines` events per [`INTERVAL`] logged one by one.
    pub fn new(lines: u32) -> Self {
        Self::with_interval(lines, INTERVAL)
    }

    pub fn with_interval(lines: u32, interval: Duration) -> Self {
        Self {
            lines,
            interval,
            started: None,
            shown: 0,
            held: BTreeMap::new(),
        }
    }

    /// One event at `now`: `(the summary of an interval that ended, whether to log
    /// this event's line)`. `group` names its flow group (called only when held).
    pub fn event(
        &mut self,
        now: Instant,
        group: impl FnOnce() -> String,
    ) -> (Option<Summary>, bool) {
        let summary = self.tick(now);
        let started = *self.started.get_or_insert(now);
        debug_assert!(now >= started);
        if self.shown < self.lines {
            self.shown += 1;
            (summary, true)
        } else {
            *self.held.entry(group()).or_default() += 1;
            (summary, false)
        }
    }

    /// Ends the interval if it is over: its summary when events were held.
    pub fn tick(&mut self, now: Instant) -> Option<Summary> {
        let started = self.started?;
        if now.duration_since(started) < self.interval {
            return None;
        }
        let shown = std::mem::take(&mut self.shown);
        let held = std::mem::take(&mut self.held);
        self.started = None;
        if held.is_empty() {
            return None;
        }
        let mut groups: Vec<(String, u64)> = held.into_iter().collect();
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let total = groups.iter().map(|(_, n)| n).sum();
        let rest = groups.split_off(groups.len().min(TOP));
        Some(Summary {
            interval: self.interval,
            shown,
            held: total,
            top: groups,
            other_groups: rest.len(),
            other_events: rest.iter().map(|(_, n)| n).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_scan_gives_the_first_lines_then_one_summary_per_interval() {
        let mut limiter = EventLimiter::new(3);
        let t0 = Instant::now();
        let scan = "drop ingress TCP 198.18.0.9 -> 198.18.0.3 (prod/db) reason=policy_deny";
        let mut shown = 0;
        for port in 0..1000u64 {
            let (summary, show) =
                limiter.event(t0 + Duration::from_millis(port), || scan.to_owned());
            assert_eq!(summary, None, "still the first interval");
            shown += u64::from(show);
        }
        assert_eq!(shown, 3);
        assert_eq!(
            limiter.tick(t0 + Duration::from_secs(9)),
            None,
            "not over yet"
        );
        let summary = limiter.tick(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            summary.to_string(),
            format!(
                "997 flow events in the last 10 s not logged one by one (3 were; see netfence_packets_total and --flow-log): 997x {scan}"
            )
        );
        assert_eq!(
            limiter.tick(t0 + Duration::from_secs(30)),
            None,
            "nothing held since"
        );
        // A new interval starts with the next event: its first lines are shown again.
        let (summary, show) = limiter.event(t0 + Duration::from_secs(31), || scan.to_owned());
        assert_eq!((summary, show), (None, true));
    }

    #[test]
    fn the_summary_names_the_largest_groups_and_counts_the_rest() {
        let mut limiter = EventLimiter::with_interval(0, Duration::from_secs(1));
        let t0 = Instant::now();
        for (group, count) in [
            ("a", 1),
            ("b", 7),
            ("c", 3),
            ("d", 3),
            ("e", 2),
            ("f", 9),
            ("g", 1),
        ] {
            for _ in 0..count {
                let (_, show) = limiter.event(t0, || group.to_owned());
                assert!(!show);
            }
        }
        // The summary comes with the first event of the next interval.
        let (summary, show) = limiter.event(t0 + Duration::from_secs(1), || "h".to_owned());
        assert!(!show);
        let summary = summary.unwrap();
        assert_eq!(summary.held, 26);
        assert_eq!(
            summary.top,
            [("f", 9), ("b", 7), ("c", 3), ("d", 3), ("e", 2)].map(|(g, n)| (g.to_owned(), n))
        );
        assert_eq!((summary.other_groups, summary.other_events), (2, 2));
        assert!(
            summary
                .to_string()
                .ends_with("9x f; 7x b; 3x c; 3x d; 2x e; 2 more in 2 other groups"),
            "{summary}"
        );
    }
}
