//! The layer-local pass: formats chosen layer by layer against the float blobs.
//!
//! The coordinate descent scores every candidate end to end: a candidate for layer `k` re-runs
//! layers `k..` over the calibration images, so on a deep net one sweep costs about half a
//! network run per candidate (ResNet-56: tens of minutes). The local pass instead walks the
//! conv/fc layers in order and, for each of the input, weight, output and bias formats, keeps
//! the candidate whose output is closest to the float blob of the same name (least squared error
//! over a class-stratified subset of the search part, [`LOCAL_IMAGES`] images): a candidate runs
//! **one** layer, from the blobs the formats already chosen upstream produce. Because the inputs
//! are the quantized ones, each layer's choice also absorbs the error upstream. Where every
//! reader of a layer's output is a ReLU, the error is measured after the ReLU (negative values the
//! ReLU clips do not matter). Ties keep the current format.
//!
//! The pass costs a few network runs whatever the depth. Its result is a proposal: the search
//! keeps it only if the end-to-end objective on the search part prefers it and the held-out
//! part does not get worse (see `search`).

use super::subset::{self, Holdout};
use super::{format_layers, get, pick_pixels, set, Evaluator, Param};
use crate::fixed::graph::{Formats, QDense, QGraph, QOp};
use crate::fixed::sim::{Activations, Keep, Simulator};
use crate::ir::{Graph, Op};
use crate::report::LocalStep;
use anyhow::{Context, Result};
use std::collections::BTreeMap;

/// Images the local pass compares on (class-stratified, from the search part).
pub const LOCAL_IMAGES: usize = 128;

/// Float blobs of the images the local pass compares on.
#[derive(Debug, Clone, Default)]
pub struct LocalRefs {
    /// Indices into the calibration set, ascending.
    pub images: Vec<usize>,
    /// Per blob ([`reference_blobs`]): `images × len` float values in NCHW order.
    pub blobs: BTreeMap<String, Vec<f32>>,
}

/// The calibration images of the local pass: a class-stratified subset of the part the search
/// optimises on (never the held-out part the guard judges on). `targets`: one class per
/// calibration image (the scorer's targets), `holdout` as the search will apply it.
pub fn local_images(targets: &[usize], holdout: Holdout) -> Vec<usize> {
    let n = targets.len();
    let rest: Vec<usize> = match holdout.size(n) {
        Some(h) => subset::complement(&subset::stratified(targets, h), n),
        None => (0..n).collect(),
    };
    let rest_targets: Vec<usize> = rest.iter().map(|&i| targets[i]).collect();
    subset::stratified(&rest_targets, LOCAL_IMAGES)
        .into_iter()
        .map(|i| rest[i])
        .collect()
}

/// The layers the local pass chooses formats for, in order: (name, output blob, whether it is a
/// conv/fc with weights). Eltwise and Concat have an output format of their own (residual sums:
/// the start's max-abs format of a sum is often coarser than it needs to be).
fn tuned_layers(g: &Graph) -> Vec<(String, String, bool)> {
    let dense: std::collections::BTreeSet<String> =
        format_layers(g).into_iter().map(|(l, _)| l).collect();
    g.nodes
        .iter()
        .filter(|n| {
            dense.contains(&n.name) || matches!(n.op, Op::Eltwise { .. } | Op::Concat { .. })
        })
        .map(|n| {
            (
                n.name.clone(),
                n.outputs[0].clone(),
                dense.contains(&n.name),
            )
        })
        .collect()
}

/// The float blobs the local pass compares with: the input and the output of every layer it
/// chooses formats for.
pub fn reference_blobs(g: &Graph) -> Vec<String> {
    std::iter::once(g.input.blob.clone())
        .chain(tuned_layers(g).into_iter().map(|(_, out, _)| out))
        .collect()
}

/// Squared error of q7 `q` (HWC layout of `blob`) against float `f` (NCHW) over all images, and
/// the float signal energy; with `relu`, both after a ReLU.
fn error(qg: &QGraph, blob: &str, q: &[i8], f: &[f32], relu: bool) -> Result<(f64, f64)> {
    let qb = qg.blobs.get(blob).context("blob format")?;
    let len = qg.blob_len(blob);
    anyhow::ensure!(
        len > 0 && q.len() == f.len() && q.len().is_multiple_of(len),
        "local pass: blob '{blob}' has {} q7 and {} float values",
        q.len(),
        f.len()
    );
    let table = deq_table(qb.frac_bits, relu);
    let (mut noise, mut signal) = (0f64, 0f64);
    for (qi, fi) in q.chunks_exact(len).zip(f.chunks_exact(len)) {
        for_logical(qi, qb.layout, fi, |x, v| {
            let x = if relu { (x as f64).max(0.0) } else { x as f64 };
            let y = table[v as u8 as usize];
            noise += (x - y) * (x - y);
            signal += x * x;
        });
    }
    Ok((noise, signal))
}

