//! The detectors, one folder each. A detector owns its kernel maps, its state, its metrics
//! (registered when it is made), its long-running task (a [`crate::kernel::reader::Reader`])
//! and its HTTP endpoints. [`all`] is the one list of them; the daemon makes them, lets each
//! set the kernel object's globals it needs, loads the object and starts them in order.
//!
//! Detectors do not import each other, but for one correlation: the listener-loss detector's
//! [`listener_loss::correlator::Correlator`], which the handshake and TCP event detectors feed,
//! handed to them in the [`detector::Context`] (it is started before them).

pub mod detector;
pub mod handshake;
pub mod isn;
pub mod listener_loss;
pub mod listeners;
pub mod tcp_events;
pub mod tls;

use crate::{export::metrics::Registry, settings::Settings};
use detector::Detector;

/// Every detector, in the order they start; making one registers its metrics.
pub fn all(settings: &Settings, registry: &Registry) -> anyhow::Result<Vec<Box<dyn Detector>>> {
    Ok(vec![
        Box::new(listener_loss::ListenerLoss::new(settings, registry)?),
        Box::new(isn::Isn::new(settings, registry)?),
        Box::new(handshake::Handshake::new(settings, registry)?),
        Box::new(tls::Tls::new(settings, registry)?),
        // Before the listeners: their completions are counted by its tracepoint.
        Box::new(tcp_events::TcpEvents::new(settings, registry)?),
        Box::new(listeners::Listeners::new(settings, registry)?),
    ])
}
