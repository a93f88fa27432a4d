//! Chemical elements and their electron scattering factors.
//!
//! The elastic electron scattering factor of a neutral atom is parameterised as
//! five Gaussians (Peng, Ren, Dudarev & Whelan 1996, *Acta Cryst.* A52, 257–276,
//! Table 1, fitted for 0 ≤ s ≤ 2 Å⁻¹):
//!
//! ```text
//! f(s) = Σᵢ aᵢ·exp(−bᵢ·s²)      s = sin θ / λ = q/2,  q = 1/d  (Å⁻¹),  f in Å
//! ```
//!
//! The same table is reprinted as International Tables for Crystallography Vol. C
//! (2011) Table 4.3.2.2. Values below were transcribed from that table as tabulated in
//! gemmi's `c4322.hpp` and cross-checked entry by entry (Z = 1–36) against the
//! independent transcription in the SIMPLE package's atom-density code; the two agree.
//! Two other public transcriptions carry typos the tests here would catch: one has
//! a₁(C) = 0.893 instead of 0.0893, another a₂(K) = −1.4031 instead of +1.4031 (which
//! makes f(s) negative, impossible for a neutral atom: see
//! `tests::scattering_factors_are_positive_and_decreasing`).
//!
//! Deuterium ("D") scatters electrons like hydrogen and maps to H.

use crate::error::SimError;

/// Five-Gaussian electron scattering factor coefficients: `f(s) = Σ a[i]·exp(−b[i]·s²)`,
/// a in Å, b in Å².
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PengCoeffs {
    pub a: [f64; 5],
    pub b: [f64; 5],
}

impl PengCoeffs {
    /// f(s) in Å at s = sin θ/λ (Å⁻¹).
    pub fn f_of_s(&self, s: f64) -> f64 {
        let s2 = s * s;
        self.a.iter().zip(&self.b).map(|(a, b)| a * (-b * s2).exp()).sum()
    }

    /// f at spatial frequency q = 1/d (Å⁻¹), with an isotropic B-factor (Å²):
    /// `Σ aᵢ·exp(−(bᵢ + B)·q²/4)` — the 3D Fourier transform of the atom's density.
    pub fn f_of_q(&self, q: f64, b_factor_a2: f64) -> f64 {
        let q2 = q * q;
        self.a.iter().zip(&self.b).map(|(a, b)| a * (-(b + b_factor_a2) * q2 / 4.0).exp()).sum()
    }

    /// f(0) = Σ aᵢ (Å): the integral of the atom's real-space density.
    pub fn f0(&self) -> f64 {
        self.a.iter().sum()
    }
}

/// A chemical element, identified by its atomic number (1–36 supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element(u8);

