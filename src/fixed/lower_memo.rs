//! A memo of lowered conv/deconv/fc layers for [`QGraph::quantize_memo`].
//!
//! Why: the search quantizes the whole graph for every candidate, and a candidate differs from
//! the formats already chosen in one layer's formats only. Re-quantizing every weight of every
//! layer for each candidate (and recomputing each channel's accumulator headroom) was the largest
//! serial cost of ResNet-56's layer-local pass. Lowering is a pure function of the node and of
//! what the key below holds, so a hit returns exactly what lowering would.
//!
//! [`QGraph::quantize_memo`]: super::graph::QGraph::quantize_memo

use super::graph::{LayerFormat, PoolRounding, QBlob};
use crate::ops::Lowered;
use anyhow::Result;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept before the memo starts again (each holds one layer's int8 weights; a search
/// revisits the few layers around the current one, so a bound costs nothing in hits).
const MAX_ENTRIES: usize = 4096;

/// Lowered layers of **one** float graph, by node index and everything their lowering reads
/// besides the node. Shared across the search's threads.
#[derive(Default)]
pub struct LowerMemo {
    map: Mutex<HashMap<String, Lowered>>,
}

/// What a conv/deconv/fc lowering reads besides its node (`ops::Lower`'s varying fields and the
/// layer's formats entry): the input blobs' shapes, layouts and formats, the output format the
/// formats give, the pool rounding, the layer's entry if any. `Debug` of the formats is exact
/// (f32 prints its shortest round-trip form; -0.0 and 0.0 differ).
pub struct LowerKey<'a> {
    pub node: usize,
    pub ins: &'a [&'a QBlob],
    pub given: Option<i32>,
    pub avepool_rounding: PoolRounding,
    pub layer_format: Option<&'a LayerFormat>,
}

impl LowerKey<'_> {
    fn text(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}|{:?}",
            self.node, self.ins, self.given, self.avepool_rounding, self.layer_format
        )
    }
}

impl LowerMemo {
    /// The memoized lowering for `key`, or `lower()` (remembered when it succeeds; errors are
    /// not, so they come back the same each time).
    pub fn get_or(&self, key: &LowerKey, lower: &dyn Fn() -> Result<Lowered>) -> Result<Lowered> {
        let text = key.text();
        if let Some(l) = self.lock().get(&text) {
            return Ok(l.clone());
        }
        let l = lower()?;
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(text, l.clone());
        Ok(l)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lowered>> {
        // A panic elsewhere while holding the lock leaves a map that is still valid.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::graph::{Formats, Frac, QGraph};
    use crate::float::{Engine, Keep};
    use std::collections::BTreeMap;

    /// The glyphs demo's float graph and per-channel max-abs formats.
    fn glyphs() -> (crate::ir::Graph, Formats) {
        let g = crate::test_models::glyphs();
        let n = 8;
        let input: Vec<f32> = (0..n * 3 * 16 * 16)
            .map(|i| ((i * 37 % 256) as f32 - 128.0) / 128.0)
            .collect();
        let acts = Engine::new(&g)
            .unwrap()
            .forward(&input, n, Keep::All)
            .unwrap();
        let max_abs: BTreeMap<String, f32> = acts
            .blobs
            .iter()
            .map(|(b, v)| (b.clone(), v.iter().fold(0f32, |m, x| m.max(x.abs()))))
            .collect();
        (
            g.clone(),
            crate::search::start_formats_with(&g, &max_abs, true).unwrap(),
        )
    }

    /// Every formats variant a search would try (each weight, bias and activation format moved
    /// by −3..+3, some of them refused by quantize, and a bias correction) quantizes to the same
    /// graph, or fails with the same message, with the memo as without it, on a first pass
    /// (misses) and a second one (hits).
    #[test]
    fn memoized_quantize_equals_quantize() {
        let (g, start) = glyphs();
        let mut variants = vec![start.clone()];
        for (layer, lf) in &start.layers {
            for d in -3..=3 {
                let mut f = start.clone();
                f.layers.get_mut(layer).unwrap().weight_frac_bits = lf.weight_frac_bits.offset(d);
                variants.push(f);
                if let Some(b) = &lf.bias_frac_bits {
                    let mut f = start.clone();
                    f.layers.get_mut(layer).unwrap().bias_frac_bits = Some(b.offset(d));
                    variants.push(f);
                }
            }
            let mut f = start.clone();
            let channels = match &lf.weight_frac_bits {
                Frac::Channels(c) => c.len(),
                Frac::Layer(_) => 1,
            };
            f.layers.get_mut(layer).unwrap().bias_correction = Some(vec![0.01; channels]);
            variants.push(f);
        }
        for (blob, &v) in &start.activations_frac_bits {
            for d in [-3, -1, 1, 3] {
                let mut f = start.clone();
                f.activations_frac_bits.insert(blob.clone(), v + d);
                variants.push(f);
            }
        }
        let memo = LowerMemo::default();
        let text = |r: Result<QGraph>| match r {
            Ok(q) => q.to_json().unwrap(),
            Err(e) => format!("error: {e:#}"),
        };
        let mut refused = 0;
        for _ in 0..2 {
            for f in &variants {
                let want = text(QGraph::quantize(&g, f));
                refused += usize::from(want.starts_with("error"));
                assert_eq!(text(QGraph::quantize_memo(&g, f, Some(&memo))), want);
            }
        }
        assert!(refused > 0, "some variants should be refused");
        assert!(!memo.lock().is_empty(), "the memo was used");
        assert!(
            memo.lock().len() < 2 * variants.len(),
            "the second pass hit"
        );
    }
}