/// The value of every q7 byte at `frac_bits` (after a ReLU with `relu`), indexed by the byte.
fn deq_table(frac_bits: i32, relu: bool) -> [f64; 256] {
    let s = (-(frac_bits as f64)).exp2();
    std::array::from_fn(|i| {
        let v = (i as u8 as i8) as f64 * s;
        if relu {
            v.max(0.0)
        } else {
            v
        }
    })
}

/// `visit(float, q7)` for every value of one image, in the float blob's logical (NCHW) order:
/// the q7 byte is read from its physical (HWC) place, the pairing of
/// [`deq_logical`](super::objective::deq_logical), without dequantizing a copy (the local pass
/// compares every candidate of every layer this way).
fn for_logical(
    q: &[i8],
    layout: crate::fixed::graph::Hwc,
    f: &[f32],
    mut visit: impl FnMut(f32, i8),
) {
    let (hw, c) = (layout.h * layout.w, layout.c);
    if hw <= 1 || c <= 1 {
        for (&x, &v) in f.iter().zip(q) {
            visit(x, v);
        }
        return;
    }
    for (ch, plane) in f.chunks_exact(hw).enumerate() {
        for (p, &x) in plane.iter().enumerate() {
            visit(x, q[p * c + ch]);
        }
    }
}

/// Per output channel (the first axis of the blob's logical shape), the mean of quantized minus
/// float over all images and positions, leaving out values at the int8 limits.
fn channel_mean_error(
    qg: &QGraph,
    blob: &str,
    q: &[i8],
    f: &[f32],
    channels: usize,
) -> Result<Vec<f64>> {
    let qb = qg.blobs.get(blob).context("blob format")?;
    let len = qg.blob_len(blob);
    anyhow::ensure!(
        len > 0
            && len.is_multiple_of(channels)
            && q.len() == f.len()
            && q.len().is_multiple_of(len),
        "local pass: blob '{blob}' does not split into {channels} channels"
    );
    let per = len / channels;
    let table = deq_table(qb.frac_bits, false);
    let (mut sum, mut count) = (vec![0f64; channels], vec![0u64; channels]);
    for (qi, fi) in q.chunks_exact(len).zip(f.chunks_exact(len)) {
        let mut i = 0;
        for_logical(qi, qb.layout, fi, |x, v| {
            // Values at the int8 limits are left out (saturated, not rounded).
            if v != i8::MAX && v != i8::MIN {
                sum[i / per] += table[v as u8 as usize] - x as f64;
                count[i / per] += 1;
            }
            i += 1;
        });
    }
    Ok(sum
        .iter()
        .zip(&count)
        .map(|(&s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
        .collect())
}

fn sqnr_db(noise: f64, signal: f64) -> f64 {
    crate::report::sqnr_db(signal, noise)
}

/// Whether every layer that reads `blob` is a ReLU (then only its positive part matters).
fn only_relu_reads(qg: &QGraph, blob: &str) -> bool {
    let mut readers = qg
        .layers
        .iter()
        .filter(|l| l.inputs.iter().any(|b| b == blob))
        .peekable();
    readers.peek().is_some() && readers.all(|l| matches!(l.op, QOp::Relu))
}

/// Everything the arithmetic of layer `k`'s output depends on, for skipping candidates whose
/// arithmetic equals one already scored.
fn layer_key(qg: &QGraph, k: usize) -> Vec<i64> {
    let l = &qg.layers[k];
    let mut key = vec![i64::from(qg.frac_bits(&l.output).unwrap_or(i32::MIN))];
    let (w, b, (lshift, rshift)) = match l.op.dense() {
        Some(QDense::Conv(c) | QDense::Deconv(c)) => (&c.weights, &c.bias, c.shifts()),
        Some(QDense::Fc(f)) => (&f.weights, &f.bias, f.shifts()),
        None => return key,
    };
    key.extend(super::dense_key(w, b, lshift, rshift));
    key
}

/// Run the local pass from `start` on the images of `refs` (`pixels_hwc`: the whole calibration
/// set's pixels, `image_len` bytes each). Returns the proposed formats and, per coordinate, what
/// it chose.
pub(super) fn local_pass(
    ev: &mut Evaluator,
    g: &Graph,
    start: &Formats,
    refs: &LocalRefs,
    (pixels_hwc, image_len): (&[u8], usize),
    bias_correction: bool,
) -> Result<(Formats, Vec<LocalStep>)> {
    let n = refs.images.len();
    let pixels = pick_pixels(pixels_hwc, image_len, &refs.images);
    let mut best = start.clone();
    let mut steps = Vec::new();
    let reference = |b: &str| {
        refs.blobs
            .get(b)
            .with_context(|| format!("local pass: no float reference for blob '{b}'"))
    };
    // The input format: the quantized input against the float input.
    let input = g.input.blob.clone();
    let input_error = |f: &Formats| -> Result<(f64, f64, Vec<i8>)> {
        let qg = ev.quantize(f)?;
        let frac = qg.frac_bits(&qg.input).context("input format")?;
        let q = ev.prep.quantize(&pixels, qg.blob_len(&qg.input), frac)?;
        let (noise, signal) = error(&qg, &input, &q, reference(&input)?, false)?;
        Ok((noise, signal, q))
    };
    let base = get(&best, "", &input, Param::Input).context("input format missing")?;
    let (mut noise, signal, mut q_in) = input_error(&best)?;
    let before = sqnr_db(noise, signal);
    for c in [base - 2, base - 1, base + 1, base + 2, base + 3] {
        let mut f = best.clone();
        set(&mut f, "", &input, Param::Input, c);
        if let Ok((e, _, q)) = input_error(&f) {
            if e < noise {
                (noise, q_in, best) = (e, q, f);
            }
        }
    }
    steps.push(LocalStep {
        layer: input.clone(),
        param: Param::Input.name().into(),
        start_frac_bits: base,
        frac_bits: get(&best, "", &input, Param::Input).context("input format")?,
        sqnr_before_db: before,
        sqnr_after_db: sqnr_db(noise, signal),
    });
    let mut cache = Activations {
        n,
        blobs: BTreeMap::from([(input.clone(), q_in)]),
    };
    // The layers between the last conv/fc handled and the next one (pooling, ReLU, adds…) run
    // with the formats chosen so far, so that the cache holds what the next layer reads.
    let mut done = 0usize;
    for (layer, out, dense) in tuned_layers(g) {
        let qg = ev.quantize(&best)?;
        let Some(k) = qg.layers.iter().position(|l| l.output == out) else {
            continue; // folded away or not quantized: nothing to choose
        };
        if k > done {
            let later: Vec<String> = qg.layers[done..k]
                .iter()
                .map(|l| l.output.clone())
                .collect();
            let acts = Simulator::for_layers(&qg, done..k)?.run_range(
                done..k,
                &cache,
                &Keep::Blobs(later),
            )?;
            cache.blobs.extend(acts.blobs);
        }
        let relu = only_relu_reads(&qg, &out);
        let f_out = reference(&out)?;
        // One layer run of quantized formats `qg`: the squared error, the signal, the output.
        let layer_error = |qg: &QGraph| -> Result<(f64, f64, Vec<i8>)> {
            let mut acts = Simulator::for_layers(qg, k..k + 1)?.run_range(
                k..k + 1,
                &cache,
                &Keep::Blobs(vec![out.clone()]),
            )?;
            let q = acts.blobs.remove(&out).context("layer output")?;
            let (noise, signal) = error(qg, &out, &q, f_out, relu)?;
            Ok((noise, signal, q))
        };
        let (mut noise, signal, mut q_out) = layer_error(&qg)?;
        let key = layer_key(&qg, k);
        drop(qg);
        ev.local_evaluations += 1;
        let mut seen = vec![key];
        let before = sqnr_db(noise, signal);
        let has_bias = dense
            && best
                .layers
                .get(&layer)
                .is_some_and(|l| l.bias_frac_bits.is_some());
        let params: &[Param] = match (dense, has_bias) {
            (false, _) => &[Param::Activation],
            (true, true) => &[Param::Weight, Param::Activation, Param::Bias],
            (true, false) => &[Param::Weight, Param::Activation],
        };
        for &p in params {
            let base = get(&best, &layer, &out, p).context("format missing")?;
            for c in [base - 2, base - 1, base + 1, base + 2, base + 3] {
                let mut f = best.clone();
                set(&mut f, &layer, &out, p, c);
                // Candidates that do not quantize (a negative shift, a wrapping accumulator)
                // are invalid by construction.
                let Ok(qg) = ev.quantize(&f) else { continue };
                let key = layer_key(&qg, k);
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                let Ok((e, _, q)) = layer_error(&qg) else {
                    continue;
                };
                ev.local_evaluations += 1;
                if e < noise {
                    (noise, q_out, best) = (e, q, f);
                }
            }
            steps.push(LocalStep {
                layer: layer.clone(),
                param: p.name().into(),
                start_frac_bits: get(start, &layer, &out, p).context("format missing")?,
                frac_bits: get(&best, &layer, &out, p).context("format missing")?,
                sqnr_before_db: before,
                sqnr_after_db: sqnr_db(noise, signal),
            });
        }
        // Bias correction: cancel the mean error per output channel (over the images and
        // positions, values at the int8 limits left out: their error is clipping, not a bias).
        let channels = g.shape(&out).first().copied().unwrap_or(0);
        let bias_len = g
            .nodes
            .iter()
            .find(|n| n.name == layer)
            .and_then(|n| n.weights.get(1))
            .map_or(0, |b| b.data.len());
        if bias_correction && has_bias && channels > 0 && channels == bias_len {
            let qg = ev.quantize(&best)?;
            let mean = channel_mean_error(&qg, &out, &q_out, f_out, channels)?;
            let mut f = best.clone();
            let lf = f.layers.get_mut(&layer).context("layer format")?;
            let prev = lf
                .bias_correction
                .clone()
                .unwrap_or_else(|| vec![0.0; channels]);
            lf.bias_correction = Some(
                prev.iter()
                    .zip(&mean)
                    .map(|(&p, &e)| p - e as f32)
                    .collect(),
            );
            let bf = get(&best, &layer, &out, Param::Bias).context("bias format")?;
            if let Ok(qg) = ev.quantize(&f) {
                if let Ok((e, _, q)) = layer_error(&qg) {
                    ev.local_evaluations += 1;
                    if e < noise {
                        (noise, q_out, best) = (e, q, f);
                    }
                }
            }
            steps.push(LocalStep {
                layer: layer.clone(),
                param: "bias correction".into(),
                start_frac_bits: bf,
                frac_bits: bf,
                sqnr_before_db: before,
                sqnr_after_db: sqnr_db(noise, signal),
            });
        }
        cache.blobs.insert(out.clone(), q_out);
        done = k + 1;
    }
    Ok((best, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_images_avoid_the_held_out_part() {
        let targets: Vec<usize> = (0..2000).map(|i| i % 10).collect();
        let held = subset::stratified(&targets, Holdout::Auto.size(2000).unwrap());
        let local = local_images(&targets, Holdout::Auto);
        assert_eq!(local.len(), LOCAL_IMAGES);
        assert!(local.iter().all(|i| !held.contains(i)));
        assert!(local.windows(2).all(|w| w[0] < w[1]));
        // Every class is represented.
        for c in 0..10 {
            assert!(local.iter().any(|&i| targets[i] == c), "class {c}");
        }
    }

    /// `for_logical` with `deq_table` pairs every float value with the q7 value that
    /// `objective::deq_logical` puts at its place, for feature maps (HWC → NCHW) and flat blobs,
    /// with and without the ReLU.
    #[test]
    fn table_pairing_equals_dequantizing_in_logical_order() {
        use crate::fixed::graph::Hwc;
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as i8
        };
        for layout in [
            Hwc { h: 3, w: 5, c: 7 },
            Hwc { h: 1, w: 1, c: 10 },
            Hwc { h: 4, w: 2, c: 1 },
        ] {
            let len = layout.h * layout.w * layout.c;
            let q: Vec<i8> = (0..len).map(|_| next()).collect();
            let f: Vec<f32> = (0..len).map(|_| next() as f32 / 7.0).collect();
            for (frac, relu) in [(-2, false), (3, true), (0, true)] {
                let mut deq = Vec::new();
                super::super::objective::deq_logical(&q, layout, frac, &mut deq);
                let want: Vec<(f32, f64)> = f
                    .iter()
                    .zip(&deq)
                    .map(|(&x, &y)| (x, if relu { y.max(0.0) } else { y }))
                    .collect();
                let table = deq_table(frac, relu);
                let mut got = Vec::new();
                for_logical(&q, layout, &f, |x, v| {
                    got.push((x, table[v as u8 as usize]))
                });
                assert_eq!(got, want, "{layout:?} frac {frac} relu {relu}");
            }
        }
    }
}
