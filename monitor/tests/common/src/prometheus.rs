//! The daemon's /metrics text as Prometheus's text format: series and their values.

/// The value of one exact series line (`name{labels}`), if present.
pub fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// `seqwatch_synack_samples_total` of one interface and direction, if it has a series.
pub fn synack_samples(metrics: &str, interface: &str, direction: &str) -> Option<f64> {
    let series = format!(
        "seqwatch_synack_samples_total{{direction=\"{direction}\",interface=\"{interface}\"}}"
    );
    series_value(metrics, &series)
}
