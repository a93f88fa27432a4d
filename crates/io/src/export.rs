//! Writing a [`ParticleStack`] as RELION STAR, cryoSPARC `.cs` and cryoDRGN pickles.
//!
//! A set loaded from a STAR (or `.cs`) file is written back from its own table, so
//! unknown columns survive; pose and CTF columns are rewritten only when they came
//! from pickles. Otherwise a fresh RELION 3.1 STAR (with `data_optics`) or a
//! cryoSPARC-style `.cs` is built from the values.

use crate::cs::{CsBuilder, CsFile};
use crate::error::{IoError, Result};
use crate::pkl;
use crate::stack::{Origin, ParticleStack, Source};
use crate::star::{format_f64, StarFile, StarTable};
use cryoforge_core::{CsRotVec, CtfParams, EulerRelion};
use std::path::Path;

/// Write cryoDRGN poses `(rot[N,3,3], trans[N,2] = shift/D)`.
pub fn write_poses_pkl(s: &ParticleStack, path: &Path) -> Result<()> {
    let poses = s.poses.as_ref().ok_or_else(|| IoError::file(&s.path, "the particle set has no poses"))?;
    let d = s
        .box_px()
        .map_err(|_| IoError::file(&s.path, "box size unknown (needed for translations); pass --box"))?
        as f64;
    let rots: Vec<[[f64; 3]; 3]> = poses.iter().map(|p| p.rot.0).collect();
    let trans: Vec<[f64; 2]> = poses.iter().map(|p| [p.shift_px[0] / d, p.shift_px[1] / d]).collect();
    pkl::write_poses_pkl(path, &rots, Some(&trans))
}

/// Write a cryoDRGN CTF pickle (float32 [N, 9]).
pub fn write_ctf_pkl(s: &ParticleStack, path: &Path) -> Result<()> {
    pkl::write_ctf_pkl(path, &s.ctf_rows()?)
}

/// RELION image name `000001@path` (1-based, zero-padded to 6 digits as RELION writes).
pub fn image_name(s: &ParticleStack, i: usize) -> Option<String> {
    s.images.get(i).map(|r| format!("{:06}@{}", r.index + 1, s.files[r.file as usize]))
}

/// Write the set as a RELION STAR file.
pub fn write_star(s: &ParticleStack, path: &Path) -> Result<()> {
    write_star_with(s, path, &[])
}

/// [`write_star`] with extra per-particle columns `(label, one value per particle)`
/// added to (or replacing those of) the particle table, e.g. refinement statistics.
pub fn write_star_with(s: &ParticleStack, path: &Path, extra: &[(&str, Vec<String>)]) -> Result<()> {
    let mut star = star_of(s)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let names = rebased_files(s, dir);
    let mut extra: Vec<(&str, Vec<String>)> = extra.to_vec();
    if names != s.files && !s.images.is_empty() {
        let col = s.images.iter().map(|r| format!("{:06}@{}", r.index + 1, names[r.file as usize])).collect();
        extra.insert(0, ("rlnImageName", col));
    }
    if !extra.is_empty() {
        let name = match &s.source {
            Source::Star(rp) => rp.particles_block_name().to_string(),
            _ => "particles".to_string(),
        };
        let block = star
            .block_mut(&name)
            .ok_or_else(|| IoError::file(&s.path, format!("internal: block data_{name} vanished")))?;
        for (label, values) in &extra {
            if values.len() != s.len() {
                return Err(IoError::file(
                    &s.path,
                    format!("column {label}: {} values for {} particles", values.len(), s.len()),
                ));
            }
            block.table.set_column(label, values.iter())?;
        }
    }
    star.write(path)
}

