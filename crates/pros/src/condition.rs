//! The conditioning image v = C(ψ)·P(φ)·V of METHODS.md §3: the projection of the
//! low-passed reference at a particle's pose, shifted by its shift and modulated by its CTF
//! with cryoforge's forward model (image = F⁻¹[−CTF·e^(+2πik·t/D)·F[projection]],
//! CONVENTIONS.md rule 6; `invert` negates), times a scale that puts it on the particles'
//! scale.
//!
//! Two projectors: [`ProjectorKind::RealSpace`] (the reference code's: the rotated volume
//! sampled trilinearly and summed along z) and [`ProjectorKind::Fourier`] (the central
//! slice, as `simulate` and `refine` use). They agree to trilinear blurring at the 10 Å
//! band (test `projectors_agree`).

use crate::{ProsError, Result};
use cryoforge_core::ctf::{ctf_grid_centered, CtfParams};
use cryoforge_core::fft::{recentre_phasor_2d, Fft2, C32};
use cryoforge_core::filter::{lowpass_volume, Edge};
use cryoforge_io::stack::Pose;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectorKind {
    RealSpace,
    Fourier,
}

impl std::str::FromStr for ProjectorKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "real" | "real-space" => Ok(ProjectorKind::RealSpace),
            "fourier" => Ok(ProjectorKind::Fourier),
            _ => Err(format!("--projector {s:?}: expected real or fourier")),
        }
    }
}

/// Makes conditioning images for poses and CTFs.
pub struct Conditioner {
    d: usize,
    apix_a: f64,
    kind: ProjectorKind,
    vol: Vec<f32>,
    proj: Option<cryoforge_sim::Projector>,
    fft: Fft2,
    sign: f32,
    scale: f32,
}

impl Conditioner {
    /// `vol` (D³, at the particles' pixel size) is low-passed to `lowpass_a` here.
    pub fn new(
        mut vol: Vec<f32>,
        d: usize,
        apix_a: f64,
        lowpass_a: f64,
        kind: ProjectorKind,
        invert: bool,
    ) -> Result<Conditioner> {
        if vol.len() != d * d * d {
            return Err(ProsError::msg(format!("reference volume has {} voxels, expected {d}³", vol.len())));
        }
        lowpass_volume(
            &mut vol,
            d,
            apix_a,
            lowpass_a,
            Edge::Cosine { width_per_a: 1.0 / (d as f64 * apix_a) },
        );
        let proj = match kind {
            ProjectorKind::Fourier => {
                Some(cryoforge_sim::Projector::new(&vol, d, apix_a, cryoforge_sim::DEFAULT_PAD)?)
            }
            ProjectorKind::RealSpace => None,
        };
        Ok(Conditioner {
            d,
            apix_a,
            kind,
            vol,
            proj,
            fft: Fft2::new(d),
            sign: if invert { -1.0 } else { 1.0 },
            scale: 1.0,
        })
    }

    pub fn set_scale(&mut self, s: f64) {
        self.scale = s as f32;
    }

    pub fn box_px(&self) -> usize {
        self.d
    }

