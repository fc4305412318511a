//! The other network namespaces followed (`--netns all`), as the detectors share them: who
//! each is (its [`NetnsReport`], for the events and the JSON API), its interfaces' addresses
//! (so that a service or an anomaly seen on this host's interfaces is named by the namespace
//! that serves it), and the tracepoint programs' set of them (`FOLLOWED_NETNS`, with
//! their listeners per port in `NETNS_LISTENING`). The listener health detector follows and
//! forgets namespaces and notes their addresses; the TCP event detector gives it the kernel
//! maps and names its events' namespaces with it; the ISN and handshake detectors name their
//! services' and anomalies' namespaces with it.
//!
//! A namespace is put in the kernel's set as it is followed and taken out before its socket
//! (which keeps it alive) is closed: its inode number, which the kernel may give to a new
//! namespace once it is freed, is never in the set of a namespace it does not name.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::IpAddr,
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

/// Addresses remembered per namespace; beyond it, later ones are not.
pub const MAX_ADDRESSES_PER_NAMESPACE: usize = 16;

#[derive(Default)]
struct Directory {
    namespaces: BTreeMap<u32, Followed>,
    /// Every followed namespace's addresses, and the namespaces using each.
    addresses: StdHashMap<IpAddr, BTreeSet<u32>>,
    /// The daemon's own namespace's: an address of its own names no other namespace.
    own_addresses: BTreeSet<IpAddr>,
    kernel: Option<KernelSet>,
}

struct Followed {
    identity: Identity,
    addresses: BTreeSet<IpAddr>,
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
        for &inode in directory.namespaces.keys() {
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
        if let Some(followed) = directory.namespaces.get_mut(&inode) {
            followed.identity = identity.clone();
            return;
        }
        let followed = Followed {
            identity: identity.clone(),
            addresses: BTreeSet::new(),
        };
        directory.namespaces.insert(inode, followed);
        if let Some(kernel) = &mut directory.kernel {
            kernel.follow(inode);
        }
    }

    /// A followed namespace's interface addresses now, the first
    /// [`MAX_ADDRESSES_PER_NAMESPACE`] of them; loopback and link-local ones, which every
    /// namespace may have, name none.
    pub fn set_addresses(&self, inode: NetnsInode, addresses: impl IntoIterator<Item = IpAddr>) {
        let Ok(inode) = u32::try_from(inode) else {
            return;
        };
        let directory = &mut *lock(&self.0);
        let Some(followed) = directory.namespaces.get_mut(&inode) else {
            return;
        };
        let now: BTreeSet<IpAddr> = addresses
            .into_iter()
            .filter(|a| names_a_namespace(*a))
            .take(MAX_ADDRESSES_PER_NAMESPACE)
            .collect();
        let before = std::mem::replace(&mut followed.addresses, now.clone());
        for gone in before.difference(&now) {
            unclaim(&mut directory.addresses, *gone, inode);
        }
        for address in now {
            directory
                .addresses
                .entry(address)
                .or_default()
                .insert(inode);
        }
    }

    /// The addresses noted for a followed namespace.
    pub fn addresses(&self, inode: NetnsInode) -> Vec<IpAddr> {
        let directory = lock(&self.0);
        let followed = u32::try_from(inode)
            .ok()
            .and_then(|inode| directory.namespaces.get(&inode));
        followed.map_or_else(Vec::new, |f| f.addresses.iter().copied().collect())
    }

    /// The daemon's own namespace's interface addresses now.
    pub fn set_own_addresses(&self, addresses: impl IntoIterator<Item = IpAddr>) {
        lock(&self.0).own_addresses = addresses.into_iter().collect();
    }