/// The stack files of `s` as a STAR written into `dir` must name them: unchanged when they
/// resolve the same way from there (same folder, or absolute), else relative to `dir` (or
/// absolute when no relative path exists). Files that cannot be found keep their text.
/// Image paths in cryoforge are relative to the STAR's folder (CONVENTIONS rule 19).
fn rebased_files(s: &ParticleStack, dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::canonicalize(dir) else { return s.files.clone() };
    let same = s
        .path
        .parent()
        .and_then(|p| std::fs::canonicalize(if p.as_os_str().is_empty() { Path::new(".") } else { p }).ok());
    s.files
        .iter()
        .map(|f| {
            if Path::new(f).is_absolute() || same.as_deref() == Some(dir.as_path()) {
                return f.clone();
            }
            match s
                .resolve(f)
                .and_then(|p| std::fs::canonicalize(&p).map_err(|e| IoError::os(&p, "cannot resolve", e)))
            {
                Ok(abs) => relative_to(&abs, &dir).unwrap_or(abs).display().to_string(),
                Err(_) => f.clone(),
            }
        })
        .collect()
}

/// `path` relative to `dir` (both absolute, canonical), with `..` steps as needed.
fn relative_to(path: &Path, dir: &Path) -> Option<std::path::PathBuf> {
    let (p, d): (Vec<_>, Vec<_>) = (path.components().collect(), dir.components().collect());
    // Sharing only the root (or a prefix) is no reason for a path full of `..`: absolute then.
    let common = p.iter().zip(&d).take_while(|(a, b)| a == b).count();
    let root = p
        .iter()
        .take_while(|c| matches!(c, std::path::Component::Prefix(_) | std::path::Component::RootDir))
        .count();
    if common <= root {
        return None;
    }
    let mut out = std::path::PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    Some(out)
}

fn star_of(s: &ParticleStack) -> Result<StarFile> {
    let star = match &s.source {
        Source::Star(rp) => {
            let mut out = rp.select(&s.source_index)?;
            let relion30 = rp.optics().is_none();
            let name = rp.particles_block_name().to_string();
            let apix = s.apix_known();
            let block = out
                .block_mut(&name)
                .ok_or_else(|| IoError::file(&s.path, format!("internal: block data_{name} vanished")))?;
            if matches!(s.poses_origin, Some(Origin::Pickle | Origin::Computed)) {
                set_pose_columns(&mut block.table, s, relion30, apix)?;
            }
            if matches!(s.ctf_origin, Some(Origin::Pickle | Origin::Computed)) {
                set_ctf_columns(&mut block.table, s.ctf.as_deref().unwrap_or(&[]), relion30)?;
            }
            out
        }
        _ => fresh_star(s)?,
    };
    Ok(star)
}

fn set_pose_columns(t: &mut StarTable, s: &ParticleStack, relion30: bool, apix: Option<f64>) -> Result<()> {
    let poses = s.poses.as_deref().unwrap_or(&[]);
    let e: Vec<EulerRelion> = poses.iter().map(|p| EulerRelion::from_rot(&p.rot)).collect();
    t.set_column_f64("rlnAngleRot", &e.iter().map(|e| e.rot_deg).collect::<Vec<_>>())?;
    t.set_column_f64("rlnAngleTilt", &e.iter().map(|e| e.tilt_deg).collect::<Vec<_>>())?;
    t.set_column_f64("rlnAnglePsi", &e.iter().map(|e| e.psi_deg).collect::<Vec<_>>())?;
    let x: Vec<f64> = poses.iter().map(|p| p.shift_px[0]).collect();
    let y: Vec<f64> = poses.iter().map(|p| p.shift_px[1]).collect();
    if relion30 || apix.is_none() {
        t.remove_column("rlnOriginXAngst");
        t.remove_column("rlnOriginYAngst");
        t.set_column_f64("rlnOriginX", &x)?;
        t.set_column_f64("rlnOriginY", &y)
    } else {
        let a = apix.unwrap_or(1.0);
        t.remove_column("rlnOriginX");
        t.remove_column("rlnOriginY");
        t.set_column_f64("rlnOriginXAngst", &x.iter().map(|v| v * a).collect::<Vec<_>>())?;
        t.set_column_f64("rlnOriginYAngst", &y.iter().map(|v| v * a).collect::<Vec<_>>())
    }
}

