//! Pair lists of a reference Cα structure for the structural losses (cryoSTAR):
//!
//! - consecutive: (i, i+1) with the same chain id;
//! - clash: pairs whose reference distance lies in [lo, hi] (4–10 Å), inter-chain
//!   included, minus the consecutive pairs;
//! - elastic network: same-chain pairs within `cutoff` (12 Å), minus the consecutive pairs,
//!   with their reference distances d⁰.
//!
//! Neighbours are found with a cell list (cubic cells of the search radius, 27
//! neighbouring cells), O(R + pairs) time and memory — never an R×R matrix.

use std::collections::HashMap;

/// Euclidean distance.
pub fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// All pairs i < j with `lo ≤ |x_i − x_j| ≤ hi`, sorted, by a cell list of cell size `hi`.
pub fn pairs_within(coords: &[[f64; 3]], lo: f64, hi: f64) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    if coords.is_empty() || hi.is_nan() || hi <= 0.0 {
        return out;
    }
    let cell = |x: [f64; 3]| -> [i64; 3] {
        [(x[0] / hi).floor() as i64, (x[1] / hi).floor() as i64, (x[2] / hi).floor() as i64]
    };
    let mut grid: HashMap<[i64; 3], Vec<u32>> = HashMap::new();
    for (i, x) in coords.iter().enumerate() {
        grid.entry(cell(*x)).or_default().push(i as u32);
    }
    for (i, x) in coords.iter().enumerate() {
        let c = cell(*x);
        for dz in -1..=1 {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    if let Some(list) = grid.get(&[c[0] + dx, c[1] + dy, c[2] + dz]) {
                        for &j in list {
                            if (j as usize) > i {
                                let d = dist(*x, coords[j as usize]);
                                if d >= lo && d <= hi {
                                    out.push((i as u32, j));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// Consecutive same-chain pairs (i, i+1) with their reference distances.
pub fn consecutive_pairs(coords: &[[f64; 3]], chain: &[u32]) -> (Vec<(u32, u32)>, Vec<f32>) {
    let mut p = Vec::new();
    let mut d = Vec::new();
    for i in 1..coords.len().min(chain.len()) {
        if chain[i] == chain[i - 1] {
            p.push((i as u32 - 1, i as u32));
            d.push(dist(coords[i - 1], coords[i]) as f32);
        }
    }
    (p, d)
}

fn is_consecutive(a: u32, b: u32, chain: &[u32]) -> bool {
    b == a + 1 && chain[a as usize] == chain[b as usize]
}

/// Clash pairs: reference distance in [lo, hi] (cryoSTAR 4–10 Å), inter-chain included,
/// consecutive pairs removed.
pub fn clash_pairs(coords: &[[f64; 3]], chain: &[u32], lo: f64, hi: f64) -> Vec<(u32, u32)> {
    pairs_within(coords, lo, hi).into_iter().filter(|&(a, b)| !is_consecutive(a, b, chain)).collect()
}

/// Elastic-network edges: same chain, reference distance ≤ cutoff (cryoSTAR 12 Å),
/// consecutive pairs removed; with reference distances d⁰.
pub fn elastic_pairs(coords: &[[f64; 3]], chain: &[u32], cutoff: f64) -> (Vec<(u32, u32)>, Vec<f32>) {
    let pairs: Vec<(u32, u32)> = pairs_within(coords, 0.0, cutoff)
        .into_iter()
        .filter(|&(a, b)| chain[a as usize] == chain[b as usize] && !is_consecutive(a, b, chain))
        .collect();
    let d = pairs.iter().map(|&(a, b)| dist(coords[a as usize], coords[b as usize]) as f32).collect();
    (pairs, d)
}
