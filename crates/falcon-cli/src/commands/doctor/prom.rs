//! Just enough of the Prometheus text format to read a worker's `/metrics`: samples with
//! their labels, sums over label filters, deltas between two scrapes, and a quantile from
//! histogram buckets the way `histogram_quantile` computes it.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} number`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One `/metrics` answer.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format; lines it cannot read (comments, blank, malformed) are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text.lines().filter_map(parse_line).collect();
        Self { samples }
    }

    /// Samples of `name` whose labels include every `(label, value)` of `filter`.
    pub fn series<'a>(&'a self, name: &'a str, filter: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the matching samples; `None` when there are none (the metric is missing).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let total = self.series(name, filter).fold(0.0, |acc, s| {
            found = true;
            acc + s.value
        });
        found.then_some(total)
    }

    /// Sum of the matching samples, 0 when the metric is missing.
    pub fn total(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.sum(name, filter).unwrap_or(0.0)
    }

    /// Every value of `label` on `name`'s samples, with the sample's value.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for s in self.series(name, &[]) {
            if let Some(v) = s.labels.get(label) {
                *out.entry(v.clone()).or_default() += s.value;
            }
        }
        out.into_iter().collect()
    }

    /// Cumulative bucket counts of histogram `name` (summed over other labels), by `le`.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.series(&bucket, &[]) {
            let Some(le) = s.labels.get("le").and_then(|v| parse_number(v)) else { continue };
            // f64 keys, ordered: the bit pattern of a non-negative float sorts like the float.
            out.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        out.into_values().collect()
    }
}

/// Growth of a counter between two scrapes. A counter that went down was reset (the
/// worker restarted): then the whole later value is growth, as Prometheus's `increase` has it.
pub fn increase(before: f64, after: f64) -> f64 {
    if after >= before { after - before } else { after }
}

/// Bucket-wise growth between two histograms' cumulative counts.
pub fn bucket_increase(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let prev = before.iter().find(|(b, _)| *b == le).map_or(0.0, |&(_, c)| c);
            (le, increase(prev, count))
        })
        .collect()
}

/// `histogram_quantile(q, buckets)`: linear interpolation inside the bucket the rank falls
/// in; the highest finite bound when it falls in `+Inf`. `None` with no observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower_bound, mut lower_count) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = le;
        lower_count = count;
    }
    Some(lower_bound)
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close])?, &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = parse_number(rest.split_whitespace().next()?)?;
    Some(Sample { name: name.to_owned(), labels, value })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start().strip_prefix('"')?;
        // Values may hold escaped quotes; find the closing one.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        labels.insert(key.trim().trim_start_matches(',').trim().to_owned(), value);
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Some(labels)
}

fn parse_number(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP inference_requests_total Inference requests answered.
# TYPE inference_requests_total counter
inference_requests_total{worker_id="w",status="success",cache_hit="false"} 90
inference_requests_total{worker_id="w",status="error",cache_hit="false"} 10
memory_usage_bytes{worker_id="w"} 1.5e8
odd{worker_id="w",text="a \"quoted\", value"} 3
inference_duration_seconds_bucket{worker_id="w",cache_hit="false",le="0.1"} 50
inference_duration_seconds_bucket{worker_id="w",cache_hit="false",le="0.5"} 90
inference_duration_seconds_bucket{worker_id="w",cache_hit="false",le="+Inf"} 100
inference_duration_seconds_bucket{worker_id="w",cache_hit="true",le="0.1"} 100
inference_duration_seconds_bucket{worker_id="w",cache_hit="true",le="0.5"} 100
inference_duration_seconds_bucket{worker_id="w",cache_hit="true",le="+Inf"} 100
bare 7
"#;

    #[test]
    fn sums_filters_and_reads_escaped_labels() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("inference_requests_total", &[]), Some(100.0));
        assert_eq!(s.sum("inference_requests_total", &[("status", "error")]), Some(10.0));
        assert_eq!(s.sum("missing", &[]), None);
        assert_eq!(s.total("memory_usage_bytes", &[]), 1.5e8);
        assert_eq!(s.total("bare", &[]), 7.0);
        let odd = s.series("odd", &[]).next().map(|s| s.labels["text"].clone());
        assert_eq!(odd.as_deref(), Some("a \"quoted\", value"));
        assert_eq!(
            s.by_label("inference_requests_total", "status"),
            vec![("error".into(), 10.0), ("success".into(), 90.0)]
        );
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let s = Scrape::parse(TEXT);
        let b = s.buckets("inference_duration_seconds");
        assert_eq!(b, vec![(0.1, 150.0), (0.5, 190.0), (f64::INFINITY, 200.0)]);
        // rank 190 of 200 is the top of the 0.5 bucket.
        assert_eq!(quantile(0.95, &b), Some(0.5));
        // rank 100: inside the first bucket, 100/150 of the way to 0.1.
        let median = quantile(0.5, &b).unwrap_or_default();
        assert!((median - 0.1 * 100.0 / 150.0).abs() < 1e-12, "{median}");
        // Everything above the last finite bound: that bound.
        assert_eq!(quantile(0.99, &b), Some(0.5));
        assert_eq!(quantile(0.95, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn increases_survive_a_counter_reset() {
        assert_eq!(increase(10.0, 25.0), 15.0);
        assert_eq!(increase(100.0, 4.0), 4.0);
        let before = [(0.1, 10.0), (f64::INFINITY, 12.0)];
        let after = [(0.1, 15.0), (f64::INFINITY, 20.0)];
        assert_eq!(bucket_increase(&before, &after), vec![(0.1, 5.0), (f64::INFINITY, 8.0)]);
    }
}
