//! Firmware generation: a standalone Cargo crate rendered from the Tera templates in
//! `templates/firmware/` (embedded in the binary), the kernels file copied verbatim, and a static
//! memory plan. Output is deterministic: the same model and options give byte-identical files.

pub mod budget;
pub mod plan;
pub mod steps;
pub mod target;
pub mod write;

use crate::fixed::graph::{QDense, QGraph, QOp};
use crate::model::NnqModel;
use crate::ops;
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
pub use target::Target;

/// The kernels, compiled into nnquant and written verbatim into every firmware crate.
pub const KERNELS_RS: &str = include_str!("../fixed/kernels.rs");

/// The crate's files and their templates. The library (`src/`) has no memory map, runtime or
/// panic handler; everything that is QEMU-specific is in `examples/demo/` and `.cargo/`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/firmware/Cargo.toml.tera"),
    ),
    (
        "build.rs",
        include_str!("../../templates/firmware/build.rs.tera"),
    ),
    (
        "examples/demo/memory.x",
        include_str!("../../templates/firmware/examples/memory.x.tera"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../templates/firmware/config.toml.tera"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/firmware/lib.rs.tera"),
    ),
    (
        "src/c_api.rs",
        include_str!("../../templates/firmware/c_api.rs.tera"),
    ),
    (
        "src/parameter.rs",
        include_str!("../../templates/firmware/parameter.rs.tera"),
    ),
    (
        "src/weights.rs",
        include_str!("../../templates/firmware/weights.rs.tera"),
    ),
    (
        "examples/demo/main.rs",
        include_str!("../../templates/firmware/examples/demo.rs.tera"),
    ),
    (
        "examples/demo/test_vectors.rs",
        include_str!("../../templates/firmware/examples/test_vectors.rs.tera"),
    ),
    (
        "README.md",
        include_str!("../../templates/firmware/README.md.tera"),
    ),
];

/// The C header's template (rendered to `include/<crate>.h`).
const HEADER: &str = include_str!("../../templates/firmware/header.h.tera");

#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub crate_name: String,
    /// Test images (HWC uint8, one `Vec` each) embedded for `main.rs` to run.
    pub test_images: Vec<Vec<u8>>,
    /// Override the target's RAM / flash size for the budget gate.
    pub ram_budget: Option<usize>,
    pub flash_budget: Option<usize>,
    /// Add a `[workspace]` table so that the crate builds on its own wherever it is (verify);
    /// off for a crate that joins a board project's workspace.
    pub standalone: bool,
    /// `#[link_section]` of the weights and of the demo's arena (None: the default sections).
    pub sections: Sections,
}

/// Linker sections for the weights and the arena (`--weights-section`, `--arena-section`).
#[derive(Debug, Clone, Default)]
pub struct Sections {
    pub weights: Option<String>,
    pub arena: Option<String>,
}

impl Sections {
    /// Refuse names that could not be a `#[link_section]` string (quotes, spaces, control
    /// characters would break the generated code or the linker script).
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [
            ("--weights-section", &self.weights),
            ("--arena-section", &self.arena),
        ] {
            if let Some(v) = v {
                ensure!(
                    !v.is_empty()
                        && v.len() <= 64
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._$".contains(c)),
                    "{flag} '{}' is not a linker section name (1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '$', e.g. .ccmram)",
                    v.escape_debug()
                );
            }
        }
        Ok(())
    }
}

impl Options {
    /// Options for a target with its own RAM/flash sizes as budgets.
    pub fn new(target: Target, crate_name: &str, test_images: Vec<Vec<u8>>) -> Self {
        Options {
            target,
            crate_name: crate_name.to_string(),
            test_images,
            ram_budget: None,
            flash_budget: None,
            standalone: false,
            sections: Sections::default(),
        }
    }
}

/// Figures of the generated firmware's memory.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub flash_param_bytes: usize,
    pub flash_mean_bytes: usize,
    /// The static arena: activations and, per step, kernel scratch and rings.
    pub arena_bytes: usize,
    /// Largest kernel scratch + ring of one step (inside `arena_bytes`).
    pub arena_temp_bytes: usize,
    /// Kernel scratch outside the arena (on the stack); 0 since scratch moved into the arena.
    pub scratch_bytes: usize,
    /// The estimates the budget gate checked, and the budgets.
    pub budget: budget::Budget,
    pub plan: plan::Plan,
}

