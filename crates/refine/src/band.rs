//! The Fourier band a pose search works on: one half-plane of the frequencies of a D×D
//! image with 0 < |k| ≤ k_max, sorted by |k|, so that every lower band is a prefix.
//!
//! A real image's spectrum obeys F(−k) = F(k)*, so each listed frequency stands for itself
//! and its Friedel mate: kₓ > 0, or kₓ = 0 and k_y > 0. Sums over the full plane are twice
//! the sums over the list (DC is excluded, as RELION and cryoDRGN exclude it from their
//! scores; the Nyquist row k_y = ±D/2 and column kₓ = D/2, whose mates are not separate
//! samples, are never listed). Entries carry their index in the [`Rfft2`] half-plane
//! layout (row r ↔ k_y, column ↔ kₓ) and their FSC shell (round |k|, CONVENTIONS rule 13).
//!
//! [`Rfft2`]: cryoforge_core::fft::Rfft2

/// One listed frequency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandEntry {
    /// (kₓ, k_y) in cycles per box.
    pub k: [f32; 2],
    /// Row and column in the half-plane layout of `Rfft2::forward_low` with
    /// `kx_max = Band::kx_max()`.
    pub row: u32,
    pub col: u32,
    /// Shell round(|k|).
    pub shell: u32,
}

/// The sorted frequencies of a band (see module docs).
#[derive(Debug, Clone)]
pub struct Band {
    d: usize,
    k_max: f64,
    entries: Vec<BandEntry>,
    points: Vec<[f32; 2]>,
}

impl Band {
    /// The band 0 < |k| ≤ `k_max` (cycles per box) of a D×D image, D even.
    pub fn new(d: usize, k_max: f64) -> Band {
        let h = (d / 2) as isize;
        let k_max = k_max.clamp(1.0, h.max(1) as f64);
        let r = k_max.floor() as isize;
        let mut entries = Vec::new();
        for ky in -r..=r {
            for kx in 0..=r {
                if (kx == 0 && ky <= 0) || kx == h || ky.abs() == h {
                    continue;
                }
                let k2 = (kx * kx + ky * ky) as f64;
                if k2 > k_max * k_max + 1e-9 {
                    continue;
                }
                let row = if ky < 0 { (ky + d as isize) as u32 } else { ky as u32 };
                entries.push(BandEntry {
                    k: [kx as f32, ky as f32],
                    row,
                    col: kx as u32,
                    shell: k2.sqrt().round() as u32,
                });
            }
        }
        // Stable order: by |k|, then row-major, so that prefixes are bands and runs are
        // reproducible.
        entries.sort_by(|a, b| {
            let ka = a.k[0] * a.k[0] + a.k[1] * a.k[1];
            let kb = b.k[0] * b.k[0] + b.k[1] * b.k[1];
            ka.total_cmp(&kb).then(a.row.cmp(&b.row)).then(a.col.cmp(&b.col))
        });
        let points = entries.iter().map(|e| e.k).collect();
        Band { d, k_max, entries, points }
    }

    pub fn box_px(&self) -> usize {
        self.d
    }

    /// The band limit in cycles per box.
    pub fn k_max(&self) -> f64 {
        self.k_max
    }

    /// Largest kₓ listed (the columns `Rfft2::forward_low` must compute).
    pub fn kx_max(&self) -> usize {
        (self.k_max.floor() as usize).min(self.d / 2 - 1)
    }

    pub fn entries(&self) -> &[BandEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of leading entries with |k| ≤ `k` (the prefix that is the band `k`).
    pub fn prefix_len(&self, k: f64) -> usize {
        let k2 = (k * k) as f32 + 1e-4;
        self.entries.partition_point(|e| e.k[0] * e.k[0] + e.k[1] * e.k[1] <= k2)
    }

    /// The (kₓ, k_y) of the first `n` entries.
    pub fn points(&self, n: usize) -> Vec<[f32; 2]> {
        self.points[..n].to_vec()
    }

    /// The (kₓ, k_y) of every entry, in order.
    pub fn point_cache(&self) -> &[[f32; 2]] {
        &self.points
    }
}

/// Band limit (cycles per box) of a resolution in Å: D·apix / res.
pub fn k_of_resolution(d: usize, apix_a: f64, res_a: f64) -> f64 {
    d as f64 * apix_a / res_a
}

/// Resolution (Å) of a band limit: D·apix / k.
pub fn resolution_of_k(d: usize, apix_a: f64, k: f64) -> f64 {
    d as f64 * apix_a / k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_lists_each_friedel_pair_once_and_prefixes_are_bands() {
        let d = 32;
        let b = Band::new(d, 10.0);
        // Count of lattice points with 0 < |k| ≤ 10 is twice the list.
        let full = (-10i32..=10)
            .flat_map(|y| (-10i32..=10).map(move |x| (x, y)))
            .filter(|&(x, y)| x * x + y * y > 0 && x * x + y * y <= 100)
            .count();
        assert_eq!(2 * b.len(), full);
        for e in b.entries() {
            let mate = [-e.k[0], -e.k[1]];
            assert!(!b.entries().iter().any(|o| o.k == mate), "{:?} listed with its mate", e.k);
        }
        let n5 = b.prefix_len(5.0);
        assert_eq!(n5, Band::new(d, 5.0).len());
        assert!(b.entries()[..n5].iter().all(|e| e.k[0].hypot(e.k[1]) <= 5.0 + 1e-6));
        assert!(b.entries()[n5..].iter().all(|e| e.k[0].hypot(e.k[1]) > 5.0));
        // Rows follow Rfft2: negative k_y at the bottom.
        let e = b.entries().iter().find(|e| e.k == [0.0, 1.0]).unwrap();
        assert_eq!((e.row, e.col), (1, 0));
        let e = b.entries().iter().find(|e| e.k == [1.0, -1.0]).unwrap();
        assert_eq!((e.row, e.col), (31, 1));
    }

    #[test]
    fn band_is_capped_at_nyquist_without_the_unpaired_lines() {
        let b = Band::new(16, 100.0);
        assert_eq!(b.k_max(), 8.0);
        assert!(b.entries().iter().all(|e| e.k[0] < 8.0 && e.k[1].abs() < 8.0));
    }
}
