//! Keeps the classifiers' attachments in step with the interfaces of this network namespace:
//! interfaces that appear later are attached, ones that vanish are forgotten, and (netlink
//! mode) a filter removed from outside is attached again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use seqwatch_common::Direction;

use super::{
    interfaces::{self, Interface, Selection},
    loader::{LoadedObject, SYN_RECORDER, SYNACK_FROM_NETNS},
};
use crate::util::lock;

/// A classifier to attach to every monitored interface, and where.
pub type Hook = (Direction, &'static str);

/// `--netns all`, on this host's end of another namespace's veth whose hooks sample no ingress
/// SYN-ACKs: the SYNs leaving are recorded (by the sampler if the interface has it), and the
/// namespace's SYN-ACKs answering them are sampled as they come in. Those to a client on this
/// host never leave by an egress hook; those forwarded are then not sampled again as they
/// leave (`JUDGED_AT_INGRESS`).
const RECORD_SYNS: Hook = (Direction::Egress, SYN_RECORDER);
const SAMPLE_FROM_NETNS: Hook = (Direction::Ingress, SYNACK_FROM_NETNS);

/// The monitored interfaces' names by index, as the attacher last saw them, for the detectors
/// that label by interface. Each change is a new map, so that a reader sees that it changed by
/// comparing pointers.
#[derive(Clone, Default)]
pub struct InterfaceNames(Arc<Mutex<Arc<HashMap<u32, String>>>>);

impl InterfaceNames {
    pub fn current(&self) -> Arc<HashMap<u32, String>> {
        lock(&self.0).clone()
    }

    pub fn publish(&self, names: &HashMap<u32, String>) {
        let mut current = lock(&self.0);
        if **current != *names {
            *current = Arc::new(names.clone());
        }
    }
}

pub struct Attacher {
    selection: Selection,
    hooks: &'static [Hook],
    /// `--netns all`: the other namespaces' veths get [`SAMPLE_FROM_NETNS`].
    sample_other_namespaces: bool,
    names: HashMap<u32, String>,
    /// The hooks attached (or tried) on each interface.
    applied: HashMap<u32, Vec<Hook>>,
    published: InterfaceNames,
    /// Netlink filters removed from outside, until attached again, with the attempts so far
    /// (one a second; the first is logged).
    lost: BTreeMap<(u32, Direction), u32>,
}

impl Attacher {
    pub fn new(
        selection: Selection,
        hooks: &'static [Hook],
        sample_other_namespaces: bool,
        published: InterfaceNames,
    ) -> Self {
        Attacher {
            selection,
            hooks,
            sample_other_namespaces,
            names: HashMap::new(),
            applied: HashMap::new(),
            published,
            lost: BTreeMap::new(),
        }
    }

    /// A named interface that does not exist is a configuration error, said at once.
    pub async fn require_named_interfaces(&self) -> anyhow::Result<()> {
        let Selection::Named(names) = &self.selection else {
            return Ok(());
        };
        let present = interfaces::list().await?;
        for name in names {
            if !present.values().any(|interface| interface.name == *name) {
                anyhow::bail!(
                    "interface {name:?} does not exist in this network namespace \
                     (see `ip link`; run seqwatch with nsenter --net=… for another namespace)"
                );
            }
        }
        Ok(())
    }

    pub async fn sync(&mut self, object: &mut LoadedObject) -> anyhow::Result<()> {
        let present = interfaces::list().await?;
        for interface in present.values() {
            let hooks = self.hooks_for(interface);
            if hooks.is_empty() {
                continue;
            }
            self.names.insert(interface.index, interface.name.clone());
            self.detach_unwanted(object, interface, &hooks);
            for &(direction, program) in &hooks {
                self.attach(object, interface, direction, program);
            }
            self.applied.insert(interface.index, hooks);
        }
        self.forget_vanished(&present, object);
        self.published.publish(&self.names);
        Ok(())
    }

    /// The selection's hooks if it wants the interface, egress first; then, following other
    /// namespaces, what a veth of theirs needs to have its SYN-ACKs sampled as they come in.
    fn hooks_for(&self, interface: &Interface) -> Vec<Hook> {
        let mut hooks = Vec::new();
        if self.selection.wants(interface) {
            hooks.extend_from_slice(self.hooks);
        }
        let samples_ingress = hooks
            .iter()
            .any(|(direction, _)| *direction == Direction::Ingress);
        if self.sample_other_namespaces
            && interface.faces_other_netns
            && interface.up
            && !samples_ingress
        {
            if hooks.is_empty() {
                hooks.push(RECORD_SYNS);
            }
            hooks.push(SAMPLE_FROM_NETNS);
        }
        hooks
    }

    /// Takes back the hooks an interface still wanted had and no longer needs: its peer moved
    /// back to this namespace, or the selection's own hooks replace the SYN recorder. (An
    /// interface that went down keeps what it has, as it always did, until it is gone.)
    fn detach_unwanted(
        &mut self,
        object: &mut LoadedObject,
        interface: &Interface,
        wanted: &[Hook],
    ) {
        let Some(applied) = self.applied.get(&interface.index) else {
            return;
        };
        let unwanted: Vec<Hook> = applied
            .iter()
            .filter(|hook| !wanted.contains(hook))
            .copied()
            .collect();
        // Ingress first: its SYN-ACKs need the SYNs recorded on egress.
        for (direction, program) in unwanted.into_iter().rev() {
            object.detach(interface.index, direction);
            self.lost.remove(&(interface.index, direction));
            let labels = [program, interface.name.as_str(), direction.as_str()];
            object.attach_metrics().remove(&labels);
        }
    }

    fn attach(
        &mut self,
        object: &mut LoadedObject,
        interface: &Interface,
        direction: Direction,
        program: &'static str,
    ) {
        if object.is_attached(interface.index, direction) {
            return;
        }
        let key = (interface.index, direction);
        let attempts = self.lost.get_mut(&key).map(|attempts| {
            *attempts += 1;
            *attempts
        });
        if attempts == Some(1) {
            log::warn!("{program} on {} was removed from outside", interface.name);
        }
        let attached = if direction == Direction::Ingress
            && !object.is_attached(interface.index, Direction::Egress)
        {
            Err(anyhow::anyhow!(
                "left off: the SYNs its SYN-ACKs must answer are recorded on the \
                 interface's egress, where the classifier is not attached"
            ))
        } else {
            object.attach(interface.index, direction, program)
        };
        match attached {
            Ok(()) => log::info!("attached {program} to {}", interface.name),
            Err(err) if attempts.is_some_and(|n| n > 1) => {
                log::debug!("{program} on {}: {err:#}", interface.name)
            }
            Err(err) => log::warn!("{program} on {}: {err:#}", interface.name),
        }
        let labels = [program, interface.name.as_str(), direction.as_str()];
        let metrics = object.attach_metrics();
        let now_attached = object.is_attached(interface.index, direction);
        if now_attached && attempts.is_some() {
            self.lost.remove(&key);
            metrics.reattached(&labels);
        }
        metrics.set(&labels, now_attached);
    }

    /// Attaches again what was taken away from under us (reported 0 meanwhile).
    pub async fn reattach_lost(&mut self, object: &mut LoadedObject) -> anyhow::Result<()> {
        for key in object.forget_lost_attachments() {
            self.lost.insert(key, 0);
        }
        if self.lost.is_empty() {
            return Ok(());
        }
        self.sync(object).await
    }

    fn forget_vanished(&mut self, present: &BTreeMap<u32, Interface>, object: &mut LoadedObject) {
        let vanished: Vec<(u32, String)> = self
            .names
            .iter()
            .filter(|(index, name)| present.get(index).is_none_or(|i| i.name != **name))
            .map(|(index, name)| (*index, name.clone()))
            .collect();
        for (index, name) in vanished {
            self.names.remove(&index);
            let applied = self.applied.remove(&index).unwrap_or_default();
            for (direction, program) in applied.into_iter().rev() {
                object.detach(index, direction);
                self.lost.remove(&(index, direction));
                let labels = [program, name.as_str(), direction.as_str()];
                object.attach_metrics().remove(&labels);
            }
            log::info!("interface {name} is gone");
        }
    }
}
