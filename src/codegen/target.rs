//! The Cortex-M targets nnquant generates firmware for, with the QEMU board that runs each.

use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub name: &'static str,
    /// Rust target triple ("" for the host).
    pub triple: &'static str,
    pub machine: &'static str,
    pub cpu: &'static str,
    pub flash_origin: &'static str,
    pub flash_len: &'static str,
    pub ram_origin: &'static str,
    pub ram_len: &'static str,
    pub rustflags: Vec<&'static str>,
    pub runner: String,
    /// RAM and flash of the part in bytes (0 for the host: no budget).
    pub ram_bytes: usize,
    pub flash_bytes: usize,
}

/// Bytes of a linker-script length (`256K`, `4M`, `16384`); 0 when empty.
fn size(len: &str) -> usize {
    let (n, mul) = match len.as_bytes().last() {
        Some(b'K') => (&len[..len.len() - 1], 1024),
        Some(b'M') => (&len[..len.len() - 1], 1024 * 1024),
        _ => (len, 1),
    };
    n.parse::<usize>().map_or(0, |v| v * mul)
}

/// Parse a `--ram-budget` / `--flash-budget` value: bytes, or with a `K`/`M` suffix.
pub fn parse_size(v: &str) -> Result<usize> {
    let t = v.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    match size(t) {
        0 => bail!("'{v}' is not a size in bytes (e.g. 16384, 16K, 1M)"),
        n => Ok(n),
    }
}

impl Target {
    pub fn is_host(&self) -> bool {
        self.name == "host"
    }

    /// Whether the firmware runs the DSP-extension kernels (`cfg(dsp)`, see the generated
    /// build.rs: thumbv7em and thumbv8m.main).
    pub fn dsp(&self) -> bool {
        self.triple.starts_with("thumbv7em") || self.triple.starts_with("thumbv8m.main")
    }
}

pub const NAMES: &[&str] = &[
    "cortex-m4",
    "cortex-m7",
    "cortex-m3",
    "cortex-m0",
    "cortex-m33",
    "host",
];

pub fn by_name(name: &str) -> Result<Target> {
    let t = |name, triple, machine, cpu, fo, fl, ro, rl, rustflags: Vec<&'static str>| Target {
        name,
        triple,
        machine,
        cpu,
        flash_origin: fo,
        flash_len: fl,
        ram_origin: ro,
        ram_len: rl,
        rustflags,
        ram_bytes: size(rl),
        flash_bytes: size(fl),
        runner: if machine.is_empty() {
            String::new()
        } else {
            format!("qemu-system-arm -M {machine} -cpu {cpu} -nographic -semihosting-config enable=on,target=native -kernel")
        },
    };
    Ok(match name {
        "cortex-m4" => t(
            "cortex-m4",
            "thumbv7em-none-eabihf",
            "mps2-an386",
            "cortex-m4",
            "0x00000000",
            "4M",
            "0x20000000",
            "4M",
            vec![],
        ),
        "cortex-m7" => t(
            "cortex-m7",
            "thumbv7em-none-eabihf",
            "mps2-an500",
            "cortex-m7",
            "0x00000000",
            "4M",
            "0x20000000",
            "4M",
            vec![],
        ),
        "cortex-m3" => t(
            "cortex-m3",
            "thumbv7m-none-eabi",
            "mps2-an385",
            "cortex-m3",
            "0x00000000",
            "4M",
            "0x20000000",
            "4M",
            vec![],
        ),
        // QEMU's only Cortex-M0 board is the micro:bit (256 KiB flash, 16 KiB RAM).
        "cortex-m0" => t(
            "cortex-m0",
            "thumbv6m-none-eabi",
            "microbit",
            "cortex-m0",
            "0x00000000",
            "256K",
            "0x20000000",
            "16K",
            vec![],
        ),
        // The AN505 boots in the secure world: code and data at the secure aliases.
        "cortex-m33" => t(
            "cortex-m33",
            "thumbv8m.main-none-eabihf",
            "mps2-an505",
            "cortex-m33",
            "0x10000000",
            "4M",
            "0x38000000",
            "4M",
            vec!["-C", "target-cpu=cortex-m33"],
        ),
        "host" => t("host", "", "", "", "", "", "", "", vec![]),
        other => bail!(
            "unknown target '{other}'; choose one of {}",
            NAMES.join(", ")
        ),
    })
}