/// (symbol, a₁..a₅, b₁..b₅) for Z = 1..=36; Peng et al. 1996 Table 1 (see module docs).
#[rustfmt::skip]
const PENG_1996: [(&str, [f64; 5], [f64; 5]); 36] = [
    ("H",  [0.0349, 0.1201, 0.1970, 0.0573, 0.1195], [0.5347, 3.5867, 12.3471, 18.9525, 38.6269]),
    ("He", [0.0317, 0.0838, 0.1526, 0.1334, 0.0164], [0.2507, 1.4751, 4.4938, 12.6646, 31.1653]),
    ("Li", [0.0750, 0.2249, 0.5548, 1.4954, 0.9354], [0.3864, 2.9383, 15.3829, 53.5545, 138.7337]),
    ("Be", [0.0780, 0.2210, 0.6740, 1.3867, 0.6925], [0.3131, 2.2381, 10.1517, 30.9061, 78.3273]),
    ("B",  [0.0909, 0.2551, 0.7738, 1.2136, 0.4606], [0.2995, 2.1155, 8.3816, 24.1292, 63.1314]),
    ("C",  [0.0893, 0.2563, 0.7570, 1.0487, 0.3575], [0.2465, 1.7100, 6.4094, 18.6113, 50.2523]),
    ("N",  [0.1022, 0.3219, 0.7982, 0.8197, 0.1715], [0.2451, 1.7481, 6.1925, 17.3894, 48.1431]),
    ("O",  [0.0974, 0.2921, 0.6910, 0.6990, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
    ("F",  [0.1083, 0.3175, 0.6487, 0.5846, 0.1421], [0.2057, 1.3439, 4.2788, 11.3932, 28.7881]),
    ("Ne", [0.1269, 0.3535, 0.5582, 0.4674, 0.1460], [0.2200, 1.3779, 4.0203, 9.4934, 23.1278]),
    ("Na", [0.2142, 0.6853, 0.7692, 1.6589, 1.4482], [0.3334, 2.3446, 10.0830, 48.3037, 138.2700]),
    ("Mg", [0.2314, 0.6866, 0.9677, 2.1882, 1.1339], [0.3278, 2.2720, 10.9241, 39.2898, 101.9748]),
    ("Al", [0.2390, 0.6573, 1.2011, 2.5586, 1.2312], [0.3138, 2.1063, 10.4163, 34.4552, 98.5344]),
    ("Si", [0.2519, 0.6372, 1.3795, 2.5082, 1.0500], [0.3075, 2.0174, 9.6746, 29.3744, 80.4732]),
    ("P",  [0.2548, 0.6106, 1.4541, 2.3204, 0.8477], [0.2908, 1.8740, 8.5176, 24.3434, 63.2996]),
    ("S",  [0.2497, 0.5628, 1.3899, 2.1865, 0.7715], [0.2681, 1.6711, 7.0267, 19.5377, 50.3888]),
    ("Cl", [0.2443, 0.5397, 1.3919, 2.0197, 0.6621], [0.2468, 1.5242, 6.1537, 16.6687, 42.3086]),
    ("Ar", [0.2385, 0.5017, 1.3428, 1.8899, 0.6079], [0.2289, 1.3694, 5.2561, 14.0928, 35.5361]),
    ("K",  [0.4115, 1.4031, 2.2784, 2.6742, 2.2162], [0.3703, 3.3874, 13.1029, 68.9592, 194.4329]),
    ("Ca", [0.4054, 1.3880, 2.1602, 3.7532, 2.2063], [0.3499, 3.0991, 11.9608, 53.9353, 142.3892]),
    ("Sc", [0.3787, 1.2181, 2.0594, 3.2618, 2.3870], [0.3133, 2.5856, 9.5813, 41.7688, 116.7282]),
    ("Ti", [0.3825, 1.2598, 2.0008, 3.0617, 2.0694], [0.3040, 2.4863, 9.2783, 39.0751, 109.4583]),
    ("V",  [0.3876, 1.2750, 1.9109, 2.8314, 1.8979], [0.2967, 2.3780, 8.7981, 35.9528, 101.7201]),
    ("Cr", [0.4046, 1.3696, 1.8941, 2.0800, 1.2196], [0.2986, 2.3958, 9.1406, 37.4701, 113.7121]),
    ("Mn", [0.3796, 1.2094, 1.7815, 2.5420, 1.5937], [0.2699, 2.0455, 7.4726, 31.0604, 91.5622]),
    ("Fe", [0.3946, 1.2725, 1.7031, 2.3140, 1.4795], [0.2717, 2.0443, 7.6007, 29.9714, 86.2265]),
    ("Co", [0.4118, 1.3161, 1.6493, 2.1930, 1.2830], [0.2742, 2.0372, 7.7205, 29.9680, 84.9383]),
    ("Ni", [0.3860, 1.1765, 1.5451, 2.0730, 1.3814], [0.2478, 1.7660, 6.3107, 25.2204, 74.3146]),
    ("Cu", [0.4314, 1.3208, 1.5236, 1.4671, 0.8562], [0.2694, 1.9223, 7.3474, 28.9892, 90.6246]),
    ("Zn", [0.4288, 1.2646, 1.4472, 1.8294, 1.0934], [0.2593, 1.7998, 6.7500, 25.5860, 73.5284]),
    ("Ga", [0.4818, 1.4032, 1.6561, 2.4605, 1.1054], [0.2825, 1.9785, 8.7546, 32.5238, 98.5523]),
    ("Ge", [0.4655, 1.3014, 1.6088, 2.6998, 1.3003], [0.2647, 1.7926, 7.6071, 26.5541, 77.5238]),
    ("As", [0.4517, 1.2229, 1.5852, 2.7958, 1.2638], [0.2493, 1.6436, 6.8154, 22.3681, 62.0390]),
    ("Se", [0.4477, 1.1678, 1.5843, 2.8087, 1.1956], [0.2405, 1.5442, 6.3231, 19.4610, 52.0233]),
    ("Br", [0.4798, 1.1948, 1.8695, 2.6953, 0.8203], [0.2504, 1.5963, 6.9653, 19.8492, 50.3233]),
    ("Kr", [0.4546, 1.0993, 1.7696, 2.7068, 0.8672], [0.2309, 1.4279, 5.9449, 16.6752, 42.2243]),
];

impl Element {
    pub const H: Element = Element(1);
    pub const C: Element = Element(6);
    pub const N: Element = Element(7);
    pub const O: Element = Element(8);
    pub const P: Element = Element(15);
    pub const S: Element = Element(16);
    pub const FE: Element = Element(26);

    /// Largest supported atomic number.
    pub const MAX_Z: u32 = PENG_1996.len() as u32;

    /// The element with atomic number `z` (1–36).
    pub fn from_z(z: u32) -> Result<Element, SimError> {
        if (1..=Self::MAX_Z).contains(&z) {
            Ok(Element(z as u8))
        } else {
            Err(SimError::UnsupportedAtomicNumber { z })
        }
    }

    /// Parse an element symbol, case-insensitively and ignoring surrounding
    /// whitespace: "C", "FE", "Fe", "fe" all work; "D" (deuterium) gives H.
    pub fn from_symbol(symbol: &str) -> Result<Element, SimError> {
        let s = symbol.trim();
        if s.eq_ignore_ascii_case("D") {
            return Ok(Element::H);
        }
        PENG_1996
            .iter()
            .position(|(sym, _, _)| sym.eq_ignore_ascii_case(s))
            .map(|i| Element(i as u8 + 1))
            .ok_or_else(|| SimError::UnknownElement { symbol: symbol.to_string() })
    }

    pub fn atomic_number(self) -> u32 {
        self.0 as u32
    }

    /// Canonical symbol ("Fe").
    pub fn symbol(self) -> &'static str {
        PENG_1996[self.0 as usize - 1].0
    }

    /// Peng et al. (1996) five-Gaussian coefficients of this element.
    pub fn peng(self) -> PengCoeffs {
        let (_, a, b) = PENG_1996[self.0 as usize - 1];
        PengCoeffs { a, b }
    }
}

impl std::str::FromStr for Element {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, SimError> {
        Element::from_symbol(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_parse_case_insensitively_and_unknown_is_named() {
        for s in ["Fe", "FE", "fe", " fE "] {
            assert_eq!(Element::from_symbol(s), Ok(Element::FE));
        }
        assert_eq!(Element::from_symbol("d").map(Element::atomic_number), Ok(1));
        for (z, (sym, _, _)) in PENG_1996.iter().enumerate() {
            let e = Element::from_symbol(&sym.to_uppercase()).unwrap();
            assert_eq!(e.atomic_number() as usize, z + 1);
            assert_eq!(e.symbol(), *sym);
        }
        let err = Element::from_symbol("Xx").unwrap_err();
        assert_eq!(err, SimError::UnknownElement { symbol: "Xx".into() });
        assert!(err.to_string().contains("\"Xx\""));
        assert!(Element::from_z(0).is_err() && Element::from_z(37).is_err());
    }

    /// Golden entries, Peng et al. (1996) Table 1 as reprinted in ITC Vol. C Table 4.3.2.2.
    #[test]
    fn table_entries_match_published_values() {
        let c = Element::C.peng();
        assert_eq!(c.a, [0.0893, 0.2563, 0.7570, 1.0487, 0.3575]);
        assert_eq!(c.b, [0.2465, 1.7100, 6.4094, 18.6113, 50.2523]);
        let k = Element::from_symbol("K").unwrap().peng();
        assert_eq!(k.a[1], 1.4031);
        let se = Element::from_symbol("Se").unwrap().peng();
        assert_eq!(se.b, [0.2405, 1.5442, 6.3231, 19.4610, 52.0233]);
        // f(0) of carbon, 2.5088 Å (sum of a).
        assert!((c.f0() - 2.5088).abs() < 1e-12);
    }

    /// A neutral atom's electron scattering factor is positive and decreasing in s
    /// (Mott–Bethe: f(s) ∝ (Z − f_x(s))/s² with 0 ≤ f_x ≤ Z decreasing faster). At the
    /// end of the fitted range (s = 2 Å⁻¹) f_x is small for light atoms, so
    /// f(2)·s²/0.023934 Å⁻¹ (Mott–Bethe constant m e²/(8π ε₀ h²)) must lie between
    /// Z − f_x(2) and Z; we require 0.6 Z … 1.05 Z, which catches sign and decimal typos
    /// in the dominant narrow terms.
    #[test]
    fn scattering_factors_are_positive_and_decreasing() {
        for z in 1..=Element::MAX_Z {
            let p = Element::from_z(z).unwrap().peng();
            let mut prev = f64::INFINITY;
            for i in 0..=200 {
                let f = p.f_of_s(i as f64 * 0.01);
                assert!(f > 0.0 && f < prev, "Z={z} s={}", i as f64 * 0.01);
                prev = f;
            }
            let zeff = p.f_of_s(2.0) * 4.0 / 0.023934;
            assert!(zeff > 0.6 * z as f64 && zeff < 1.05 * z as f64, "Z={z}: Mott-Bethe Z_eff {zeff}");
        }
    }
}