    /// One conditioning image into `out` (D²).
    pub fn image(&self, pose: &Pose, ctf: Option<&CtfParams>, out: &mut [f32]) -> Result<()> {
        let d = self.d;
        let mut grid = vec![1f32; d * d];
        if let Some(c) = ctf {
            ctf_grid_centered(c, d, self.apix_a, &mut grid);
        }
        // cryoforge's forward model multiplies by −CTF (protein bright); no CTF: identity.
        if ctf.is_some() {
            grid.iter_mut().for_each(|g| *g = -*g);
        }
        match self.kind {
            ProjectorKind::Fourier => {
                let p = self.proj.as_ref().ok_or_else(|| ProsError::msg("internal: no Fourier projector"))?;
                let mut w = p.work();
                p.project_image(&pose.rot, pose.shift_px, Some(&grid), &mut w, out)?;
            }
            ProjectorKind::RealSpace => {
                cryoforge_sim::project_real_space(&self.vol, d, &pose.rot, out)?;
                let mut w = self.fft.work();
                let mut spec = vec![C32::default(); d * d];
                self.fft.forward_real(&mut w, out, &mut spec);
                let h = (d / 2) as f64;
                for (r, row) in spec.chunks_exact_mut(d).enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        // Simulation's shift: the conjugate of the re-centring phasor.
                        let ph = recentre_phasor_2d([c as f64 - h, r as f64 - h], pose.shift_px, d).conj();
                        *v = *v * ph * grid[r * d + c];
                    }
                }
                self.fft.inverse_real(&mut w, &spec, out);
            }
        }
        let k = self.sign * self.scale;
        out.iter_mut().for_each(|v| *v *= k);
        Ok(())
    }

    /// Conditioning images of a batch, [B·D²], in parallel.
    pub fn batch(&self, poses: &[Pose], ctfs: Option<&[CtfParams]>) -> Result<Vec<f32>> {
        let dd = self.d * self.d;
        let mut out = vec![0f32; poses.len() * dd];
        out.par_chunks_mut(dd)
            .enumerate()
            .try_for_each(|(i, o)| self.image(&poses[i], ctfs.map(|c| &c[i]), o))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryoforge_core::rotation::EulerRelion;

    fn blob_volume(d: usize) -> Vec<f32> {
        let mut v = vec![0f32; d * d * d];
        let c = (d / 2) as f64;
        let blobs = [([4.0, 0.0, 2.0], 3.0), ([-5.0, 3.0, -1.0], 2.5), ([0.0, -6.0, 4.0], 2.0)];
        for z in 0..d {
            for y in 0..d {
                for x in 0..d {
                    let mut s = 0.0;
                    for (p, r) in &blobs {
                        let dx = [x as f64 - c - p[0], y as f64 - c - p[1], z as f64 - c - p[2]];
                        s += (-(dx[0] * dx[0] + dx[1] * dx[1] + dx[2] * dx[2]) / (2.0 * r * r)).exp();
                    }
                    v[(z * d + y) * d + x] = s as f32;
                }
            }
        }
        v
    }

    fn corr(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) =
            (a.iter().map(|&v| v as f64).sum::<f64>() / n, b.iter().map(|&v| v as f64).sum::<f64>() / n);
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (*x as f64 - ma, *y as f64 - mb);
            sab += x * y;
            saa += x * x;
            sbb += y * y;
        }
        sab / (saa * sbb).sqrt()
    }

    #[test]
    fn projectors_agree() {
        let d = 32;
        let vol = blob_volume(d);
        let real = Conditioner::new(vol.clone(), d, 2.0, 10.0, ProjectorKind::RealSpace, false).unwrap();
        let four = Conditioner::new(vol, d, 2.0, 10.0, ProjectorKind::Fourier, false).unwrap();
        let pose = Pose { rot: EulerRelion::new(30.0, 60.0, -20.0).to_rot(), shift_px: [2.5, -1.5] };
        let ctf = CtfParams { defocus_u_a: 15000.0, defocus_v_a: 14000.0, ..Default::default() };
        let (mut a, mut b) = (vec![0f32; d * d], vec![0f32; d * d]);
        real.image(&pose, Some(&ctf), &mut a).unwrap();
        four.image(&pose, Some(&ctf), &mut b).unwrap();
        let r = corr(&a, &b);
        assert!(r > 0.98, "real-space vs Fourier conditioning images correlate {r}");
        // Inversion negates.
        let inv = Conditioner::new(blob_volume(d), d, 2.0, 10.0, ProjectorKind::Fourier, true).unwrap();
        let mut c = vec![0f32; d * d];
        inv.image(&pose, Some(&ctf), &mut c).unwrap();
        assert!(b.iter().zip(&c).all(|(x, y)| (x + y).abs() < 1e-6));
    }
}
