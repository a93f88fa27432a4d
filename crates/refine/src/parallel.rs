//! The refinement's E-step across MPI ranks ([`cryoforge_core::dist`]): each rank searches
//! its contiguous block of every half set; the per-particle results are all-gathered (every
//! rank needs every pose for the reconstruction and the statistics) and the noise spectra
//! summed. With one rank nothing is sent.

use crate::maps::ShellAcc;
use crate::search::SearchResult;
use crate::RefineError;
use cryoforge_core::dist::Comm;
use cryoforge_core::Rot3;
use cryoforge_io::stack::Pose;

fn put_pose(b: &mut Vec<u8>, p: &Pose) {
    for row in &p.rot.0 {
        for v in row {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b.extend_from_slice(&p.shift_px[0].to_le_bytes());
    b.extend_from_slice(&p.shift_px[1].to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn f64(&mut self) -> Result<f64, RefineError> {
        let s = self
            .b
            .get(self.at..self.at + 8)
            .ok_or_else(|| RefineError::Input("MPI: a rank sent truncated search results".into()))?;
        self.at += 8;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(f64::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, RefineError> {
        Ok(self.f64()?.to_bits())
    }
    fn pose(&mut self) -> Result<Pose, RefineError> {
        let mut m = [[0f64; 3]; 3];
        for row in m.iter_mut() {
            for v in row.iter_mut() {
                *v = self.f64()?;
            }
        }
        Ok(Pose { rot: Rot3(m), shift_px: [self.f64()?, self.f64()?] })
    }
}

/// Encodes `(particle index, result)` pairs (f64 little-endian; counts as f64 bit patterns).
pub(crate) fn encode(items: &[(usize, SearchResult)]) -> Vec<u8> {
    let mut b = Vec::new();
    let u = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&f64::from_bits(v).to_le_bytes());
    u(&mut b, items.len() as u64);
    for (i, r) in items {
        u(&mut b, *i as u64);
        put_pose(&mut b, &r.best);
        for v in [r.score, r.max_prob, r.ang_spread_deg, r.shift_spread_px, r.scale] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        u(&mut b, r.n_significant as u64);
        u(&mut b, r.hits.len() as u64);
        for (p, w) in &r.hits {
            put_pose(&mut b, p);
            b.extend_from_slice(&(*w as f64).to_le_bytes());
        }
    }
    b
}

pub(crate) fn decode(b: &[u8]) -> Result<Vec<(usize, SearchResult)>, RefineError> {
    let mut r = Reader { b, at: 0 };
    let n = r.u64()? as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let i = r.u64()? as usize;
        let best = r.pose()?;
        let (score, max_prob, ang_spread_deg, shift_spread_px, scale) =
            (r.f64()?, r.f64()?, r.f64()?, r.f64()?, r.f64()?);
        let n_significant = r.u64()? as usize;
        let nh = r.u64()? as usize;
        let mut hits = Vec::with_capacity(nh);
        for _ in 0..nh {
            let p = r.pose()?;
            hits.push((p, r.f64()? as f32));
        }
        out.push((
            i,
            SearchResult {
                best,
                score,
                max_prob,
                n_significant,
                ang_spread_deg,
                shift_spread_px,
                hits,
                scale,
            },
        ));
    }
    Ok(out)
}

/// Every rank's `(index, result)` pairs on every rank, and the summed noise accumulator.
pub(crate) fn all_gather(
    comm: &dyn Comm,
    mine: Vec<(usize, SearchResult)>,
    resid: ShellAcc,
) -> Result<(Vec<(usize, SearchResult)>, ShellAcc), RefineError> {
    if !comm.is_distributed() {
        return Ok((mine, resid));
    }
    let parts = comm.all_gather_bytes(&encode(&mine));
    let mut all = Vec::new();
    for p in &parts {
        all.extend(decode(p)?);
    }
    let ShellAcc { mut sum, mut count } = resid;
    comm.all_reduce_sum_f64(&mut sum);
    comm.all_reduce_sum_f64(&mut count);
    Ok((all, ShellAcc { sum, count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_survive_encoding() {
        let p =
            |a: f64| Pose { rot: Rot3([[a, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), shift_px: [a, -a] };
        let r = SearchResult {
            best: p(0.5),
            score: -12.5,
            max_prob: 0.25,
            n_significant: 7,
            ang_spread_deg: 1.5,
            shift_spread_px: 0.3,
            hits: vec![(p(0.5), 0.75), (p(0.25), 0.25)],
            scale: 1.1,
        };
        let items = vec![(3usize, r.clone()), (9, SearchResult { hits: vec![], ..r })];
        let back = decode(&encode(&items)).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, 3);
        assert_eq!(back[1].0, 9);
        assert_eq!(back[0].1.hits.len(), 2);
        assert_eq!(back[0].1.hits[1].1, 0.25);
        assert_eq!(back[0].1.best.shift_px, [0.5, -0.5]);
        assert_eq!(back[0].1.n_significant, 7);
        assert!(back[1].1.hits.is_empty());
        assert!(decode(&encode(&items)[..20]).is_err());
    }
}