pub struct Generated {
    /// Relative path → contents.
    pub files: BTreeMap<String, String>,
    pub memory: MemoryReport,
}

#[derive(Serialize)]
pub(crate) struct Param {
    pub name: String,
    pub ty: &'static str,
    pub value: String,
}

#[derive(Serialize)]
pub(crate) struct InputRef {
    off: usize,
    len: usize,
    pub c: usize,
    pub shift: i32,
    pub c_offset: usize,
    /// The earlier input variable that holds the same blob (an op reading one blob twice).
    same_as: Option<usize>,
}

/// One disjoint range of the arena a step's kernel borrows: the template splits the arena into
/// these, in offset order, so inputs, output and temporaries are separate slices without copies
/// or unsafe code. `gap` is the distance from the previous range's end.
#[derive(Serialize)]
struct Region {
    var: String,
    gap: usize,
    len: usize,
}

/// The kernel call a firmware step makes: `l.kind` in `templates/firmware/lib.rs.tera`.
///
/// The call's text stays in the template (the generated `layers()` is one readable file, and
/// the layout of each call is next to its neighbours'), but which call a step makes is this closed
/// enum: a new op must name its call here (the compiler then asks for `name` and `direct`), and
/// the template ends its `if`/`elif` chain over the names with Tera's `throw`, so a name without
/// a branch fails `codegen` at render time instead of silently emitting no call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `conv_hwc_q7_scratch` (with an optional ReLU in the requantization).
    Conv,
    /// `conv_pool_hwc_q7`: convolution → (ReLU) → pool → (ReLU) through a row ring.
    ConvPool,
    Fc,
    Maxpool,
    Avepool,
    /// Pooling over its own input's bytes (`pool_hwc_q7_in_place`).
    MaxpoolInplace,
    AvepoolInplace,
    ReluInplace,
    /// Copy the input into the output's buffer, then the in-place kernel.
    ReluCopy,
    LutInplace,
    LutCopy,
    PreluInplace,
    PreluCopy,
    SoftmaxInplace,
    SoftmaxCopy,
    /// The output shares its input's bytes: no code.
    Alias,
    Copy,
    Add,
    /// The sum written over the input that dies at this step.
    AddInplace,
    Max,
    Deconv,
    Lrn,
    Mul,
    Scale,
    Concat,
}

impl Call {
    /// Every call, for the test that the template has a branch for each.
    #[cfg(test)]
    const ALL: [Call; 25] = [
        Call::Conv,
        Call::ConvPool,
        Call::Fc,
        Call::Maxpool,
        Call::Avepool,
        Call::MaxpoolInplace,
        Call::AvepoolInplace,
        Call::ReluInplace,
        Call::ReluCopy,
        Call::LutInplace,
        Call::LutCopy,
        Call::PreluInplace,
        Call::PreluCopy,
        Call::SoftmaxInplace,
        Call::SoftmaxCopy,
        Call::Alias,
        Call::Copy,
        Call::Add,
        Call::AddInplace,
        Call::Max,
        Call::Deconv,
        Call::Lrn,
        Call::Mul,
        Call::Scale,
        Call::Concat,
    ];

    /// The name the template tests (`l.kind == "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Call::Conv => "conv",
            Call::ConvPool => "conv_pool",
            Call::Fc => "fc",
            Call::Maxpool => "maxpool",
            Call::Avepool => "avepool",
            Call::MaxpoolInplace => "maxpool_inplace",
            Call::AvepoolInplace => "avepool_inplace",
            Call::ReluInplace => "relu_inplace",
            Call::ReluCopy => "relu_copy",
            Call::LutInplace => "lut_inplace",
            Call::LutCopy => "lut_copy",
            Call::PreluInplace => "prelu_inplace",
            Call::PreluCopy => "prelu_copy",
            Call::SoftmaxInplace => "softmax_inplace",
            Call::SoftmaxCopy => "softmax_copy",
            Call::Alias => "alias",
            Call::Copy => "copy",
            Call::Add => "add",
            Call::AddInplace => "add_inplace",
            Call::Max => "max",
            Call::Deconv => "deconv",
            Call::Lrn => "lrn",
            Call::Mul => "mul",
            Call::Scale => "scale",
            Call::Concat => "concat",
        }
    }

    /// In-place and copying calls index the arena directly; the others borrow disjoint regions
    /// of it (inputs, output, temporaries: `regions`).
    fn direct(self) -> bool {
        match self {
            Call::ReluInplace
            | Call::ReluCopy
            | Call::LutInplace
            | Call::LutCopy
            | Call::PreluInplace
            | Call::PreluCopy
            | Call::SoftmaxInplace
            | Call::SoftmaxCopy
            | Call::MaxpoolInplace
            | Call::AvepoolInplace
            | Call::Alias
            | Call::Copy
            | Call::AddInplace => true,
            Call::Conv
            | Call::ConvPool
            | Call::Fc
            | Call::Maxpool
            | Call::Avepool
            | Call::Add
            | Call::Max
            | Call::Deconv
            | Call::Lrn
            | Call::Mul
            | Call::Scale
            | Call::Concat => false,
        }
    }
}

