//! Parts: groups of residues segmented independently (the reference's multi-part
//! segmentation). By default every chain is one part with `N_segm` segments; a parts file
//! gives explicit chain + residue ranges, one part per line:
//!
//! ```text
//! # chain  first-last  [segments]
//! A        1-121       3
//! A        122-214          # uses the default N_segm
//! B        1-300       20
//! ```
//!
//! Residues outside every part do not move. A residue's position inside its part (0, 1, …,
//! in chain order) is the coordinate of the part's Gaussian mixture.

use std::path::Path;

use crate::{Result, SphereError};

/// One part as written in a parts file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartSpec {
    pub chain: String,
    pub first: i32,
    pub last: i32,
    /// Segments of this part (None: the run's `n_segm`).
    pub n_segm: Option<usize>,
}

/// Parse a parts file (see the module docs); errors name the file and the line.
pub fn read_parts(path: &Path) -> Result<Vec<PartSpec>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SphereError::file(path, format!("cannot read: {e}")))?;
    parse_parts(&text, path)
}

/// Parse the text of a parts file.
pub fn parse_parts(text: &str, path: &Path) -> Result<Vec<PartSpec>> {
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |what: String| SphereError::file(path, format!("line {}: {what}", ln + 1));
        let tok: Vec<&str> = line.split_whitespace().collect();
        if tok.len() < 2 || tok.len() > 3 {
            return Err(bad(format!("expected `CHAIN FIRST-LAST [SEGMENTS]`, got {line:?}")));
        }
        let (a, b) = tok[1]
            .split_once('-')
            .filter(|(a, _)| !a.is_empty())
            .ok_or_else(|| bad(format!("residue range {:?} is not FIRST-LAST", tok[1])))?;
        let first: i32 = a.parse().map_err(|_| bad(format!("first residue {a:?} is not an integer")))?;
        let last: i32 = b.parse().map_err(|_| bad(format!("last residue {b:?} is not an integer")))?;
        if last < first {
            return Err(bad(format!("range {first}-{last} is empty")));
        }
        let n_segm = match tok.get(2) {
            Some(s) => {
                let n: usize =
                    s.parse().map_err(|_| bad(format!("segment count {s:?} is not a positive integer")))?;
                if n == 0 {
                    return Err(bad("segment count must be at least 1".into()));
                }
                Some(n)
            }
            None => None,
        };
        out.push(PartSpec { chain: tok[0].to_string(), first, last, n_segm });
    }
    if out.is_empty() {
        return Err(SphereError::file(path, "no parts (lines `CHAIN FIRST-LAST [SEGMENTS]`)"));
    }
    Ok(out)
}

/// Parts resolved against the reference residues.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Part of each residue (None: the residue does not move).
    pub part_of: Vec<Option<usize>>,
    /// Position of each residue inside its part (0-based, chain order); 0 when outside.
    pub pos: Vec<f32>,
    /// Residues per part.
    pub part_len: Vec<usize>,
    /// First segment index of each part; segments of part p are
    /// `seg_start[p]..seg_start[p] + n_segm[p]`.
    pub seg_start: Vec<usize>,
    pub n_segm: Vec<usize>,
}

impl Layout {
    /// Total number of segments.
    pub fn n_segments(&self) -> usize {
        self.n_segm.iter().sum()
    }

    /// Part of each segment.
    pub fn segment_part(&self) -> Vec<usize> {
        let mut v = Vec::new();
        for (p, &n) in self.n_segm.iter().enumerate() {
            v.extend(std::iter::repeat_n(p, n));
        }
        v
    }

    /// One part per chain (chain order of first appearance), `n_segm` segments each.
    pub fn per_chain(chains: &[String], n_segm: usize) -> Result<Layout> {
        if n_segm == 0 {
            return Err(SphereError::msg("n_segm must be at least 1"));
        }
        let mut ids: Vec<&String> = Vec::new();
        for c in chains {
            if !ids.contains(&c) {
                ids.push(c);
            }
        }
        let specs: Vec<(String, Option<(i32, i32)>, usize)> =
            ids.iter().map(|c| ((*c).clone(), None, n_segm)).collect();
        Layout::build(chains, None, &specs)
    }

    /// Parts from a parts file; `default_segm` for lines without a segment count.
    pub fn from_specs(
        chains: &[String],
        seqs: &[i32],
        specs: &[PartSpec],
        default_segm: usize,
    ) -> Result<Layout> {
        let s: Vec<(String, Option<(i32, i32)>, usize)> = specs
            .iter()
            .map(|p| (p.chain.clone(), Some((p.first, p.last)), p.n_segm.unwrap_or(default_segm)))
            .collect();
        Layout::build(chains, Some(seqs), &s)
    }

    fn build(
        chains: &[String],
        seqs: Option<&[i32]>,
        specs: &[(String, Option<(i32, i32)>, usize)],
    ) -> Result<Layout> {
        let r = chains.len();
        let mut part_of = vec![None; r];
        let mut pos = vec![0f32; r];
        let mut part_len = vec![0usize; specs.len()];
        for (p, (chain, range, _)) in specs.iter().enumerate() {
            for i in 0..r {
                if &chains[i] != chain {
                    continue;
                }
                if let (Some((a, b)), Some(sq)) = (range, seqs) {
                    if sq[i] < *a || sq[i] > *b {
                        continue;
                    }
                }
                if let Some(q) = part_of[i] {
                    let what = match seqs {
                        Some(sq) => format!("residue {} of chain {chain}", sq[i]),
                        None => format!("residue index {i}"),
                    };
                    return Err(SphereError::msg(format!("parts {} and {} overlap at {what}", q + 1, p + 1)));
                }
                part_of[i] = Some(p);
                pos[i] = part_len[p] as f32;
                part_len[p] += 1;
            }
            if part_len[p] == 0 {
                let rng = range.map(|(a, b)| format!(" residues {a}-{b}")).unwrap_or_default();
                return Err(SphereError::msg(format!(
                    "part {} (chain {chain}{rng}) matches no residue",
                    p + 1
                )));
            }
        }
        let n_segm: Vec<usize> = specs.iter().map(|s| s.2).collect();
        let mut seg_start = Vec::with_capacity(n_segm.len());
        let mut acc = 0;
        for &n in &n_segm {
            seg_start.push(acc);
            acc += n;
        }
        Ok(Layout { part_of, pos, part_len, seg_start, n_segm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_resolve() {
        let t = "# c\nA 1-3 2\nA 4-5\n";
        let s = parse_parts(t, Path::new("p.txt")).unwrap();
        assert_eq!(s.len(), 2);
        let chains: Vec<String> = ["A"; 6].iter().map(|s| s.to_string()).collect();
        let seqs = [1, 2, 3, 4, 5, 6];
        let l = Layout::from_specs(&chains, &seqs, &s, 4).unwrap();
        assert_eq!(l.part_of, vec![Some(0), Some(0), Some(0), Some(1), Some(1), None]);
        assert_eq!(l.pos, vec![0.0, 1.0, 2.0, 0.0, 1.0, 0.0]);
        assert_eq!(l.n_segm, vec![2, 4]);
        assert_eq!(l.seg_start, vec![0, 2]);
    }

    #[test]
    fn errors_name_line() {
        let e = parse_parts("A 1-3\nB x-4\n", Path::new("p.txt")).unwrap_err().to_string();
        assert!(e.contains("p.txt") && e.contains("line 2"), "{e}");
        let e = parse_parts("A 5-3\n", Path::new("p.txt")).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
