//! The one shape of every detector's long-running task, a [`Reader`]: it reads what its kernel
//! programs left in their ring buffers when the kernel wakes it (the programs wake it only
//! once a ring is an eighth full) and on a short timer, does its periodic work on a slower
//! one, and at stop reads the rings one last time. A reader without rings (one that polls the
//! socket table, or judges what others gave it) runs on the same timers.
//!
//! Every task runs on the daemon's single runtime thread, so a read must be bounded: each
//! reader takes at most a fixed number of records per read, and the rest wait for the next.

use std::{sync::Arc, task::Poll, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};

use crate::util::ticks;

/// What a detector's task does.
pub trait Reader: Send + 'static {
    /// Reads what waits in `rings` (and, for a reader that polls, reads its source): when the
    /// kernel wakes the task, at each poll, when woken by its [`Wakeup`], and once more at
    /// stop if it has rings.
    fn read(&mut self, rings: &mut Rings) -> anyhow::Result<()>;
    /// After each poll's read: work that is due every poll period.
    fn polled(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Every [`Schedule::refresh`]: labels withdrawn, gauges published, slower kernel reads.
    fn refresh(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// At stop, after the last read: what must not be lost (a buffered file).
    fn stop(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The timers of a task; all are on one grid ([`ticks`]), so tasks wake together.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// How often the rings are read when the kernel has not woken the task.
    pub poll: Duration,
    pub refresh: Duration,
}

/// The schedule of a ring-buffer reader: records wait at most 50 ms (each poll costs the
/// process a wakeup, so not much less), periodic work once a second.
pub const RING_SCHEDULE: Schedule = Schedule {
    poll: Duration::from_millis(50),
    refresh: Duration::from_secs(1),
};

/// Something else that wakes a task for a read: a notification, honoured no sooner than
/// `gap` after the previous read.
pub struct Wakeup {
    pub notify: Arc<Notify>,
    pub gap: Duration,
}

/// A task's ring buffers, each registered for the kernel's wakeups.
pub struct Rings(Vec<AsyncFd<RingBuf<MapData>>>);

impl Rings {
    pub fn register(rings: Vec<RingBuf<MapData>>) -> anyhow::Result<Rings> {
        rings
            .into_iter()
            .map(|ring| {
                // SAFETY: the AsyncFd owns the ring buffer, so the fd outlives its registration.
                unsafe { AsyncFd::register(ring) }.context("polling a ring buffer")
            })
            .collect::<anyhow::Result<_>>()
            .map(Rings)
    }

    pub fn one(ring: RingBuf<MapData>) -> anyhow::Result<Rings> {
        Rings::register(vec![ring])
    }

    /// No rings: a reader that polls.
    pub fn none() -> Rings {
        Rings(Vec::new())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut RingBuf<MapData>> {
        self.0.iter_mut().map(AsyncFd::get_mut)
    }

    /// Hands each waiting item to `handle`, ring after ring, at most `max` in all; returns
    /// how many.
    pub fn drain(&mut self, max: usize, handle: impl FnMut(&[u8])) -> usize {
        drain(self.iter_mut(), max, handle)
    }

    /// Resolves when the kernel has woken the reader of any ring (never without rings). The
    /// readiness is cleared first, so that records written during the read wake it again.
    async fn woken(&self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| {
            for ring in &self.0 {
                if let Poll::Ready(ready) = ring.poll_read_ready(cx) {
                    return Poll::Ready(ready.map(|mut guard| guard.clear_ready()));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The detectors' running tasks.
pub struct Tasks {
    stop: watch::Sender<bool>,
    running: JoinSet<anyhow::Result<()>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            stop: watch::Sender::new(false),
            running: JoinSet::new(),
        }
    }
}

impl Tasks {
    /// Starts `reader`'s task; it runs until [`Tasks::stop`], or until a call of the reader
    /// fails, which [`Tasks::failed`] then reports as `{name}: error`.
    pub fn spawn(
        &mut self,
        name: &'static str,
        rings: Rings,
        schedule: Schedule,
        wakeup: Option<Wakeup>,
        reader: impl Reader,
    ) {
        let stop = self.stop.subscribe();
        self.running.spawn(async move {
            run(rings, schedule, wakeup, reader, stop)
                .await
                .with_context(|| format!("the {name} reader stopped"))
        });
    }

    /// Resolves with the error of the first task that fails (never while all run).
    pub async fn failed(&mut self) -> anyhow::Error {
        loop {
            match self.running.join_next().await {
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(err))) => return err,
                Some(Err(err)) => return anyhow::Error::from(err).context("a reader panicked"),
                None => std::future::pending().await,
            }
        }
    }

    /// Tells every task to stop and waits for them: each reads its rings one last time.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        while let Some(ended) = self.running.join_next().await {
            ended??;
        }
        Ok(())
    }
}

/// Hands each item waiting in `rings` to `handle`, ring after ring, at most `max` in all;
/// returns how many.
pub fn drain<'a>(
    rings: impl IntoIterator<Item = &'a mut RingBuf<MapData>>,
    max: usize,
    mut handle: impl FnMut(&[u8]),
) -> usize {
    let mut read = 0;
    for ring in rings {
        while read < max
            && let Some(item) = ring.next()
        {
            read += 1;
            handle(&item);
        }
    }
    read
}

async fn run(
    mut rings: Rings,
    schedule: Schedule,
    wakeup: Option<Wakeup>,
    mut reader: impl Reader,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut poll = ticks::interval(schedule.poll);
    let mut refresh = ticks::interval(schedule.refresh);
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            woken = rings.woken() => {
                woken?;
                reader.read(&mut rings)?;
            }
            _ = poll.tick() => {
                last_read = Instant::now();
                reader.read(&mut rings)?;
                reader.polled()?;
            }
            _ = refresh.tick() => reader.refresh()?,
            () = notified(&wakeup) => {
                let gap = wakeup.as_ref().map_or(Duration::ZERO, |wakeup| wakeup.gap);
                tokio::time::sleep_until(last_read + gap).await;
                last_read = Instant::now();
                reader.read(&mut rings)?;
            }
            _ = stop.changed() => break,
        }
    }
    if !rings.0.is_empty() {
        reader.read(&mut rings)?;
    }
    reader.stop()
}

/// Resolves when the wakeup is notified (never without one).
async fn notified(wakeup: &Option<Wakeup>) {
    match wakeup {
        Some(wakeup) => wakeup.notify.notified().await,
        None => std::future::pending().await,
    }
}
