//! The run loop's side of interfaces: list them, bind pod addresses to them
//! ([`links::bind`]: CNI records first — netfence-cni's, then the runtime's result
//! cache's — then peer reads), sync the bindings, and
//! only then attach programs to new ones — so a program never meets a pod whose
//! binding is not written yet (a new veth, or at start after a layout change, when
//! the new maps are empty and the programs are swapped into the pinned links).

use std::collections::{BTreeMap, BTreeSet};

use super::Enforcer;
use crate::cni::cache;
use crate::dataplane::links::{self, CniRecord, Interface};
use crate::dataplane::owners::Owner;

/// What a rebind changed.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Rebound {
    pub(super) node_changed: bool,
    pub(super) bindings_changed: bool,
}

impl Enforcer {
    /// Every interface of the agent's namespace (logged and `None` on failure).
    pub(super) async fn list_interfaces(&self) -> Option<Vec<Interface>> {
        match links::list(&self.handle).await {
            Ok(all) => Some(all),
            Err(error) => {
                tracing::error!("listing interfaces: {error}");
                None
            }
        }
    }

    /// The records of the runtime's CNI result cache (`--cni-cache-dir`; none when
    /// empty). A directory that cannot be listed is a warning once, and no records.
    fn cached_records(&mut self) -> Vec<CniRecord> {
        if self.cni.cache_dir.as_os_str().is_empty() {
            return Vec::new();
        }
        match cache::read_dir(&self.cni.cache_dir) {
            Ok(records) => {
                self.cni.cache_failing = false;
                records
            }
            Err(error) => {
                if self.cni.cache_failing {
                    tracing::debug!("cni cache: {error}");
                } else {
                    tracing::warn!(
                        "cni cache: {error}; pods only it knows are bound from what they show"
                    );
                }
                self.cni.cache_failing = true;
                Vec::new()
            }
        }
    }

    /// Recomputes the address bindings of the `managed` interfaces (with the owners
    /// of the last compile) and re-reads the node's addresses; syncs nothing (the
    /// caller does, once).
    pub(super) async fn rebind(&mut self, managed: &[&Interface]) -> Rebound {
        let mut records: Vec<CniRecord> = self
            .cni
            .pending
            .iter()
            .map(|endpoint| {
                let (namespace, pod) = endpoint.names();
                CniRecord {
                    owner: Owner { namespace, pod },
                    ips: endpoint.ips.clone(),
                    host_interfaces: endpoint.host_interfaces.clone(),
                }
            })
            .collect();
        // The runtime's records after the plugin's: `bind` keeps the first record per
        // address, so netfence-cni's wins where both name one.
        records.extend(self.cached_records());
        let (reads, unreadable) = links::peer_reads(&self.handle, managed).await;
        for problem in unreadable {
            tracing::debug!("{problem}");
        }
        // `start` compiles before it binds: no owners only when that compile failed.
        let none = BTreeMap::new();
        let owners = self.owners.as_ref().unwrap_or(&none);
        let bound = links::bind(&self.bindings, &records, &reads, owners);
        // Each problem is a warning once (they are re-found every second), then
        // debug while it lasts.
        let problems: BTreeSet<String> = bound.problems.iter().map(ToString::to_string).collect();
        for problem in &problems {
            if self.bind_problems.contains(problem) {
                tracing::debug!("{problem}");
            } else {
                tracing::warn!("{problem}");
            }
        }
        self.bind_problems = problems;
        let node_changed = match links::node_addresses(&self.handle).await {
            Ok(addresses) if addresses != self.node_addresses => {
                tracing::info!(addresses = ?addresses, "node addresses changed");
                self.node_addresses = addresses;
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::warn!("listing the node's addresses: {error}");
                false
            }
        };
        let bindings_changed = bound.bindings != self.bindings;
        self.bindings = bound.bindings;
        Rebound {
            node_changed,
            bindings_changed,
        }
    }

    /// Lists interfaces, forgets gone ones, refreshes the address bindings and
    /// syncs if they changed, then attaches to new managed interfaces (after their
    /// bindings are written).
    pub(super) async fn reconcile_interfaces(&mut self) {
        let Some(all) = self.list_interfaces().await else {
            return;
        };
        let managed: Vec<&Interface> = self.selection.managed(&all);
        let gone: Vec<u32> = self
            .attachments
            .indexes()
            .filter(|index| !managed.iter().any(|i| i.index == *index))
            .collect();
        for index in gone {
            if let Some(name) = self.attachments.forget(&mut self.datapath.ebpf, index) {
                tracing::info!(interface = %name, index, "interface gone; forgotten");
            }
        }
        let rebound = self.rebind(&managed).await;
        if rebound.node_changed {
            self.recompile("node addresses");
        } else if rebound.bindings_changed {
            self.sync("interfaces");
        }
        for interface in &managed {
            if self.attachments.is_attached(interface.index) {
                continue;
            }
            match self.attachments.attach(&mut self.datapath.ebpf, interface) {
                Ok(()) => {
                    tracing::info!(interface = %interface.name, index = interface.index, "attached")
                }
                // Retried on the next tick: an interface can vanish or be mid-setup.
                Err(error) => tracing::warn!("{error}; retrying"),
            }
        }
        self.answer_cni_waiters();
    }
}