    /// Who the followed namespace with `address` is, if exactly one has it and the daemon's
    /// namespace does not: isolated namespaces may number themselves alike, and a service is
    /// then none's for sure.
    pub fn netns_of(&self, address: IpAddr) -> Option<NetnsReport> {
        let directory = lock(&self.0);
        if directory.own_addresses.contains(&address) {
            return None;
        }
        let users = directory.addresses.get(&address)?;
        let (Some(&inode), 1) = (users.first(), users.len()) else {
            return None;
        };
        let identity = &directory.namespaces.get(&inode)?.identity;
        Some(NetnsReport::new(inode.into(), identity))
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
        let directory = &mut *lock(&self.0);
        if let Some(followed) = directory.namespaces.remove(&inode) {
            for address in followed.addresses {
                unclaim(&mut directory.addresses, address, inode);
            }
        }
        if let Some(kernel) = &mut directory.kernel {
            kernel.forget(inode);
        }
    }

    /// Who a followed namespace is; `None` once forgotten.
    pub fn report(&self, inode: u32) -> Option<NetnsReport> {
        let directory = lock(&self.0);
        let identity = &directory.namespaces.get(&inode)?.identity;
        Some(NetnsReport::new(inode.into(), identity))
    }

    /// Whether a namespace is followed.
    pub fn is_followed(&self, inode: u32) -> bool {
        lock(&self.0).namespaces.contains_key(&inode)
    }
}

/// Takes `inode` off the namespaces using `address`.
fn unclaim(addresses: &mut StdHashMap<IpAddr, BTreeSet<u32>>, address: IpAddr, inode: u32) {
    if let Some(users) = addresses.get_mut(&address) {
        users.remove(&inode);
        if users.is_empty() {
            addresses.remove(&address);
        }
    }
}

/// Not loopback, unspecified nor IPv6 link-local: an address that may be one namespace's.
fn names_a_namespace(address: IpAddr) -> bool {
    let link_local = match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !(address.is_loopback() || address.is_unspecified() || link_local)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(container: &str) -> Identity {
        Identity {
            container: Some(container.to_owned()),
            ..Identity::default()
        }
    }

    #[test]
    fn a_namespaces_addresses_name_it_until_it_is_forgotten() {
        let namespaces = FollowedNamespaces::default();
        namespaces.follow(7, &identity("aaaaaaaaaaaa"));
        let own: [IpAddr; 4] = [
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "fe80::1".parse().unwrap(),
        ];
        let served: IpAddr = "10.88.0.2".parse().unwrap();
        namespaces.set_addresses(7, own.into_iter().chain([served]));
        assert_eq!(namespaces.netns_of(served).unwrap().inode, 7);
        for address in own {
            assert_eq!(
                namespaces.netns_of(address),
                None,
                "{address}: every namespace's"
            );
        }
        namespaces.set_addresses(8, [served]);
        assert_eq!(
            namespaces.netns_of(served).unwrap().inode,
            7,
            "8 is not followed"
        );
        namespaces.follow(8, &identity("bbbbbbbbbbbb"));
        namespaces.set_addresses(8, [served]);
        assert_eq!(namespaces.netns_of(served), None, "7's or 8's");
        namespaces.forget(8);
        assert_eq!(namespaces.netns_of(served).unwrap().inode, 7);
        namespaces.set_own_addresses([served]);
        assert_eq!(namespaces.netns_of(served), None, "the daemon's own");
        namespaces.set_own_addresses([]);
        namespaces.forget(7);
        assert_eq!(namespaces.netns_of(served), None);
        assert_eq!(namespaces.report(7), None);
    }

    #[test]
    fn addresses_per_namespace_are_bounded() {
        let namespaces = FollowedNamespaces::default();
        namespaces.follow(7, &Identity::default());
        let many = (0..=255u8).map(|n| IpAddr::from([10, 0, 0, n]));
        namespaces.set_addresses(7, many);
        let named = (0..=255u8)
            .filter(|n| namespaces.netns_of(IpAddr::from([10, 0, 0, *n])).is_some())
            .count();
        assert_eq!(named, MAX_ADDRESSES_PER_NAMESPACE);
    }
}