impl Serialize for Call {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(Serialize)]
struct LayerCtx {
    comment: String,
    kind: Call,
    p: String,
    out_off: usize,
    out_len: usize,
    out_c: usize,
    ins: Vec<InputRef>,
    regions: Vec<Region>,
    params: Vec<Param>,
    relu: bool,
    relu_out: bool,
    max: bool,
    has_scratch: bool,
    /// `add_inplace`: the input the sum is written over.
    acc: usize,
    /// Convolution weights are pre-widened (`_WEIGHTS_Q15`).
    wq: bool,
    /// Per-channel formats: the shifts are arrays (`_BIAS_LSHIFT`, `_OUT_RSHIFT` in weights.rs)
    /// and the `_pc` kernels run.
    pc: bool,
}

#[derive(Serialize)]
pub(crate) struct ArrayCtx {
    name: String,
    doc: String,
    /// Element type: `i8`, or `u32` for pre-widened DSP weights.
    ty: &'static str,
    len: usize,
    bytes: usize,
    values: String,
}

impl ArrayCtx {
    /// Words written in hex (pre-widened weights: pairs of i16 read as one register).
    pub(crate) fn u32_hex(name: String, doc: String, v: &[u32]) -> Self {
        ArrayCtx {
            name,
            doc,
            ty: "u32",
            len: v.len(),
            bytes: 4 * v.len(),
            values: v
                .iter()
                .map(|w| format!("{w:#010x}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
    pub(crate) fn i8(name: String, doc: String, v: &[i8]) -> Self {
        ArrayCtx {
            name,
            doc,
            ty: "i8",
            len: v.len(),
            bytes: v.len(),
            values: list(v),
        }
    }
    fn i32(name: String, doc: String, v: &[i32]) -> Self {
        ArrayCtx {
            name,
            doc,
            ty: "i32",
            len: v.len(),
            bytes: 4 * v.len(),
            values: list(v),
        }
    }
    pub(crate) fn u16(name: String, doc: String, v: &[u16]) -> Self {
        ArrayCtx {
            name,
            doc,
            ty: "u16",
            len: v.len(),
            bytes: 2 * v.len(),
            values: list(v),
        }
    }
}

/// A Rust identifier prefix from a layer name, unique within the graph.
fn const_prefix(name: &str, used: &mut BTreeSet<String>) -> String {
    let mut p: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if p.is_empty() || p.starts_with(|c: char| c.is_ascii_digit()) {
        p = format!("L_{p}");
    }
    let base = p.clone();
    let mut i = 2;
    while !used.insert(p.clone()) {
        p = format!("{base}_{i}");
        i += 1;
    }
    p
}

fn list<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn dims(d: crate::fixed::graph::Hwc) -> String {
    format!("Dims {{ h: {}, w: {}, c: {} }}", d.h, d.w, d.c)
}

pub(crate) fn pair(p: crate::ir::Hw) -> String {
    format!("Pair {{ h: {}, w: {} }}", p.h, p.w)
}

fn layer_contexts(
    g: &QGraph,
    pl: &plan::Plan,
    dsp: bool,
    arrays: &mut Vec<ArrayCtx>,
) -> Result<Vec<LayerCtx>> {
    let mut used = BTreeSet::new();
    let mut out = Vec::new();
    for step in &pl.steps {
        let l = &g.layers[step.layers[0]];
        let p = const_prefix(&l.name, &mut used);
        let o = &pl.blobs[&step.output];
        let ob = &g.blobs[&step.output];
        let mut ins: Vec<InputRef> = Vec::new();
        for (i, b) in l.inputs.iter().enumerate() {
            ins.push(InputRef {
                off: pl.blobs[b].offset,
                len: pl.blobs[b].len,
                c: g.blobs[b].layout.c,
                shift: 0,
                c_offset: 0,
                same_as: l.inputs[..i].iter().position(|x| x == b),
            });
        }
        let in_place = pl.in_place.contains(&step.name);
        let mut params = Vec::new();
        let mut e = crate::ops::Emit {
            g,
            l,
            p: &p,
            in_place,
            in_place_input: pl.in_place_input.get(&step.name).copied(),
            params: &mut params,
            arrays,
        };
        let (relu, relu_out) = match step.kind {
            steps::StepKind::Layer => (false, false),
            steps::StepKind::ConvRelu => (true, false),
            steps::StepKind::ConvPool {
                relu_conv,
                relu_out,
            } => (relu_conv, relu_out),
        };
        let mut max = false;
        if let steps::StepKind::ConvPool { .. } = step.kind {
            let pool = &g.layers[step.layers[if relu { 2 } else { 1 }]];
            let (QOp::MaxPool(q) | QOp::AvePool(q)) = &pool.op else {
                anyhow::bail!("internal error: step {} has no pool", step.name);
            };
            max = matches!(pool.op, QOp::MaxPool(_));
            e.param("POOL_KERNEL", "Pair", pair(q.kernel));
            e.param("POOL_PAD", "Pair", pair(q.pad));
            e.param("POOL_STRIDE", "Pair", pair(q.stride));
            e.param("POOL_OUT", "Dims", dims(q.out_dims));
            if !max {
                e.param("POOL_ROUND", "bool", q.rounding.nearest().to_string());
            }
        }
        let (kind, comment) = match &l.op {
            QOp::Conv(c) => ops::conv::emit(&mut e, c, step.kind, dsp, &step.name, &step.output)?,
            QOp::Fc(f) => ops::inner_product::emit(&mut e, f),
            QOp::MaxPool(q) => ops::pool::emit(&mut e, q, true),
            QOp::AvePool(q) => ops::pool::emit(&mut e, q, false),
            QOp::Relu => ops::relu::emit(&mut e),
            QOp::Reshape => ops::reshape::emit_reshape(&mut e),
            QOp::Permute { order } => ops::reshape::emit_permute(&mut e, order),
            QOp::Add {
                a_lshift,
                b_lshift,
                out_rshift,
            } => ops::eltwise::emit_add(&mut e, (*a_lshift, *b_lshift, *out_rshift)),
            QOp::Max {
                a_lshift,
                b_lshift,
                out_rshift,
            } => ops::eltwise::emit_max(&mut e, (*a_lshift, *b_lshift, *out_rshift)),
            QOp::Mul { out_rshift } => ops::eltwise::emit_mul(&mut e, *out_rshift),
            QOp::Lut { function, table } => ops::lut::emit(&mut e, function, table),
            QOp::PRelu { slopes, slope_frac } => ops::prelu::emit(&mut e, slopes, *slope_frac),
            QOp::Softmax { row, exp_table } => ops::softmax::emit(&mut e, *row, exp_table),
            QOp::Deconv(c) => ops::deconv::emit(&mut e, c),
            QOp::Lrn {
                size,
                across,
                index_shift,
                table,
                table_frac,
                out_rshift,
            } => ops::lrn::emit(
                &mut e,
                *size,
                *across,
                *index_shift,
                table,
                *table_frac,
                *out_rshift,
            ),
            QOp::ScaleBias(s) => ops::scale::emit(&mut e, s),
            QOp::Concat { shifts } => ops::concat::emit(&mut e, shifts, &mut ins)?,
        };
        let direct = kind.direct();
        let regions = if direct {
            Vec::new()
        } else {
            regions(step, pl, &ins, o)?
        };
        out.push(LayerCtx {
            comment,
            kind,
            p,
            out_off: o.offset,
            out_len: o.len,
            out_c: ob.layout.c,
            ins,
            params,
            relu,
            relu_out,
            max,
            has_scratch: regions.iter().any(|r| r.var == "scratch"),
            acc: pl.in_place_input.get(&step.name).copied().unwrap_or(0),
            wq: dsp && matches!(&l.op, QOp::Conv(c) if ops::conv::widened(c)),
            // Deconvolution takes per-layer formats only.
            pc: match l.op.dense() {
                Some(QDense::Conv(c)) => c.per_channel.is_some(),
                Some(QDense::Fc(f)) => f.per_channel.is_some(),
                Some(QDense::Deconv(_)) | None => false,
            },
            regions,
        });
    }
    Ok(out)
}

/// The per-channel shift arrays of a conv/fc (flash, in weights.rs), documented with the
/// per-channel fraction bits they come from.
pub(crate) fn channel_arrays(
    p: &str,
    layer: &str,
    pc: &crate::fixed::graph::ChannelFormats,
) -> [ArrayCtx; 2] {
    let range = |v: &[i32]| {
        let (lo, hi) = (v.iter().min(), v.iter().max());
        format!("{}..={}", lo.unwrap_or(&0), hi.unwrap_or(&0))
    };
    let n = pc.out_rshift.len();
    [
        ArrayCtx::i32(
            format!("{p}_BIAS_LSHIFT"),
            format!(
                "`{layer}` bias left shift per output channel [{n}] (weight fraction bits {}, bias fraction bits {}).",
                range(&pc.weight_frac_bits),
                range(&pc.bias_frac_bits)
            ),
            &pc.bias_lshift,
        ),
        ArrayCtx::i32(
            format!("{p}_OUT_RSHIFT"),
            format!("`{layer}` output right shift per output channel [{n}]."),
            &pc.out_rshift,
        ),
    ]
}

/// The arena ranges a step borrows (inputs `in0…`, `output`, temporaries by role), sorted by
/// offset with the gaps between them; refuses overlapping ranges (the plan never makes them for
/// the kernels that take separate slices).
fn regions(
    step: &steps::Step,
    pl: &plan::Plan,
    ins: &[InputRef],
    out: &plan::Placement,
) -> Result<Vec<Region>> {
    let mut r: Vec<(usize, usize, String)> = vec![(out.offset, out.len, "output".into())];
    for (i, x) in ins.iter().enumerate() {
        if x.same_as.is_none() {
            r.push((x.off, x.len, format!("in{i}")));
        }
    }
    for t in step.temps.iter().filter(|t| t.len > 0) {
        let k = format!("{}.{}", step.name, t.role);
        let pt = pl
            .temps
            .get(&k)
            .with_context(|| format!("internal error: no place for {k}"))?;
        r.push((pt.offset, pt.len, t.role.to_string()));
    }
    r.sort();
    let mut end = 0;
    let mut v = Vec::new();
    for (off, len, var) in r {
        ensure!(
            off >= end,
            "internal error: step '{}' borrows overlapping arena ranges",
            step.name
        );
        v.push(Region {
            var,
            gap: off - end,
            len,
        });
        end = off + len;
    }
    Ok(v)
}

/// Format Rust source with `rustfmt` when it is installed (it is part of every rustup toolchain);
/// without it the rendered text is kept, which is valid Rust, just not canonically formatted.
fn rustfmt(src: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return src.to_string();
    };
    if let Some(mut stdin) = child.stdin.take() {
        if stdin.write_all(src.as_bytes()).is_err() {
            return src.to_string();
        }
    }
    match child.wait_with_output() {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => {
            String::from_utf8(out.stdout).unwrap_or_else(|_| src.to_string())
        }
        _ => src.to_string(),
    }
}

/// The input's channel order in words for the crate's README: RGB, BGR, or the data's own order
/// when quantize was not told one (then it is the order the calibration data was stored in).
fn channel_order_desc(order: &str) -> String {
    match order.to_ascii_lowercase().as_str() {
        "rgb" => "RGB".into(),
        "bgr" => "BGR".into(),
        _ => "the channel order of the calibration data as stored (quantize was not given \
              --channel-order, so nnquant did not reorder: RGB for .npy/CIFAR/IDX data made from \
              RGB images, BGR for Caffe LMDBs converted from image files)"
            .into(),
    }
}

/// One output of the network as the templates see it: where it is in the arena and where it goes
/// in the caller's output array (the outputs concatenated in the model's order).
#[derive(Debug, Clone, Serialize)]
struct OutputContext {
    name: String,
    /// Logical shape and how the bytes are laid out, in words for comments and the README.
    desc: String,
    arena_off: usize,
    out_off: usize,
    len: usize,
    frac_bits: i32,
}

fn output_contexts(g: &QGraph, pl: &plan::Plan) -> Vec<OutputContext> {
    let mut out_off = 0;
    g.outputs
        .iter()
        .map(|o| {
            let b = &g.blobs[o];
            let len = b.layout.len();
            let l = b.layout;
            let layout = if l.h * l.w > 1 {
                format!("HWC {}×{}×{}", l.h, l.w, l.c)
            } else {
                "in its logical order".to_string()
            };
            let c = OutputContext {
                name: o.clone(),
                desc: format!("shape {:?}, {layout}", b.shape),
                arena_off: pl.blobs[o].offset,
                out_off,
                len,
                frac_bits: b.frac_bits,
            };
            out_off += len;
            c
        })
        .collect()
}

/// Render the crate's files.
pub fn generate(m: &NnqModel, opts: &Options) -> Result<Generated> {
    opts.sections.check()?;
    // The name becomes a Cargo package, a Rust path and a file name (the C header).
    let n = &opts.crate_name;
    ensure!(
        n.len() <= 64
            && n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "crate name '{}' is not a Cargo package name (a letter, then up to 63 letters, digits, '-' or '_')",
        n.escape_debug()
    );
    let g = &m.graph;
    let dsp = opts.target.dsp();
    let pl = plan::plan(g, dsp);
    plan::check(g, &pl).map_err(|e| anyhow::anyhow!("internal error in the memory plan: {e}"))?;
    let outputs = output_contexts(g, &pl);
    let input_len = m.input.len();
    for (i, img) in opts.test_images.iter().enumerate() {
        ensure!(
            img.len() == input_len,
            "test image {i} has {} bytes, the model input needs {input_len}",
            img.len()
        );
    }
    let mut arrays = Vec::new();
    let layers = layer_contexts(g, &pl, dsp, &mut arrays)?;
    let flash_param_bytes = arrays.iter().map(|a| a.bytes).sum();
    // The budget gate, before anything is rendered or built.
    let mut largest: Vec<(String, usize)> =
        arrays.iter().map(|a| (a.name.clone(), a.bytes)).collect();
    largest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let (nonzero, t) = (|v: usize| (v > 0).then_some(v), &opts.target);
    let budget = budget::check(
        t.name,
        &pl,
        0,
        &budget::FlashParts {
            params: flash_param_bytes,
            mean: m.input.mean_u8.len(),
            test_images: opts.test_images.len() * input_len,
            largest,
        },
        opts.ram_budget.or(nonzero(t.ram_bytes)),
        opts.flash_budget.or(nonzero(t.flash_bytes)),
    )?;
    let (c, h, w) = (
        m.input.shape_chw[0],
        m.input.shape_chw.get(1).copied().unwrap_or(1),
        m.input.shape_chw.get(2).copied().unwrap_or(1),
    );
    let mean_desc = match m.input.mean_u8.len() {
        0 => "none".to_string(),
        n if n == input_len => format!("per pixel, HWC {h}×{w}×{c}"),
        n => format!("per channel, {n} values"),
    };
    // An empty mean still needs an array the kernel can take.
    let crate_ident = opts.crate_name.replace('-', "_");
    // Kernel scratch (convolution patches, fused pool rings) lives in the arena, placed by the
    // plan for the duration of its step: nothing large is left on the stack.
    let arena_temp_bytes = pl.temp_bytes();
    let scratch_bytes = 0;
    let mut ctx = tera::Context::new();
    ctx.insert("nnquant_version", env!("CARGO_PKG_VERSION"));
    ctx.insert("model_name", &m.name);
    ctx.insert("crate_name", &opts.crate_name);
    ctx.insert("crate_ident", &crate_ident);
    ctx.insert("host", &opts.target.is_host());
    ctx.insert("standalone", &opts.standalone);
    ctx.insert(
        "weights_section",
        opts.sections.weights.as_deref().unwrap_or(""),
    );
    ctx.insert(
        "arena_section",
        opts.sections.arena.as_deref().unwrap_or(""),
    );
    ctx.insert("target", &opts.target);
    ctx.insert(
        "input",
        &serde_json::json!({"h": h, "w": w, "c": c, "channel_order": m.input.channel_order,
            "channel_order_desc": channel_order_desc(&m.input.channel_order)}),
    );
    ctx.insert("input_len", &input_len);
    ctx.insert("input_off", &pl.blobs[&g.input].offset);
    ctx.insert("input_mul", &m.input.mul);
    ctx.insert("input_rshift", &m.input.rshift);
    ctx.insert("input_frac_bits", &m.input.frac_bits);
    ctx.insert("output_len", &g.outputs_len());
    ctx.insert("output_frac_bits", &outputs[0].frac_bits);
    ctx.insert("first_output_len", &outputs[0].len);
    ctx.insert("outputs", &outputs);
    ctx.insert("arena_len", &pl.arena_len);
    ctx.insert("layers", &layers);
    ctx.insert("arrays", &arrays);
    ctx.insert("mean_desc", &mean_desc);
    ctx.insert("mean_len", &m.input.mean_u8.len());
    ctx.insert("mean_values", &list(&m.input.mean_u8));
    ctx.insert("flash_param_bytes", &flash_param_bytes);
    ctx.insert("scratch_bytes", &scratch_bytes);
    ctx.insert("arena_temp_bytes", &arena_temp_bytes);
    ctx.insert(
        "steps",
        &pl.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    );
    ctx.insert("count", &opts.test_images.len());
    ctx.insert(
        "images",
        &opts.test_images.iter().map(|i| list(i)).collect::<Vec<_>>(),
    );
    ctx.insert(
        "live",
        &pl.per_layer
            .iter()
            .map(|l| serde_json::json!({"layer": l.layer, "live": l.live.join(", "), "live_bytes": l.live_bytes}))
            .collect::<Vec<_>>(),
    );
    let mut tera = tera::Tera::new();
    for (name, text) in TEMPLATES {
        tera.add_raw_template(name, text)
            .with_context(|| format!("template {name}"))?;
    }
    tera.add_raw_template("header", HEADER)
        .context("template header")?;
    let render = |name: &str| {
        tera.render(name, &ctx)
            .map_err(|e| anyhow::anyhow!("rendering template {name}: {e:?}"))
    };
    let mut files = BTreeMap::new();
    for (name, _) in TEMPLATES {
        let text = if opts.target.is_host() && *name == "examples/demo/memory.x" {
            // build.rs includes it on every target; only bare-metal targets link with it.
            "/* not used on the host */\n".to_string()
        } else {
            render(name)?
        };
        files.insert(name.to_string(), text);
    }
    files.insert(format!("include/{crate_ident}.h"), render("header")?);
    for (name, text) in files.iter_mut() {
        if name.ends_with(".rs") {
            *text = rustfmt(text);
        }
    }
    files.insert("src/kernels.rs".into(), KERNELS_RS.to_string());
    files.insert(
        write::MARKER.into(),
        format!(
            "generated by nnquant {} for {}\n",
            env!("CARGO_PKG_VERSION"),
            opts.target.name
        ),
    );
    let memory = MemoryReport {
        flash_param_bytes,
        flash_mean_bytes: m.input.mean_u8.len(),
        arena_bytes: pl.arena_len,
        arena_temp_bytes,
        scratch_bytes,
        budget,
        plan: pl,
    };
    Ok(Generated { files, memory })
}

#[cfg(test)]
mod call_tests {
    use super::Call;

    const LIB: &str = include_str!("../../templates/firmware/lib.rs.tera");

    /// Each kernel call has a branch in the template (`l.kind == "name"` or in a list of names).
    #[test]
    fn template_names_every_call() {
        for c in Call::ALL {
            assert!(
                LIB.contains(&format!("\"{}\"", c.name())),
                "templates/firmware/lib.rs.tera has no branch for {c:?} ('{}')",
                c.name()
            );
        }
    }

    /// A kind without a branch stops rendering with the kind named (the chain's `throw`).
    #[test]
    fn unknown_call_fails_rendering() {
        let start = LIB.find("{%- for l in layers %}").expect("layer loop");
        let end = LIB[start..]
            .find("{%- endfor %}\n{%- for o in outputs %}")
            .expect("loop end");
        let body = &LIB[start..start + end + "{%- endfor %}".len()];
        let mut t = tera::Tera::new();
        t.add_raw_template("layers", body).unwrap();
        let mut ctx = tera::Context::new();
        let layer = serde_json::json!({"comment": "x", "kind": "warp", "p": "X", "out_off": 0,
            "out_len": 1, "ins": [], "regions": []});
        ctx.insert("layers", &[layer]);
        let e = format!("{:?}", t.render("layers", &ctx).unwrap_err());
        assert!(e.contains("no kernel call for step kind 'warp'"), "{e}");
        let ok = serde_json::json!({"comment": "x", "kind": Call::Alias, "p": "X", "out_off": 0,
            "out_len": 1, "ins": [], "regions": []});
        ctx.insert("layers", &[ok]);
        t.render("layers", &ctx).unwrap();
    }
}
