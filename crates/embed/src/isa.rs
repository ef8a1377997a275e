//! Which vector units the CPU backend's kernels use (the GEMMs of
//! [`crate::dense`] and the fused passes of [`crate::math`]: norms,
//! softmax), chosen at run time: the widest the CPU has, or a narrower one
//! that `BATCHMILL_EMBED_ISA` names (`avx512`, `avx2` or `portable`), so
//! that each path can be tested and measured on one machine.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::Invalid;

/// The environment variable that narrows the kernels' instruction set.
pub const ENV: &str = "BATCHMILL_EMBED_ISA";

/// An instruction set the fused passes are compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The build's baseline (SSE2 on x86-64): what every CPU runs.
    Portable = 1,
    /// AVX2 and FMA.
    Avx2 = 2,
    /// AVX-512 (F, BW, DQ, VL) with AVX2 and FMA.
    Avx512 = 3,
}

/// The chosen set, as `Isa as u8`; 0 until chosen.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

impl Isa {
    /// The widest set this CPU has.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// `avx512`, `avx2` or `portable`.
    pub fn parse(value: &str) -> Result<Isa, Invalid> {
        match value.trim().to_ascii_lowercase().as_str() {
            "avx512" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "portable" => Ok(Isa::Portable),
            other => Err(Invalid::new(ENV, format!("{other:?} is not one of avx512, avx2, portable"))),
        }
    }

    /// Uses `wanted` from now on in this process, or the widest set the
    /// CPU has where that is narrower; returns the set in use.
    pub fn choose(wanted: Isa) -> Isa {
        let isa = wanted.min(Isa::detected());
        CHOSEN.store(isa as u8, Ordering::Relaxed);
        isa
    }

    /// Chooses what `BATCHMILL_EMBED_ISA` names (the widest when unset).
    pub fn choose_from_env() -> Result<Isa, Invalid> {
        let wanted = match std::env::var(ENV) {
            Ok(value) if !value.trim().is_empty() => Isa::parse(&value)?,
            _ => Isa::Avx512,
        };
        Ok(Isa::choose(wanted))
    }

    /// The set in use: chosen already, or now from the environment (an
    /// unusable value there counts as unset; loading a model reports it).
    pub fn active() -> Isa {
        match CHOSEN.load(Ordering::Relaxed) {
            1 => Isa::Portable,
            2 => Isa::Avx2,
            3 => Isa::Avx512,
            _ => Isa::choose_from_env().unwrap_or_else(|_| Isa::choose(Isa::Avx512)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_a_wrong_one_names_the_variable() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert_eq!(Isa::parse(" AVX2 "), Ok(Isa::Avx2));
        let e = Isa::parse("sse9").unwrap_err();
        assert_eq!(e.what, ENV);
        assert!(e.why.contains("sse9"), "{e}");
    }

    #[test]
    fn a_set_wider_than_the_cpu_has_is_narrowed_and_a_narrower_one_is_kept() {
        assert_eq!(Isa::choose(Isa::Avx512), Isa::detected());
        assert_eq!(Isa::choose(Isa::Portable), Isa::Portable);
        assert_eq!(Isa::active(), Isa::Portable);
        assert_eq!(Isa::choose(Isa::Avx2), Isa::Avx2.min(Isa::detected()));
        Isa::choose(Isa::Avx512);
    }
}
