//! What a scored service costs in memory: the heap bytes the service table holds for services
//! with a few samples each, counted by this test binary's own allocator. Per-service state
//! grows with the samples (a full window's is reserved only once the window fills), so a flood
//! of services seen a few times each, up to the cap, costs kilobytes each, not the ~125 KB a
//! full window reserves. The scorer's lookup tables, built once per process on its first
//! report, are counted apart: they are not a service's.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    num::NonZeroUsize,
    sync::atomic::{AtomicIsize, Ordering},
    time::Instant,
};

use seqwatch::{
    detectors::isn::{metrics::IsnMetrics, sample::Sample, services::ServiceTable},
    export::{
        labels::{ServiceLabels, admission::LabelPolicy},
        metrics::Registry,
    },
    scorer::ScorerConfig,
};

/// The system allocator, keeping count of the bytes live.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: a block this allocator gave out, with its layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: a block this allocator gave out, with its layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The default `--max-services`.
const SERVICES: u16 = 4096;
const SAMPLES_PER_SERVICE: u16 = 4;
/// Heap bytes per service with a few samples, scored, at most.
const MAX_BYTES_PER_SERVICE: isize = 4096;
/// Heap bytes of the first report of a process, the scorer's lookup tables included, at most.
const MAX_FIRST_REPORT_BYTES: isize = 8 << 20;

fn sample(service: u16, client: u16) -> Sample {
    Sample {
        ts_ns: u64::from(client) * 1_000_000,
        ifindex: 2,
        direction: "ingress",
        server: SocketAddr::from(([192, 0, 2, (service >> 8) as u8], service)),
        client: SocketAddr::from(([198, 51, 100, 2], 40_000 + client)),
        seq: (u32::from(service) << 16) | (u32::from(client) * 7919),
        ack: 1,
        window: 64_240,
        ttl: 64,
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        tsval: None,
        options_malformed: false,
    }
}

fn table(cap: NonZeroUsize) -> ServiceTable {
    let labels = ServiceLabels::new(cap, LabelPolicy::fixed(cap.get(), &[], &[]));
    ServiceTable::new(cap, ScorerConfig::default(), labels)
}

#[test]
fn a_service_with_a_few_samples_costs_a_few_kilobytes() {
    let cap = NonZeroUsize::new(SERVICES.into()).unwrap();
    let metrics = IsnMetrics::new(&Registry::default()).unwrap();
    let before_first = LIVE_BYTES.load(Ordering::Relaxed);
    let mut first = table(NonZeroUsize::MIN);
    for client in 0..SAMPLES_PER_SERVICE {
        first.ingest(&sample(0, client), false);
    }
    while first.score_stalest(&metrics, Instant::now()).is_some() {}
    drop(first);
    let first_report = LIVE_BYTES.load(Ordering::Relaxed) - before_first;
    eprintln!("the first report of the process, tables included: {first_report} bytes");
    assert!(
        first_report <= MAX_FIRST_REPORT_BYTES,
        "{first_report} bytes"
    );

    let mut table = table(cap);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for client in 0..SAMPLES_PER_SERVICE {
        for service in 0..SERVICES {
            table.ingest(&sample(service, client), false);
        }
    }
    let ingested = LIVE_BYTES.load(Ordering::Relaxed) - before;
    while table.score_stalest(&metrics, Instant::now()).is_some() {}
    let scored = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let per_service = |bytes: isize| bytes / SERVICES as isize;
    eprintln!(
        "{SERVICES} services of {SAMPLES_PER_SERVICE} samples: {} bytes each, {} once scored",
        per_service(ingested),
        per_service(scored)
    );
    assert_eq!(table.tracked(), usize::from(SERVICES));
    assert!(
        per_service(scored) <= MAX_BYTES_PER_SERVICE,
        "{} bytes per service",
        per_service(scored)
    );
}
