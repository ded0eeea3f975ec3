//! Statistics: percentiles, medians and their formatting.

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Lat {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) n: usize,
}

pub(crate) fn lat(mut samples: Vec<u64>) -> Lat {
    samples.sort_unstable();
    Lat {
        p50: percentile(&samples, 0.50) as f64,
        p99: percentile(&samples, 0.99) as f64,
        n: samples.len(),
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn us(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.0} us", ns / 1000.0)
    } else {
        format!("{:.1} us", ns / 1000.0)
    }
}

pub(crate) fn fmt_lat(l: Lat) -> String {
    format!("p50 {} / p99 {}", us(l.p50), us(l.p99))
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.1}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}

/// Throughput of each window; the side's figure is the median window.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    pub(crate) windows: Vec<f64>,
    pub(crate) latency: Option<Lat>,
}

impl Rate {
    pub(crate) fn median(&self) -> f64 {
        median(&self.windows)
    }
    pub(crate) fn show(&self) -> String {
        let mut s = fmt_rate(self.median());
        if let Some(l) = self.latency {
            s.push_str(&format!(" (p50 {})", us(l.p50)));
        }
        s
    }
}