fn set_ctf_columns(t: &mut StarTable, c: &[CtfParams], relion30: bool) -> Result<()> {
    let col = |f: fn(&CtfParams) -> f64| c.iter().map(f).collect::<Vec<f64>>();
    t.set_column_f64("rlnDefocusU", &col(|p| p.defocus_u_a))?;
    t.set_column_f64("rlnDefocusV", &col(|p| p.defocus_v_a))?;
    t.set_column_f64("rlnDefocusAngle", &col(|p| p.defocus_angle_deg))?;
    t.set_column_f64("rlnPhaseShift", &col(|p| p.phase_shift_deg))?;
    if relion30 {
        t.set_column_f64("rlnVoltage", &col(|p| p.voltage_kv))?;
        t.set_column_f64("rlnSphericalAberration", &col(|p| p.cs_mm))?;
        t.set_column_f64("rlnAmplitudeContrast", &col(|p| p.amp_contrast))?;
    }
    Ok(())
}

/// Optics key of one particle: voltage, Cs, amplitude contrast (rounded for grouping).
fn optics_key(c: Option<&CtfParams>) -> (i64, i64, i64) {
    match c {
        Some(c) => (
            (c.voltage_kv * 1e4).round() as i64,
            (c.cs_mm * 1e6).round() as i64,
            (c.amp_contrast * 1e6).round() as i64,
        ),
        None => (0, 0, 0),
    }
}

/// A RELION 3.1 STAR built from the values (for sets loaded from `.cs` or stacks).
fn fresh_star(s: &ParticleStack) -> Result<StarFile> {
    let n = s.len();
    let apix = s.apix_a()?;
    let box_px = s.box_px()?;
    let ctf = s.ctf.as_deref();
    // Optics groups: one per distinct (voltage, Cs, amplitude contrast).
    let mut keys: Vec<(i64, i64, i64)> = Vec::new();
    let mut group = Vec::with_capacity(n);
    for i in 0..n {
        let k = optics_key(ctf.map(|c| &c[i]));
        let g = match keys.iter().position(|x| *x == k) {
            Some(g) => g,
            None => {
                keys.push(k);
                keys.len() - 1
            }
        };
        group.push(g);
    }
    let mut optics = StarTable::new();
    let ng = keys.len();
    let first_of = |g: usize| group.iter().position(|&x| x == g).unwrap_or(0);
    optics.set_column("rlnOpticsGroup", (1..=ng).map(|g| g.to_string()))?;
    optics.set_column("rlnOpticsGroupName", (1..=ng).map(|g| format!("opticsGroup{g}")))?;
    if let Some(c) = ctf {
        optics.set_column_f64(
            "rlnAmplitudeContrast",
            &(0..ng).map(|g| c[first_of(g)].amp_contrast).collect::<Vec<_>>(),
        )?;
        optics.set_column_f64(
            "rlnSphericalAberration",
            &(0..ng).map(|g| c[first_of(g)].cs_mm).collect::<Vec<_>>(),
        )?;
        optics
            .set_column_f64("rlnVoltage", &(0..ng).map(|g| c[first_of(g)].voltage_kv).collect::<Vec<_>>())?;
    }
    optics.set_column_f64("rlnImagePixelSize", &vec![apix; ng])?;
    optics.set_column("rlnImageSize", vec![box_px.to_string(); ng])?;
    optics.set_column("rlnImageDimensionality", vec!["2"; ng])?;
    if s.ctf_premultiplied {
        optics.set_column("rlnCtfDataAreCtfPremultiplied", vec!["1"; ng])?;
    }

    let mut p = StarTable::new();
    if n == 0 {
        return Err(IoError::file(&s.path, "the particle set is empty: nothing to write"));
    }
    if !s.images.is_empty() {
        p.set_column("rlnImageName", (0..n).map(|i| image_name(s, i).unwrap_or_default()))?;
    } else {
        p.set_column("rlnOpticsGroup", group.iter().map(|g| (g + 1).to_string()))?;
    }
    if let Some(c) = ctf {
        set_ctf_columns(&mut p, c, false)?;
        if c.iter().any(|x| x.bfactor_a2 != 0.0) {
            p.set_column_f64("rlnCtfBfactor", &c.iter().map(|x| x.bfactor_a2).collect::<Vec<_>>())?;
        }
        if c.iter().any(|x| x.scale != 1.0) {
            p.set_column_f64("rlnCtfScalefactor", &c.iter().map(|x| x.scale).collect::<Vec<_>>())?;
        }
    }
    if s.poses.is_some() {
        set_pose_columns(&mut p, s, false, Some(apix))?;
    }
    p.set_column("rlnOpticsGroup", group.iter().map(|g| (g + 1).to_string()))?;
    if let Some(h) = &s.half_subset {
        p.set_column("rlnRandomSubset", h.iter().map(|v| v.to_string()))?;
    }
    let mut star = StarFile::new();
    star.push_block("optics", optics);
    star.push_block("particles", p);
    Ok(star)
}

