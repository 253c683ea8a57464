//! Liveness and readiness as the run loop reports them. Liveness is a heartbeat: the
//! run loop beats on every turn (at least once a second), and a loop stuck for
//! [`STALL`] is reported dead so the kubelet restarts the agent. Readiness is set once
//! the first complete state is enforced, with a reason while it is not.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A run loop that has not turned for this long is considered stuck.
pub const STALL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Health {
    start: Instant,
    /// Milliseconds after `start` of the last beat.
    heartbeat: AtomicU64,
    ready: AtomicBool,
    /// Why not ready (shown by `/readyz` while not ready).
    waiting: Mutex<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            start: Instant::now(),
            heartbeat: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            waiting: Mutex::new("starting".to_owned()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The run loop is alive.
    pub fn beat(&self) {
        self.heartbeat.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Not ready, and why.
    pub fn set_waiting(&self, reason: impl Into<String>) {
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting = reason.into();
        }
        self.ready.store(false, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// (alive, message).
    pub fn liveness(&self) -> (bool, String) {
        let idle = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.heartbeat.load(Ordering::Relaxed)),
        );
        if idle > STALL {
            (
                false,
                format!("run loop stuck: no turn for {}s", idle.as_secs()),
            )
        } else {
            (true, "ok".to_owned())
        }
    }

    /// (ready, message).
    pub fn readiness(&self) -> (bool, String) {
        if self.is_ready() {
            return (true, "ready".to_owned());
        }
        let reason = self
            .waiting
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|_| "not ready".to_owned());
        (false, format!("not ready: {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_run_loop() {
        let health = Health::new();
        health.beat();
        assert_eq!(health.liveness(), (true, "ok".to_owned()));
        health.set_waiting("waiting for the first complete list of Pod");
        assert_eq!(
            health.readiness(),
            (
                false,
                "not ready: waiting for the first complete list of Pod".to_owned()
            )
        );
        health.set_ready();
        assert_eq!(health.readiness(), (true, "ready".to_owned()));
    }
}
