//! Which code path runs the simulator's convolutions and fully connected layers.
//!
//! All paths give the same bytes (property tests pin each one to `kernels.rs`); they differ in
//! speed only. [`SimdPath::best`] is picked at run time from the CPU's features; the environment
//! variable `NNQUANT_SIMD` forces another supported one (to measure a slower path on a fast
//! machine, or to rule a path out when hunting a bug).

use anyhow::{bail, Result};

/// A simulator code path for conv/fc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdPath {
    /// AVX-512 VNNI, 512-bit `vpdpbusd` (`sim/vnni.rs`).
    Avx512Vnni,
    /// AVX-VNNI, 256-bit VEX `vpdpbusd` (`sim/avx256.rs`).
    AvxVnni,
    /// The AVX-VNNI kernel with the EVEX (AVX-512 VL) instruction: never the best choice, here
    /// so that the 256-bit VNNI code is tested on AVX-512 VNNI machines.
    Avx512VnniYmm,
    /// AVX2, `i16` `vpmaddwd` (`sim/avx256.rs`).
    Avx2,
    /// aarch64 with the dot-product extension, `sdot` (`sim/neon.rs`).
    NeonDotprod,
    /// aarch64 NEON, `smull` + `sadalp` (`sim/neon.rs`).
    Neon,
    /// The portable `i16` GEMM (autovectorized by the compiler; the reference fast path).
    Portable,
}

impl SimdPath {
    /// Every path, fastest first.
    pub const ALL: [SimdPath; 7] = [
        SimdPath::Avx512Vnni,
        SimdPath::AvxVnni,
        SimdPath::Avx512VnniYmm,
        SimdPath::Avx2,
        SimdPath::NeonDotprod,
        SimdPath::Neon,
        SimdPath::Portable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx512Vnni => "avx512-vnni",
            SimdPath::AvxVnni => "avx-vnni",
            SimdPath::Avx512VnniYmm => "avx512-vnni-ymm",
            SimdPath::Avx2 => "avx2",
            SimdPath::NeonDotprod => "neon-dotprod",
            SimdPath::Neon => "neon",
            SimdPath::Portable => "portable",
        }
    }

    pub fn parse(name: &str) -> Option<SimdPath> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// True when this CPU can run the path.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use super::{avx256::Isa, vnni};
            match self {
                SimdPath::Avx512Vnni => vnni::available(),
                SimdPath::AvxVnni => Isa::AvxVnni.available(),
                SimdPath::Avx512VnniYmm => Isa::Avx512VnniYmm.available(),
                SimdPath::Avx2 => Isa::Avx2.available(),
                SimdPath::NeonDotprod | SimdPath::Neon => false,
                SimdPath::Portable => true,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use super::neon;
            match self {
                SimdPath::NeonDotprod => neon::available() && neon::has_dotprod(),
                SimdPath::Neon => neon::available(),
                SimdPath::Portable => true,
                SimdPath::Avx512Vnni
                | SimdPath::AvxVnni
                | SimdPath::Avx512VnniYmm
                | SimdPath::Avx2 => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == SimdPath::Portable
        }
    }

    /// True when the pools and ReLU may use AVX-512 on this path: only on the AVX-512 paths, so
    /// that a forced 256-bit path (`NNQUANT_SIMD=avx2`) runs, and measures, what a CPU without
    /// AVX-512 would.
    pub fn elementwise_avx512(self) -> bool {
        match self {
            SimdPath::Avx512Vnni | SimdPath::Avx512VnniYmm => true,
            SimdPath::AvxVnni
            | SimdPath::Avx2
            | SimdPath::NeonDotprod
            | SimdPath::Neon
            | SimdPath::Portable => false,
        }
    }

    /// Every path this CPU can run, fastest first.
    pub fn supported_paths() -> Vec<SimdPath> {
        Self::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The fastest path this CPU can run.
    pub fn best() -> SimdPath {
        Self::ALL
            .into_iter()
            .find(|p| *p != SimdPath::Avx512VnniYmm && p.supported())
            .unwrap_or(SimdPath::Portable)
    }

    /// The path `NNQUANT_SIMD` names, or [`best`](Self::best) when it is unset or empty.
    pub fn selected() -> Result<SimdPath> {
        match std::env::var("NNQUANT_SIMD") {
            Ok(name) if !name.is_empty() => Self::from_name(&name),
            _ => Ok(Self::best()),
        }
    }

    /// The path called `name`, if this CPU supports it.
    pub fn from_name(name: &str) -> Result<SimdPath> {
        let names = || {
            Self::supported_paths()
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match Self::parse(name) {
            Some(p) if p.supported() => Ok(p),
            Some(p) => bail!(
                "NNQUANT_SIMD={}: this CPU cannot run that simulator path; it supports: {}",
                p.name(),
                names()
            ),
            None => bail!(
                "NNQUANT_SIMD={name}: unknown simulator path; this CPU supports: {}",
                names()
            ),
        }
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
