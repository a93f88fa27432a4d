//! The reference model: anchors (Cα, C1′/P), amplitudes, segments and the pair lists of
//! the structural losses.

use crate::{Result, StarError};
use cryoforge_io::pdb::{anchor_atoms, read_structure, AnchorResidue};
use cryoforge_nn::structure::{clash_pairs, consecutive_pairs, elastic_pairs};
use std::path::Path;

/// A reference model reduced to anchors, with its pair lists.
#[derive(Debug, Clone)]
pub struct Reference {
    pub residues: Vec<AnchorResidue>,
    /// Anchor positions (Å, box frame).
    pub coords: Vec<[f64; 3]>,
    /// Amplitudes (sum of atomic numbers per residue).
    pub amps: Vec<f32>,
    /// Chain segment per residue (elastic edges and continuity stay within one).
    pub segment: Vec<u32>,
    pub consecutive: Vec<(u32, u32)>,
    pub consecutive_d0: Vec<f32>,
    pub clash: Vec<(u32, u32)>,
    pub elastic: Vec<(u32, u32)>,
    pub elastic_d0: Vec<f32>,
}

impl Reference {
    /// From anchors; pair lists with the given cutoffs (Å).
    pub fn from_anchors(
        residues: Vec<AnchorResidue>,
        elastic_cutoff_a: f64,
        clash_min_a: f64,
        clash_max_a: f64,
    ) -> Result<Reference> {
        if residues.len() < 2 {
            return Err(StarError::msg(format!(
                "reference has {} anchor residues (Cα, C1′ or P); need at least 2",
                residues.len()
            )));
        }
        let coords: Vec<[f64; 3]> = residues.iter().map(|r| r.pos).collect();
        let amps: Vec<f32> = residues.iter().map(|r| r.amplitude as f32).collect();
        let segment: Vec<u32> = residues.iter().map(|r| r.segment as u32).collect();
        let (consecutive, consecutive_d0) = consecutive_pairs(&coords, &segment);
        // Clash pairs count every chain (inter-chain included); segments only drop neighbours.
        let clash = clash_pairs(&coords, &segment, clash_min_a, clash_max_a);
        let (elastic, elastic_d0) = elastic_pairs(&coords, &segment, elastic_cutoff_a);
        Ok(Reference {
            residues,
            coords,
            amps,
            segment,
            consecutive,
            consecutive_d0,
            clash,
            elastic,
            elastic_d0,
        })
    }

    /// Reads the first model of a PDB/mmCIF file.
    pub fn read(path: &Path, elastic_cutoff_a: f64, clash_min_a: f64, clash_max_a: f64) -> Result<Reference> {
        let s = read_structure(path)?;
        let m = s.models.first().ok_or_else(|| StarError::msg(format!("{}: no models", path.display())))?;
        let a = anchor_atoms(m).map_err(|e| StarError::msg(format!("{}: {e}", path.display())))?;
        Reference::from_anchors(a, elastic_cutoff_a, clash_min_a, clash_max_a)
            .map_err(|e| StarError::msg(format!("{}: {e}", path.display())))
    }

    pub fn len(&self) -> usize {
        self.residues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.residues.is_empty()
    }

    /// Coordinates as a flat f32 vector [R·3].
    pub fn flat_f32(&self) -> Vec<f32> {
        self.coords.iter().flat_map(|p| [p[0] as f32, p[1] as f32, p[2] as f32]).collect()
    }
}
