//! Per-layer and total figures of a graph: what `inspect` prints and reports embed.

use super::{layer_cost, Graph};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub op: String,
    pub params_text: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub weights: usize,
    pub biases: usize,
    pub macs: u64,
    /// Flash bytes of this layer's int8 weights and biases.
    pub int8_param_bytes: usize,
    /// RAM bytes of this layer's int8 output activation (one image).
    pub output_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub layers: usize,
    pub params: usize,
    pub weights: usize,
    pub biases: usize,
    pub macs: u64,
    pub int8_param_bytes: usize,
    pub largest_output_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub input_blob: String,
    pub input_shape: Vec<usize>,
    pub outputs: Vec<String>,
    pub layers: Vec<LayerRow>,
    pub totals: Totals,
}

pub fn summarize(g: &Graph) -> Summary {
    let layers: Vec<LayerRow> = g
        .nodes
        .iter()
        .map(|n| {
            let c = layer_cost(g, n);
            let out_shape = g.shape(&n.outputs[0]).to_vec();
            LayerRow {
                name: n.name.clone(),
                op: n.op.type_name().to_string(),
                params_text: n.op.summary(),
                inputs: n.inputs.clone(),
                outputs: n.outputs.clone(),
                output_bytes: out_shape.iter().product(),
                output_shape: out_shape,
                params: c.params,
                weights: c.weights,
                biases: c.biases,
                macs: c.macs,
                int8_param_bytes: c.weights + c.biases,
            }
        })
        .collect();
    let totals = Totals {
        layers: layers.len(),
        params: layers.iter().map(|l| l.params).sum(),
        weights: layers.iter().map(|l| l.weights).sum(),
        biases: layers.iter().map(|l| l.biases).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        int8_param_bytes: layers.iter().map(|l| l.int8_param_bytes).sum(),
        largest_output_bytes: layers.iter().map(|l| l.output_bytes).max().unwrap_or(0),
    };
    Summary {
        name: g.name.clone(),
        input_blob: g.input.blob.clone(),
        input_shape: g.shape(&g.input.blob).to_vec(),
        outputs: g.outputs.clone(),
        layers,
        totals,
    }
}

/// `C×H×W` text of a shape.
pub fn shape_text(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// Thousands separators for readability in tables.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A plain-text table (also valid Markdown).
pub fn table(s: &Summary) -> String {
    let mut rows = vec![vec![
        "layer".to_string(),
        "op".into(),
        "params".into(),
        "in → out".into(),
        "output".into(),
        "weights".into(),
        "MACs".into(),
        "int8 param B".into(),
        "act B".into(),
    ]];
    for l in &s.layers {
        rows.push(vec![
            l.name.clone(),
            if l.params_text.is_empty() {
                l.op.clone()
            } else {
                format!("{} {}", l.op, l.params_text)
            },
            grouped(l.params as u64),
            format!("{} → {}", l.inputs.join(","), l.outputs.join(",")),
            shape_text(&l.output_shape),
            format!("{}+{}", grouped(l.weights as u64), l.biases),
            grouped(l.macs),
            grouped(l.int8_param_bytes as u64),
            grouped(l.output_bytes as u64),
        ]);
    }
    let t = &s.totals;
    rows.push(vec![
        "total".into(),
        format!("{} layers", t.layers),
        grouped(t.params as u64),
        String::new(),
        String::new(),
        format!("{}+{}", grouped(t.weights as u64), t.biases),
        grouped(t.macs),
        grouped(t.int8_param_bytes as u64),
        format!("max {}", grouped(t.largest_output_bytes as u64)),
    ]);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        out += &format!("| {} |\n", cells.join(" | "));
        if i == 0 {
            out += &format!(
                "|{}|\n",
                widths
                    .iter()
                    .map(|w| "-".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join("|")
            );
        }
    }
    out
}
