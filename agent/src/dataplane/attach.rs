//! Attaching both TC programs to managed interfaces, and detaching them: TCX links
//! where the kernel has them (6.6+), a clsact qdisc with direct-action filters
//! otherwise. An interface is enforced in both directions or in neither.

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, TcAttachType};
use aya::util::KernelVersion;
use netfence_common::program;

use super::links::Interface;
use super::loader::{LoadError, classifier};

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
}

#[derive(Debug)]
struct Attached {
    name: String,
    from_pod: SchedClassifierLinkId,
    to_pod: SchedClassifierLinkId,
}

/// The interfaces both programs are attached to, by ifindex.
#[derive(Debug)]
pub struct Attachments {
    mode: AttachMode,
    attached: BTreeMap<u32, Attached>,
}

impl Attachments {
    pub fn new(mode: AttachMode) -> Self {
        Self {
            mode: mode.resolve(),
            attached: BTreeMap::new(),
        }
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
                Err(aya::programs::tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(AttachError::Clsact {
                        interface: interface.name.clone(),
                        source,
                    });
                }
            }
        }
        let to_pod = self.attach_one(ebpf, program::TO_POD, TcAttachType::Egress, &interface.name)?;
        let from_pod = match self.attach_one(ebpf, program::FROM_POD, TcAttachType::Ingress, &interface.name) {
            Ok(id) => id,
            Err(error) => {
                if let Ok(prog) = classifier(ebpf, program::TO_POD) {
                    let _ = prog.detach(to_pod);
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
            },
        );
        Ok(())
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
    /// kernel released the attachment with the interface). Returns its name.
    pub fn forget(&mut self, ebpf: &mut Ebpf, index: u32) -> Option<String> {
        let attached = self.attached.remove(&index)?;
        if let Ok(prog) = classifier(ebpf, program::FROM_POD) {
            let _ = prog.detach(attached.from_pod);
        }
        if let Ok(prog) = classifier(ebpf, program::TO_POD) {
            let _ = prog.detach(attached.to_pod);
        }
        Some(attached.name)
    }

    /// Detaches from every interface; returns how many.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) -> usize {
        let indexes: Vec<u32> = self.attached.keys().copied().collect();
        indexes.iter().filter(|i| self.forget(ebpf, **i).is_some()).count()
    }
}
