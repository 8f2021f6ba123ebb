//! The human summary of a merge's diagnostics: per transformer block, the task-vector norms and
//! pairwise angles (the WARP paper's Fig. 11 finds independent RL runs nearly orthogonal).

use std::collections::BTreeMap;

use super::{layer_of, Gram, Method};

/// The statistics report of a merge: per tensor, per transformer block (whatever the grouping
/// used for the merge) and for the whole model, each entry described by the method.
pub fn report_json(
    method: &dyn Method,
    inputs: &[&str],
    per_tensor: &BTreeMap<String, Gram>,
) -> serde_json::Value {
    let entry = |g: &Gram| method.report_entry(g);
    let mut layers: BTreeMap<String, Gram> = BTreeMap::new();
    let mut global: Option<Gram> = None;
    for (name, g) in per_tensor {
        if let Some(l) = layer_of(name) {
            layers.entry(l).or_insert_with(|| Gram::zeros(g.m)).add(g);
        }
        global.get_or_insert_with(|| Gram::zeros(g.m)).add(g);
    }
    serde_json::json!({
        "inputs": inputs,
        "angle": method.grouping(),
        "tensors": per_tensor.iter().map(|(k, g)| (k.clone(), entry(g))).collect::<serde_json::Map<_, _>>(),
        "layers": layers.iter().map(|(k, g)| (k.clone(), entry(g))).collect::<serde_json::Map<_, _>>(),
        "global": global.as_ref().map(entry),
    })
}

/// A compact stderr table from the engine's report JSON.
pub fn summary_table(report: &serde_json::Value) -> String {
    let mut s = String::from("task vectors (per block): norms | pairwise angles in degrees\n");
    let row = |name: &str, v: &serde_json::Value| -> String {
        let norms: Vec<String> = v["norms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{:.4}", x.as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default();
        let mut angles = Vec::new();
        if let Some(rows) = v["angles_deg"].as_array() {
            for (i, r) in rows.iter().enumerate() {
                for (j, a) in r.as_array().into_iter().flatten().enumerate() {
                    if j > i {
                        angles.push(a.as_f64().map_or("-".to_string(), |x| format!("{x:.1}")));
                    }
                }
            }
        }
        format!(
            "  {:<18} {} | {}\n",
            name,
            norms.join(" "),
            angles.join(" ")
        )
    };
    if let Some(layers) = report["layers"].as_object() {
        let mut keys: Vec<&String> = layers.keys().collect();
        // Numeric block order: layers.2 before layers.10.
        keys.sort_by_key(|k| {
            k.trim_start_matches("layers.")
                .parse::<u64>()
                .unwrap_or(u64::MAX)
        });
        for k in keys {
            s += &row(k, &layers[k]);
        }
    }
    if !report["global"].is_null() {
        s += &row("whole model", &report["global"]);
    }
    s
}
