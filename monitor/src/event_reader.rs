//! The task every kernel event reader runs: drain its ring buffer when the kernel wakes it
//! (the programs wake only once an eighth of the buffer is full) and on a short timer, and
//! refresh its counters once a second.

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// How often the ring buffer is drained when the kernel has not woken the reader.
const POLL: Duration = Duration::from_millis(50);
const REFRESH: Duration = Duration::from_secs(1);

/// What a reader does with its events and its counters.
pub trait EventReader: Send + 'static {
    /// Handles every event waiting in the ring buffer.
    fn drain(&mut self, events: &mut RingBuf<MapData>) -> anyhow::Result<()>;
    /// Once a second: the kernel counters and whatever else is published periodically.
    fn refresh(&mut self);
}

/// Starts the reader's task; it runs until the runtime stops, or until `drain` fails (logged
/// as `{name} reader stopped`).
pub fn spawn(
    name: &'static str,
    events: RingBuf<MapData>,
    mut reader: impl EventReader,
) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, so the fd outlives its registration.
    let mut events = unsafe { AsyncFd::register(events) }
        .with_context(|| format!("polling the {name} ring buffer"))?;
    tokio::spawn(async move {
        let mut refresh = crate::util::ticks::interval(REFRESH);
        let mut poll = crate::util::ticks::interval(POLL);
        loop {
            let result = tokio::select! {
                guard = events.readable_mut() => match guard {
                    Ok(mut guard) => {
                        let result = reader.drain(guard.get_inner_mut());
                        guard.clear_ready();
                        result
                    }
                    Err(err) => Err(err.into()),
                },
                _ = poll.tick() => reader.drain(events.get_mut()),
                _ = refresh.tick() => {
                    reader.refresh();
                    Ok(())
                }
            };
            if let Err(err) = result {
                log::error!("{name} reader stopped: {err:#}");
                return;
            }
        }
    });
    Ok(())
}
