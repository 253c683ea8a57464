//! Watching a manifest directory (inotify through `notify`): any change to a file in
//! it, the directory being created, removed or replaced (renamed over, or a ConfigMap
//! volume's `..data` link swap), becomes one `()` on a channel after a quiet period.
//! Level-triggered: the receiver re-reads the whole directory, so coalescing many
//! events into one signal loses nothing.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc::error::TrySendError;

use super::SourceError;

/// A change is signalled once no further event came for this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...or at the latest this long after the first event of a burst.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Stops watching when dropped.
#[derive(Debug)]
pub struct Watcher {
    _inner: Arc<Mutex<RecommendedWatcher>>,
}

/// Watch the directory (and its parent, to follow the directory being replaced). Sends
/// `()` on the channel after changes, debounced. The returned guard stops watching
/// when dropped; the channel then closes.
pub fn watch(dir: &Path) -> Result<(Watcher, tokio::sync::mpsc::Receiver<()>), SourceError> {
    let error = |source: notify::Error| SourceError::Watch {
        path: dir.display().to_string(),
        source: Box::new(source),
    };
    let dir = std::path::absolute(dir).map_err(|e| error(notify::Error::io(e)))?;
    let parent = dir
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let (raw_tx, raw_rx) = mpsc::channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(raw_tx).map_err(error)?;
    watcher
        .watch(&parent, RecursiveMode::NonRecursive)
        .map_err(error)?;
    if dir.is_dir() {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(error)?;
    }
    let inner = Arc::new(Mutex::new(watcher));
    let weak = Arc::downgrade(&inner);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::thread::Builder::new()
        .name("netfence-watch".into())
        .spawn(move || debounce(&raw_rx, &weak, &dir, &tx))
        .map_err(|e| error(notify::Error::io(e)))?;
    Ok((Watcher { _inner: inner }, rx))
}

/// What an event means for the watched directory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Relevance {
    None,
    /// A file in the directory changed.
    Contents,
    /// The directory itself appeared, went or was replaced: watch it again.
    Directory,
}

fn relevance(dir: &Path, event: &notify::Result<Event>) -> Relevance {
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), "manifest watch error: {error}");
            return Relevance::Directory;
        }
    };
    match event.kind {
        // Opens and reads (ours included) change nothing; a close after writing does.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return Relevance::None,
        // Queue overflow and the like: assume anything changed.
        EventKind::Other | EventKind::Any if event.paths.is_empty() => return Relevance::Directory,
        _ => {}
    }
    event
        .paths
        .iter()
        .map(|path| {
            if path == dir {
                Relevance::Directory
            } else if path.parent() == Some(dir) {
                Relevance::Contents
            } else {
                Relevance::None
            }
        })
        .max()
        .unwrap_or(Relevance::None)
}

fn debounce(
    raw: &mpsc::Receiver<notify::Result<Event>>,
    watcher: &Weak<Mutex<RecommendedWatcher>>,
    dir: &Path,
    tx: &tokio::sync::mpsc::Sender<()>,
) {
    // Ends when the watcher (which owns the raw sender) is dropped.
    while let Ok(event) = raw.recv() {
        let mut seen = relevance(dir, &event);
        if seen == Relevance::None {
            continue;
        }
        let first = Instant::now();
        let mut quiet_until = first + QUIET;
        loop {
            let now = Instant::now();
            let until = quiet_until.min(first + MAX_DELAY);
            if now >= until {
                break;
            }
            match raw.recv_timeout(until - now) {
                Ok(event) => {
                    let relevance = relevance(dir, &event);
                    if relevance != Relevance::None {
                        seen = seen.max(relevance);
                        quiet_until = Instant::now() + QUIET;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if seen == Relevance::Directory {
            rewatch(watcher, dir);
        }
        match tx.try_send(()) {
            // Full: a signal is already pending; the reload it causes reads everything.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Closed(())) => return,
        }
    }
}

/// Points the directory watch at whatever is now at `dir` (inotify watches inodes, so
/// a replaced directory needs a new watch).
fn rewatch(watcher: &Weak<Mutex<RecommendedWatcher>>, dir: &Path) {
    let Some(watcher) = watcher.upgrade() else {
        return;
    };
    let Ok(mut watcher) = watcher.lock() else {
        return;
    };
    // The old watch may be gone already (directory deleted): nothing to undo then.
    let _ = watcher.unwatch(dir);
    if dir.is_dir()
        && let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive)
    {
        tracing::warn!(dir = %dir.display(), "cannot watch the manifest directory again: {error}");
    }
}
