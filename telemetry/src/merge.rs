//! One `/metrics` for several registries of one process.
//!
//! The hub and a scheduler on one of its threads each own a registry, and both have
//! families of the same name (`ippx_messages_dropped`, `ippx_messages_received`,
//! `ippx_build_info`). Serving them on one endpoint (rather than on a second, hidden port)
//! needs one family per name with the samples of both, and a label that keeps their series
//! apart: a text format with a family twice is rejected by `promtool check metrics` and by
//! Prometheus's own parsers.

/// One family of an OpenMetrics exposition: its `# HELP/TYPE/UNIT` lines and samples.
struct Family {
    name: String,
    meta: Vec<String>,
    samples: Vec<String>,
}

fn family_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")).or_else(|| line.strip_prefix("# UNIT "))?;
    Some(rest.split_once(' ').map_or(rest, |(n, _)| n))
}

fn parse(text: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(name) = family_name(line) {
            if out.last().is_none_or(|f| f.name != name) {
                out.push(Family { name: name.to_owned(), meta: Vec::new(), samples: Vec::new() });
            }
            if let Some(f) = out.last_mut() {
                f.meta.push(line.to_owned());
            }
        } else if line.starts_with('#') {
            // Some other comment: no family owns it, and nothing depends on it.
            continue;
        } else {
            match out.last_mut() {
                Some(f) => f.samples.push(line.to_owned()),
                // A sample before any metadata: a family of its own, named by the sample.
                None => {
                    let name = line.split(['{', ' ']).next().unwrap_or(line).to_owned();
                    out.push(Family { name, meta: Vec::new(), samples: vec![line.to_owned()] });
                }
            }
        }
    }
    out
}

/// Adds `name="value"` to a sample line unless it has a label of that name already.
fn with_label(sample: &str, name: &str, value: &str) -> String {
    let metric_end = sample.find(['{', ' ']).unwrap_or(sample.len());
    let (metric, rest) = sample.split_at(metric_end);
    if let Some(labels) = rest.strip_prefix('{') {
        let end = labels.find('}').unwrap_or(labels.len());
        if labels[..end].split(',').any(|l| l.trim_start().starts_with(&format!("{name}=\""))) {
            return sample.to_owned();
        }
        let sep = if labels.starts_with('}') { "" } else { "," };
        format!("{metric}{{{name}=\"{value}\"{sep}{labels}")
    } else {
        format!("{metric}{{{name}=\"{value}\"}}{rest}")
    }
}

/// Merges OpenMetrics texts into one: families of the same name become one family with
/// the samples of each part, in order. A part may carry a label added to each of its
/// samples (that do not have it), so that equal series of two parts stay distinct.
/// The result ends with `# EOF`.
pub fn merge_openmetrics(parts: &[(&str, Option<(&str, &str)>)]) -> String {
    let mut merged: Vec<Family> = Vec::new();
    for (text, label) in parts {
        for fam in parse(text) {
            let samples = fam.samples.iter().map(|s| match label {
                Some((n, v)) => with_label(s, n, v),
                None => s.clone(),
            });
            match merged.iter_mut().find(|f| f.name == fam.name) {
                Some(f) => f.samples.extend(samples),
                None => merged.push(Family { name: fam.name, meta: fam.meta, samples: samples.collect() }),
            }
        }
    }
    let mut out = String::new();
    for f in merged {
        for l in f.meta.iter().chain(f.samples.iter()) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "# HELP ippx_messages_dropped Dropped.\n# TYPE ippx_messages_dropped counter\n\
ippx_messages_dropped_total{reason=\"malformed\"} 1\n# HELP ippx_engines_connected E.\n# TYPE ippx_engines_connected gauge\n\
ippx_engines_connected 2\n# HELP ippx_build_info B.\n# TYPE ippx_build_info gauge\nippx_build_info{version=\"0.1.0\",component=\"hub\"} 1\n# EOF\n";
    const SCHED: &str = "# HELP ippx_messages_dropped Dropped by the scheduler.\n# TYPE ippx_messages_dropped counter\n\
ippx_messages_dropped_total{reason=\"malformed\"} 3\n# HELP ippx_scheduler_engines S.\n# TYPE ippx_scheduler_engines gauge\n\
ippx_scheduler_engines 2\n# HELP ippx_build_info B.\n# TYPE ippx_build_info gauge\nippx_build_info{version=\"0.1.0\",component=\"scheduler\"} 1\n# EOF\n";

    #[test]
    fn same_families_merge_and_the_label_keeps_series_apart() {
        let m = merge_openmetrics(&[(HUB, None), (SCHED, Some(("component", "scheduler")))]);
        assert_eq!(m.matches("# TYPE ippx_messages_dropped counter").count(), 1, "{m}");
        assert_eq!(m.matches("# TYPE ippx_build_info gauge").count(), 1, "{m}");
        assert!(m.contains("ippx_messages_dropped_total{reason=\"malformed\"} 1\n"), "{m}");
        assert!(m.contains("ippx_messages_dropped_total{component=\"scheduler\",reason=\"malformed\"} 3\n"), "{m}");
        // a label the sample already has is left alone
        assert!(m.contains("ippx_build_info{version=\"0.1.0\",component=\"scheduler\"} 1\n"), "{m}");
        assert!(m.contains("ippx_scheduler_engines{component=\"scheduler\"} 2\n"), "{m}");
        assert!(m.ends_with("# EOF\n") && m.matches("# EOF").count() == 1, "{m}");
        // the scheduler's samples follow the hub's inside the one family
        let a = m.find("reason=\"malformed\"} 1").unwrap_or(usize::MAX);
        let b = m.find("component=\"scheduler\",reason=\"malformed\"} 3").unwrap_or(0);
        assert!(a < b, "{m}");
        let families: Vec<&str> = m.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(families.len(), 4, "{families:?}");
    }

    #[test]
    fn labels_go_into_empty_and_missing_label_sets() {
        assert_eq!(with_label("x_total 1", "c", "s"), "x_total{c=\"s\"} 1");
        assert_eq!(with_label("x_total{} 1", "c", "s"), "x_total{c=\"s\"} 1");
        assert_eq!(with_label("x_bucket{le=\"0.1\"} 1 # {a=\"b\"} 0.5", "c", "s"), "x_bucket{c=\"s\",le=\"0.1\"} 1 # {a=\"b\"} 0.5");
        assert_eq!(with_label("x{c=\"hub\"} 1", "c", "s"), "x{c=\"hub\"} 1");
    }
}
