//! The other network namespaces followed (`--netns all`), as the detectors share them: who
//! each is (its [`NetnsReport`], for the events and the JSON API), and the tracepoint
//! programs' set of them (`FOLLOWED_NETNS`, with their listeners per port in
//! `NETNS_LISTENING`). The listener health detector follows and forgets namespaces; the TCP
//! event detector gives it the kernel maps and names its events' namespaces with it.
//!
//! A namespace is put in the kernel's set as it is followed and taken out before its socket
//! (which keeps it alive) is closed: its inode number, which the kernel may give to a new
//! namespace once it is freed, is never in the set of a namespace it does not name.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData};
use seqwatch_common::tcp_events::NetnsPort;

use crate::{
    host::netns::{Identity, NetnsInode, NetnsReport},
    util::lock,
};

/// The namespaces followed; cheap to clone, shared.
#[derive(Clone, Default)]
pub struct FollowedNamespaces(Arc<Mutex<Directory>>);

#[derive(Default)]
struct Directory {
    identities: BTreeMap<u32, Identity>,
    kernel: Option<KernelSet>,
}

/// The tracepoint programs' maps.
struct KernelSet {
    followed: HashMap<MapData, u32, u32>,
    listening: HashMap<MapData, NetnsPort, u32>,
}

impl FollowedNamespaces {
    /// Lets the tracepoint programs keep the followed namespaces' events from now on.
    pub fn attach_kernel(
        &self,
        followed: HashMap<MapData, u32, u32>,
        listening: HashMap<MapData, NetnsPort, u32>,
    ) {
        let mut directory = lock(&self.0);
        let mut kernel = KernelSet {
            followed,
            listening,
        };
        for &inode in directory.identities.keys() {
            kernel.follow(inode);
        }
        directory.kernel = Some(kernel);
    }

    /// Follows a namespace (or renames one followed); its events are kept from now on.
    pub fn follow(&self, inode: NetnsInode, identity: &Identity) {
        let Ok(inode) = u32::try_from(inode) else {
            // nsfs inode numbers are 32-bit (`struct ns_common.inum`).
            log::warn!("network namespace {inode}: an inode number beyond 32 bits");
            return;
        };
        let mut directory = lock(&self.0);
        if directory
            .identities
            .insert(inode, identity.clone())
            .is_none()
            && let Some(kernel) = &mut directory.kernel
        {
            kernel.follow(inode);
        }
    }

    /// Gives the kernel's count of a followed namespace's listeners per port the listeners
    /// open now (`listeners`: port → listeners): run once the namespace is followed, so that
    /// none opened in between is missed; the larger count stays.
    pub fn seed_listeners(
        &self,
        inode: NetnsInode,
        listeners: impl IntoIterator<Item = (u16, u32)>,
    ) {
        let (Ok(netns), Some(kernel)) = (u32::try_from(inode), &mut lock(&self.0).kernel) else {
            return;
        };
        for (port, open) in listeners {
            let key = NetnsPort {
                netns,
                port,
                _pad: 0,
            };
            let counted = kernel.listening.get(&key, 0).unwrap_or(0);
            if let Err(err) = kernel.listening.insert(&key, &open.max(counted), 0) {
                log::debug!("network namespace {netns}: listeners on port {port}: {err}");
            }
        }
    }

    /// Forgets a namespace: out of the kernel's set first, then its listener counts.
    pub fn forget(&self, inode: NetnsInode) {
        let Ok(inode) = u32::try_from(inode) else {
            return;
        };
        let mut directory = lock(&self.0);
        directory.identities.remove(&inode);
        if let Some(kernel) = &mut directory.kernel {
            kernel.forget(inode);
        }
    }

    /// Who a followed namespace is; `None` once forgotten.
    pub fn report(&self, inode: u32) -> Option<NetnsReport> {
        let identity = lock(&self.0).identities.get(&inode)?.clone();
        Some(NetnsReport {
            inode: inode.into(),
            identity,
        })
    }

    /// Whether a namespace is followed.
    pub fn is_followed(&self, inode: u32) -> bool {
        lock(&self.0).identities.contains_key(&inode)
    }
}

impl KernelSet {
    fn follow(&mut self, inode: u32) {
        if let Err(err) = self.followed.insert(&inode, &1, 0) {
            log::warn!("network namespace {inode}: its TCP events are not kept: {err}");
        }
    }

    fn forget(&mut self, inode: u32) {
        // Absent if following it had failed.
        let _ = self.followed.remove(&inode);
        let ports: Vec<NetnsPort> = self
            .listening
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.netns == inode)
            .collect();
        for key in ports {
            let _ = self.listening.remove(&key);
        }
    }
}
