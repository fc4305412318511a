//! Crafted frames through the real classifiers with BPF_PROG_TEST_RUN.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};

/// TC_ACT_UNSPEC: "carry on", the only verdict the classifiers ever give.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The daemon's own object with both classifiers loaded.
pub fn load_classifiers() -> Ebpf {
    let mut ebpf = Ebpf::load(seqwatch::kernel::object().unwrap()).unwrap();
    for name in ["synack_ingress", "synack_egress"] {
        classifier(&mut ebpf, name).load().unwrap();
    }
    ebpf
}

pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name).unwrap().try_into().unwrap()
}

/// Runs one frame through a classifier, which must pass it on, unchanged.
pub fn run_unchanged(ebpf: &mut Ebpf, name: &str, frame: &[u8]) {
    run_unchanged_times(ebpf, name, frame, 1);
}

/// Runs one frame through a classifier `repeat` times in one call; it must pass it on,
/// unchanged.
pub fn run_unchanged_times(ebpf: &mut Ebpf, name: &str, frame: &[u8], repeat: u32) {
    let mut out = vec![0u8; frame.len() + 64];
    let result = classifier(ebpf, name)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        result.return_value, TC_ACT_UNSPEC,
        "never drops or redirects"
    );
    assert_eq!(
        &out[..result.data_size_out as usize],
        frame,
        "never rewrites"
    );
}

/// One counter of a per-CPU counter array, summed over the CPUs.
pub fn counter_total(counters: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counters.get(&index, 0).unwrap().iter().sum()
}
