//! Test-only fault injection for `verify` (`NNQUANT_TEST_FAULT`), so that tests can check how
//! verify reports a firmware that fails: the generated files are altered before they are
//! written. Values: `panic` (the demo panics), `hang` (it never ends), `kernel-error` (the first
//! layer's input dimensions are off by one, so its kernel returns `KernelError::Length`),
//! `weight:<LAYER>` (the first weight of that layer's constant prefix, e.g. `CONV2`, changed).
//! Unset in normal use; an unknown value is an error rather than silently ignored.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

pub const VAR: &str = "NNQUANT_TEST_FAULT";

pub fn apply_from_env(files: &mut BTreeMap<String, String>) -> Result<()> {
    match std::env::var(VAR) {
        Ok(v) if !v.is_empty() => apply(&v, files).with_context(|| format!("{VAR}={v}")),
        _ => Ok(()),
    }
}

fn file<'a>(files: &'a mut BTreeMap<String, String>, name: &str) -> Result<&'a mut String> {
    files
        .get_mut(name)
        .with_context(|| format!("no {name} in the generated crate"))
}

pub fn apply(fault: &str, files: &mut BTreeMap<String, String>) -> Result<()> {
    const RUN_ALL: &str = "fn run_all(arena: &mut Arena, out: &mut [i8; OUTPUT_LEN]) -> i32 {";
    match fault {
        "panic" | "hang" => {
            let main = file(files, "examples/demo/main.rs")?;
            let at = main.find(RUN_ALL).context("run_all not found")? + RUN_ALL.len();
            let body = if fault == "panic" {
                "\n    if !INPUTS.is_empty() {\n        panic!(\"nnquant test fault: a deliberate panic\");\n    }"
            } else {
                "\n    while !INPUTS.is_empty() {\n        core::hint::spin_loop();\n    }"
            };
            main.insert_str(at, body);
        }
        "kernel-error" => {
            let p = file(files, "src/parameter.rs")?;
            let at = p
                .find("_IN: Dims = Dims")
                .context("no layer input dimensions")?;
            let h = at + p[at..].find("h: ").context("no height")? + 3;
            let end = h + p[h..]
                .find(|c: char| !c.is_ascii_digit())
                .context("height")?;
            let v: usize = p[h..end].parse()?;
            p.replace_range(h..end, &(v + 1).to_string());
        }
        _ => {
            let Some(layer) = fault.strip_prefix("weight:") else {
                bail!("unknown fault (panic, hang, kernel-error or weight:<LAYER>)");
            };
            let w = file(files, "src/weights.rs")?;
            let at = [
                format!("pub static {layer}_WEIGHTS_Q15:"),
                format!("pub static {layer}_WEIGHTS:"),
            ]
            .iter()
            .find_map(|k| w.find(k.as_str()))
            .with_context(|| format!("no weights of layer {layer}"))?;
            let open = at + w[at..].find("= [").context("no array")? + 3;
            let start = open
                + w[open..]
                    .find(|c: char| !c.is_whitespace())
                    .context("empty")?;
            let end = start + w[start..].find([',', ']']).context("no element")?;
            let tok = w[start..end].trim();
            let new = if let Some(hex) = tok.strip_prefix("0x") {
                // A word of two pre-widened i16 weights: change the low one by 64.
                let v = u32::from_str_radix(hex, 16)?;
                let lo = (v as u16 as i16).wrapping_add(64) as u16 as u32;
                format!("{:#010x}", (v & 0xffff_0000) | lo)
            } else {
                let v: i8 = tok.parse()?;
                v.wrapping_add(64).to_string()
            };
            w.replace_range(start..end, &new);
        }
    }
    Ok(())
}
