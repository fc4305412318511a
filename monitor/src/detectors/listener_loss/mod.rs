//! Crash correlation: a listener that closes (or whose process exits) within a window after
//! an anomalous handshake to its port is reported as `listener_lost_after_anomaly`, naming the
//! anomaly kinds and the sources seen just before. This detector has no kernel programs of
//! its own: the handshake detector tells its [`Correlator`] every anomaly, the TCP event
//! detector every listener that closes, and its reader judges each close once anomalies
//! reported just before it (read from another ring buffer) have had time to arrive.

pub mod correlator;

use std::time::{Duration, Instant};

use prometheus::IntCounterVec;

use crate::{
    detectors::detector::{Context, Detector},
    export::metrics::Registry,
    kernel::reader::{Reader, Rings, Schedule},
    settings::Settings,
};
use correlator::Correlator;

/// Closes are judged this often: the reader's poll.
const SCHEDULE: Schedule = Schedule {
    poll: Duration::from_millis(100),
    refresh: Duration::from_secs(1),
};

/// The detector, before it starts.
pub struct ListenerLoss {
    window: Duration,
    lost: IntCounterVec,
}

impl ListenerLoss {
    pub fn new(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        Ok(ListenerLoss {
            window: Duration::from_secs(settings.listener_loss_window),
            lost: registry.counters(
                "seqwatch_listener_lost_after_anomaly_total",
                "Listeners that closed within the window after a handshake anomaly to their \
                 port, by the anomalies' service.",
                &["service"],
            )?,
        })
    }
}

impl Detector for ListenerLoss {
    fn name(&self) -> &'static str {
        "listener loss"
    }

    /// Offers its correlator to the detectors started after it, which feed it.
    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        let name = self.name();
        let correlator = Correlator::new(
            self.window,
            ctx.service_labels(),
            self.lost,
            ctx.shared.event_log.clone(),
            ctx.shared.namespaces.clone(),
        );
        ctx.shared.listener_loss = Some(correlator.clone());
        ctx.tasks
            .spawn(name, Rings::none(), SCHEDULE, None, LossReader(correlator));
        Ok(())
    }
}

/// The detector's task: judges the closes that are due, and withdraws labels.
struct LossReader(Correlator);

impl Reader for LossReader {
    fn read(&mut self, _rings: &mut Rings) -> anyhow::Result<()> {
        self.0.judge_due(Instant::now());
        Ok(())
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        self.0.forget_withdrawn();
        Ok(())
    }
}