/// Write the set as a cryoSPARC `.cs` file.
pub fn write_cs(s: &ParticleStack, path: &Path) -> Result<()> {
    let cs = match &s.source {
        Source::Cs(cs)
            if matches!(s.poses_origin, None | Some(Origin::Metadata))
                && matches!(s.ctf_origin, None | Some(Origin::Metadata)) =>
        {
            cs.select_rows(&s.source_index)?
        }
        _ => fresh_cs(s)?,
    };
    cs.write(path)
}

/// Deterministic 64-bit uid per particle (cryoSPARC uses random u64s).
fn uid(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fresh_cs(s: &ParticleStack) -> Result<CsFile> {
    let n = s.len();
    let apix = s.apix_a()?;
    let box_px = s.box_px()?;
    let mut b = CsBuilder::new(n).add_u64("uid", &(0..n).map(uid).collect::<Vec<_>>());
    if !s.images.is_empty() {
        let paths: Vec<Vec<u8>> =
            s.images.iter().map(|r| s.files[r.file as usize].as_bytes().to_vec()).collect();
        let width = paths.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
        b = b
            .add_bytes("blob/path", width, &paths)
            .add_u32("blob/idx", &s.images.iter().map(|r| r.index as u32).collect::<Vec<_>>())
            .add_u32_vec("blob/shape", 2, &vec![box_px as u32; 2 * n]);
    }
    b = b.add_f32("blob/psize_A", &vec![apix as f32; n]);
    let sign: Vec<f32> = s.sign.clone().unwrap_or_else(|| vec![1.0; n]);
    b = b.add_f32("blob/sign", &sign);
    if let Some(c) = &s.ctf {
        let f = |g: fn(&CtfParams) -> f64| c.iter().map(|p| g(p) as f32).collect::<Vec<f32>>();
        b = b
            .add_f32("ctf/accel_kv", &f(|p| p.voltage_kv))
            .add_f32("ctf/cs_mm", &f(|p| p.cs_mm))
            .add_f32("ctf/amp_contrast", &f(|p| p.amp_contrast))
            .add_f32("ctf/df1_A", &f(|p| p.defocus_u_a))
            .add_f32("ctf/df2_A", &f(|p| p.defocus_v_a))
            .add_f32("ctf/df_angle_rad", &f(|p| p.defocus_angle_deg.to_radians()))
            .add_f32("ctf/phase_shift_rad", &f(|p| p.phase_shift_deg.to_radians()))
            .add_f32("ctf/scale", &f(|p| p.scale))
            .add_f32("ctf/bfactor", &f(|p| p.bfactor_a2));
    }
    if let Some(p) = &s.poses {
        let mut pose = Vec::with_capacity(3 * n);
        let mut shift = Vec::with_capacity(2 * n);
        for q in p {
            let v = CsRotVec::from_rot(&q.rot).0;
            pose.extend(v.iter().map(|x| *x as f32));
            shift.extend(q.shift_px.iter().map(|x| *x as f32));
        }
        b = b
            .add_f32_vec("alignments3D/pose", 3, &pose)
            .add_f32_vec("alignments3D/shift", 2, &shift)
            .add_f32("alignments3D/psize_A", &vec![apix as f32; n]);
        if let Some(h) = &s.half_subset {
            b = b.add_u32(
                "alignments3D/split",
                &h.iter().map(|v| (*v as u32).saturating_sub(1)).collect::<Vec<_>>(),
            );
        }
    }
    b.build()
}

/// The number formatting used for new STAR values (exposed for tests).
pub fn fmt(v: f64) -> String {
    format_f64(v)
}
