//! The detector pattern: what a detector does at each step of the daemon's start, and the
//! [`Context`] it starts with.

use std::{num::NonZeroUsize, sync::Arc};

use tokio::sync::Notify;

use crate::{
    detectors::listener_loss::correlator::Correlator,
    export::{
        event_log::EventLog,
        http::Api,
        labels::{ServiceLabels, admission::SharedPolicy},
        metrics::Registry,
    },
    kernel::{
        attacher::InterfaceNames,
        counters::PerCpuCounters,
        loader::{Globals, LoadedObject},
        namespaces::FollowedNamespaces,
        packets::PacketMetrics,
        reader::Tasks,
    },
};

pub trait Detector {
    /// For messages: what the detector watches.
    fn name(&self) -> &'static str;

    /// Before the object is loaded: the values of the read-only globals its programs read.
    fn configure(&mut self, _globals: &mut Globals) -> anyhow::Result<()> {
        Ok(())
    }

    /// After the object is loaded, before anything is attached: takes its maps, starts its
    /// task and adds its endpoints.
    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()>;
}

/// What a detector starts with.
pub struct Context<'a> {
    pub object: &'a mut LoadedObject,
    pub registry: &'a Registry,
    pub tasks: &'a mut Tasks,
    pub api: &'a mut Api,
    pub shared: Shared,
}

/// What the detectors share.
pub struct Shared {
    /// Which services earn a `service` label, and how many each detector may hold.
    pub policy: SharedPolicy,
    pub max_services: NonZeroUsize,
    pub event_log: Option<EventLog>,
    /// The classifiers' counters (packets, parse errors), in which some detectors have slots.
    pub packet_counters: Arc<PerCpuCounters>,
    pub packets: PacketMetrics,
    pub interfaces: InterfaceNames,
    /// Notified when a listener of this namespace opens.
    pub listener_opened: Arc<Notify>,
    /// Set by the listener-loss detector when it starts.
    pub listener_loss: Option<Correlator>,
    /// The other network namespaces followed (`--netns all`): the listener health detector
    /// follows them, the TCP event detector's programs keep their events.
    pub namespaces: FollowedNamespaces,
}

impl Context<'_> {
    /// A detector's own set of service labels.
    pub fn service_labels(&self) -> ServiceLabels {
        ServiceLabels::new(self.shared.max_services, self.shared.policy.clone())
    }
}
