//! Attaching both TC programs to managed interfaces, and detaching them: TCX links
//! where the kernel has them (6.6+), a clsact qdisc with direct-action filters
//! otherwise. An interface is enforced in both directions or in neither.
//!
//! With a pin directory (TCX only), every link is pinned as `links/<ifindex>-<hook>`.
//! A restarted agent adopts a pinned link by swapping its own program into it
//! (`bpf_link_update`: atomic, the hook is never empty), so a restart opens no gap.
//! Links are pinned and never detached on exit unless asked (`release` vs
//! `detach_all`). clsact filters cannot be pinned: in clsact mode a restart detaches.

use std::collections::BTreeMap;

use aya::Ebpf;
use std::path::PathBuf;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, TcAttachType};
use aya::util::KernelVersion;
use netfence_common::program;

use super::links::Interface;
use super::loader::{LoadError, classifier};
use super::pin::{Hook, PinDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX on kernels 6.6 and newer, clsact below.
    Auto,
    /// TCX links (kernel 6.6+).
    Tcx,
    /// A clsact qdisc with direct-action filters (any kernel netfence supports).
    Clsact,
}

impl AttachMode {
    /// The mode `Auto` stands for on this kernel.
    pub fn resolve(self) -> AttachMode {
        match self {
            AttachMode::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
                _ => AttachMode::Clsact,
            },
            other => other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Program(#[from] LoadError),
    #[error("adding a clsact qdisc to {interface}: {source}")]
    Clsact {
        interface: String,
        source: aya::programs::tc::TcError,
    },
    #[error("attaching {program} to {interface} ({mode:?}): {source}{hint}")]
    Attach {
        program: &'static str,
        interface: String,
        mode: AttachMode,
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("pinning the {hook:?} link of {interface} at {path}: {source}")]
    Pin {
        hook: Hook,
        interface: String,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One attachment: owned by the program (unpinned), or a pinned TCX link we hold.
#[derive(Debug)]
enum Handle {
    Owned(SchedClassifierLinkId),
    Pinned { link: FdLink, path: PathBuf },
}

#[derive(Debug)]
struct Attached {
    name: String,
    from_pod: Handle,
    to_pod: Handle,
    adopted: bool,
}

/// The interfaces both programs are attached to, by ifindex.
#[derive(Debug)]
pub struct Attachments {
    mode: AttachMode,
    pins: Option<PinDir>,
    attached: BTreeMap<u32, Attached>,
}

impl Attachments {
    pub fn new(mode: AttachMode) -> Self {
        Self {
            mode: mode.resolve(),
            pins: None,
            attached: BTreeMap::new(),
        }
    }

    /// Attachments whose TCX links are pinned in `pins` (and adopted from it). In
    /// clsact mode nothing can be pinned and this is `new`.
    pub fn pinned(mode: AttachMode, pins: PinDir) -> Self {
        let mut this = Self::new(mode);
        if this.mode == AttachMode::Tcx {
            this.pins = Some(pins);
        }
        this
    }

    /// Whether links survive this process (pinned TCX links).
    pub fn survives_exit(&self) -> bool {
        self.pins.is_some()
    }

    /// Whether the attachment on `index` was adopted from a previous agent.
    pub fn adopted(&self, index: u32) -> bool {
        self.attached.get(&index).is_some_and(|a| a.adopted)
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn is_attached(&self, index: u32) -> bool {
        self.attached.contains_key(&index)
    }

    /// Interface indexes attached now.
    pub fn indexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.attached.keys().copied()
    }

    /// Attaches both programs to `interface`; on failure nothing stays attached to it.
    pub fn attach(&mut self, ebpf: &mut Ebpf, interface: &Interface) -> Result<(), AttachError> {
        if self.is_attached(interface.index) {
            return Ok(());
        }
        if self.mode == AttachMode::Clsact {
            match aya::programs::tc::qdisc_add_clsact(&interface.name) {
                Ok(()) => {}
                Err(aya::programs::tc::TcError::AlreadyAttached) => {}
                Err(aya::programs::tc::TcError::NetlinkError(e))
                    if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(AttachError::Clsact {
                        interface: interface.name.clone(),
                        source,
                    });
                }
            }
        }
        let (to_pod, to_adopted) = self.hook(ebpf, Hook::ToPod, interface)?;
        let (from_pod, from_adopted) = match self.hook(ebpf, Hook::FromPod, interface) {
            Ok(done) => done,
            Err(error) => {
                // An adopted link stays as it was found (the other program still
                // enforces); a new one is undone.
                if !to_adopted {
                    release_handle(ebpf, program::TO_POD, to_pod, true);
                }
                return Err(error);
            }
        };
        self.attached.insert(
            interface.index,
            Attached {
                name: interface.name.clone(),
                from_pod,
                to_pod,
                adopted: to_adopted && from_adopted,
            },
        );
        Ok(())
    }

    /// Attaches one hook: adopts its pinned link if there is one, else attaches and
    /// (with a pin directory) pins. Returns the handle and whether it was adopted.
    fn hook(
        &self,
        ebpf: &mut Ebpf,
        hook: Hook,
        interface: &Interface,
    ) -> Result<(Handle, bool), AttachError> {
        let (name, direction) = match hook {
            Hook::ToPod => (program::TO_POD, TcAttachType::Egress),
            Hook::FromPod => (program::FROM_POD, TcAttachType::Ingress),
        };
        let Some(pins) = &self.pins else {
            return Ok((
                Handle::Owned(self.attach_one(ebpf, name, direction, &interface.name)?),
                false,
            ));
        };
        let path = pins.link_path(interface.index, hook);
        let pin_error = |source: Box<dyn std::error::Error + Send + Sync>| AttachError::Pin {
            hook,
            interface: interface.name.clone(),
            path: path.clone(),
            source,
        };
        if path.exists() {
            match adopt(ebpf, name, &path) {
                Ok(link) => return Ok((Handle::Pinned { link, path }, true)),
                Err(error) => {
                    // The pinned link's interface is gone (ifindex reused) or the pin
                    // is not a TC link: it enforces nothing; replace it.
                    tracing::warn!(path = %path.display(), "cannot adopt pinned link, replacing it: {error}");
                    std::fs::remove_file(&path).map_err(|e| pin_error(Box::new(e)))?;
                }
            }
        }
        let id = self.attach_one(ebpf, name, direction, &interface.name)?;
        let pinned = classifier(ebpf, name)?
            .take_link(id)
            .map_err(|e| pin_error(Box::new(e)))
            .and_then(|link| FdLink::try_from(link).map_err(|e| pin_error(Box::new(e))))
            .and_then(|link| link.pin(&path).map_err(|e| pin_error(Box::new(e))))?;
        Ok((
            Handle::Pinned {
                link: FdLink::from(pinned),
                path,
            },
            false,
        ))
    }

    fn attach_one(
        &self,
        ebpf: &mut Ebpf,
        name: &'static str,
        direction: TcAttachType,
        interface: &str,
    ) -> Result<SchedClassifierLinkId, AttachError> {
        let options = match self.mode {
            AttachMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
            AttachMode::Tcx | AttachMode::Auto => TcAttachOptions::TcxOrder(LinkOrder::default()),
        };
        classifier(ebpf, name)?
            .attach_with_options(interface, direction, options)
            .map_err(|source| AttachError::Attach {
                program: name,
                interface: interface.to_owned(),
                mode: self.mode,
                source: Box::new(source),
                hint: if self.mode == AttachMode::Tcx {
                    " (TCX needs Linux 6.6 or newer; try --attach clsact)"
                } else {
                    ""
                },
            })
    }

    /// Detaches from an interface (it may be gone already: errors are ignored, the
    /// kernel released the attachment with the interface) and removes its pins.
    /// Returns its name.
    pub fn forget(&mut self, ebpf: &mut Ebpf, index: u32) -> Option<String> {
        let attached = self.attached.remove(&index)?;
        release_handle(ebpf, program::FROM_POD, attached.from_pod, true);
        release_handle(ebpf, program::TO_POD, attached.to_pod, true);
        Some(attached.name)
    }

    /// Detaches from every interface; returns how many.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) -> usize {
        let indexes: Vec<u32> = self.attached.keys().copied().collect();
        indexes
            .iter()
            .filter(|i| self.forget(ebpf, **i).is_some())
            .count()
    }

    /// Lets go of every attachment without detaching pinned links (they keep
    /// enforcing after this process exits); unpinned ones are detached. Returns how
    /// many stay attached.
    pub fn release(&mut self, ebpf: &mut Ebpf) -> usize {
        let mut kept = 0;
        for (_, attached) in std::mem::take(&mut self.attached) {
            for (name, handle) in [
                (program::FROM_POD, attached.from_pod),
                (program::TO_POD, attached.to_pod),
            ] {
                if matches!(handle, Handle::Pinned { .. }) {
                    kept += 1;
                }
                release_handle(ebpf, name, handle, false);
            }
        }
        kept / 2
    }

    /// Removes pinned links of interfaces this agent did not adopt or attach (their
    /// interface is gone or no longer managed); returns how many. Call after the
    /// first reconcile.
    pub fn prune_pins(&self) -> usize {
        let Some(pins) = &self.pins else { return 0 };
        pins.links()
            .into_iter()
            .filter(|(index, _, _)| !self.attached.contains_key(index))
            .filter(|(_, _, path)| std::fs::remove_file(path).is_ok())
            .count()
    }
}

/// Swaps program `name` into the TCX link pinned at `path`; returns our handle.
fn adopt(
    ebpf: &mut Ebpf,
    name: &'static str,
    path: &std::path::Path,
) -> Result<FdLink, Box<dyn std::error::Error + Send + Sync>> {
    let pinned = PinnedLink::from_pin(path)?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
    let prog = classifier(ebpf, name)?;
    let id = prog.attach_to_link(link)?;
    Ok(FdLink::try_from(prog.take_link(id)?)?)
}

/// Detaches an owned attachment; for a pinned one, removes the pin when `detach`
/// (the link goes with its last reference), else only closes our descriptor.
fn release_handle(ebpf: &mut Ebpf, name: &'static str, handle: Handle, detach: bool) {
    match handle {
        Handle::Owned(id) => {
            if let Ok(prog) = classifier(ebpf, name) {
                let _ = prog.detach(id);
            }
        }
        Handle::Pinned { link, path } => {
            if detach {
                let _ = std::fs::remove_file(&path);
            }
            drop(link);
        }
    }
}
