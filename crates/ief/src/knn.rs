//! k-NN accuracy of features against labels (the paper's evaluation of Cryo-IEF: k = 1
//! structure and pose classes of particles the reference set never saw).
//!
//! The particles are split at random (per particle, from the seed) into a reference set and
//! a query set of `query_fraction`; each query takes the majority label of its k nearest
//! references by cosine similarity (ties: the label whose nearest member is closest).

use crate::{IefError, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Accuracy overall and per true label.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KnnReport {
    pub k: usize,
    pub references: usize,
    pub queries: usize,
    pub accuracy: f64,
    /// (label, queries with that label, correctly classified).
    pub per_label: Vec<(String, usize, usize)>,
}

fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `features`: n × dim row-major; `labels`: n.
pub fn knn_accuracy(
    features: &[f32],
    dim: usize,
    labels: &[String],
    k: usize,
    query_fraction: f64,
    seed: u64,
) -> Result<KnnReport> {
    let n = labels.len();
    if dim == 0 || features.len() != n * dim {
        return Err(IefError::msg(format!(
            "{} feature values for {n} labels of dimension {dim}: the features and labels are of different lengths",
            features.len()
        )));
    }
    if k == 0 {
        return Err(IefError::msg("k must be ≥ 1"));
    }
    if !(query_fraction > 0.0 && query_fraction < 1.0) {
        return Err(IefError::msg(format!("query fraction {query_fraction} must be in (0, 1)")));
    }
    let unit: Vec<f32> = features
        .par_chunks(dim)
        .flat_map_iter(|r| {
            let s = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            r.iter().map(move |v| v / s)
        })
        .collect();
    let is_query: Vec<bool> =
        (0..n).map(|i| ((mix(seed, i as u64) >> 11) as f64 / (1u64 << 53) as f64) < query_fraction).collect();
    let refs: Vec<usize> = (0..n).filter(|&i| !is_query[i]).collect();
    let queries: Vec<usize> = (0..n).filter(|&i| is_query[i]).collect();
    if refs.len() < k || queries.is_empty() {
        return Err(IefError::msg(format!(
            "{n} particles give {} references and {} queries: too few for k = {k}",
            refs.len(),
            queries.len()
        )));
    }
    let predicted: Vec<&str> = queries
        .par_iter()
        .map(|&q| {
            let qv = &unit[q * dim..(q + 1) * dim];
            // The k most similar references (small k: insertion into a sorted list).
            let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
            for &r in &refs {
                let s: f32 = qv.iter().zip(&unit[r * dim..(r + 1) * dim]).map(|(a, b)| a * b).sum();
                if best.len() < k || s > best[best.len() - 1].0 {
                    let pos = best.partition_point(|&(b, _)| b >= s);
                    best.insert(pos, (s, r));
                    best.truncate(k);
                }
            }
            let mut votes: BTreeMap<&str, (usize, usize)> = BTreeMap::new(); // label → (votes, best rank)
            for (rank, &(_, r)) in best.iter().enumerate() {
                let e = votes.entry(labels[r].as_str()).or_insert((0, rank));
                e.0 += 1;
            }
            votes
                .into_iter()
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
                .map(|(l, _)| l)
                .unwrap_or("")
        })
        .collect();
    let mut per: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut right = 0;
    for (&q, p) in queries.iter().zip(&predicted) {
        let e = per.entry(labels[q].as_str()).or_default();
        e.0 += 1;
        if *p == labels[q] {
            e.1 += 1;
            right += 1;
        }
    }
    Ok(KnnReport {
        k,
        references: refs.len(),
        queries: queries.len(),
        accuracy: right as f64 / queries.len() as f64,
        per_label: per.into_iter().map(|(l, (a, b))| (l.to_string(), a, b)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_clusters_are_classified_and_lengths_checked() {
        // Two labels on two directions with small noise: all queries right; shuffled labels: ~50 %.
        let n = 400;
        let mut f = Vec::new();
        let mut lab = Vec::new();
        for i in 0..n {
            let c = i % 2;
            let e = ((mix(7, i as u64) % 1000) as f32 / 1000.0 - 0.5) * 0.2;
            let row = if c == 0 { [1.0, e, 0.0] } else { [e, 1.0, 0.0] };
            f.extend_from_slice(&row);
            lab.push(format!("s{c}"));
        }
        let r = knn_accuracy(&f, 3, &lab, 1, 0.5, 1).unwrap();
        assert_eq!(r.accuracy, 1.0);
        assert_eq!(r.references + r.queries, n);
        assert!(r.queries > 150 && r.queries < 250, "{}", r.queries);
        let shuffled: Vec<String> = (0..n).map(|i| format!("s{}", mix(3, i as u64) % 2)).collect();
        let r = knn_accuracy(&f, 3, &shuffled, 5, 0.5, 1).unwrap();
        assert!(r.accuracy < 0.65, "{}", r.accuracy);
        assert!(knn_accuracy(&f, 3, &lab[..10], 1, 0.5, 1)
            .unwrap_err()
            .to_string()
            .contains("different lengths"));
        assert!(knn_accuracy(&f, 3, &lab, 1, 1.0, 1).is_err());
    }
}
