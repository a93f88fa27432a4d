//! `cryoforge info`: a summary of any supported file.

use crate::common::Ctx;
use anyhow::{bail, Result};
use cryoforge_io::cs::CsFile;
use cryoforge_io::mrc::MrcFile;
use cryoforge_io::pkl::{self, PklValue};
use cryoforge_io::stack::{file_kind, FileKind, LoadOptions, ParticleStack};
use cryoforge_io::star::{RelionParticles, RelionVersion, StarTable};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Summarise a file: kind, counts, box, pixel size, optics groups, value ranges and
/// which columns are present. Never opens the image stacks a STAR or .cs points to.
///
/// Supported: .star, .cs, .mrc/.mrcs/.map, .pkl (cryoDRGN), .pdb/.cif, .txt stack lists.
///
/// Examples:
///   cryoforge info particles.star
///   cryoforge info J24_particles.cs --json
///   cryoforge info map.mrc
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The file to describe.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args, _ctx: &Ctx) -> Result<()> {
    let p = &a.file;
    if !p.exists() {
        bail!("{}: no such file", p.display());
    }
    let v = match file_kind(p) {
        FileKind::Star => star_info(p)?,
        FileKind::Cs => cs_info(p)?,
        FileKind::Mrc => mrc_info(p)?,
        FileKind::Pkl => pkl_info(p)?,
        FileKind::Model => model_info(p)?,
        FileKind::TxtStack => txt_info(p)?,
        FileKind::Unknown => {
            bail!("{}: unknown file type (expected .star .cs .mrc .mrcs .pkl .pdb .cif .txt)", p.display())
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_text(&v, 0);
    }
    Ok(())
}

fn print_text(v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    if let Value::Object(m) = v {
        for (k, x) in m {
            match x {
                Value::Object(_) => {
                    println!("{pad}{k}:");
                    print_text(x, indent + 2);
                }
                Value::Array(a) if a.iter().any(|e| e.is_object()) => {
                    println!("{pad}{k}:");
                    for (i, e) in a.iter().enumerate() {
                        println!("{pad}  [{i}]");
                        print_text(e, indent + 4);
                    }
                }
                Value::Array(a) => {
                    let s: Vec<String> =
                        a.iter().map(|e| e.to_string().trim_matches('"').to_string()).collect();
                    println!("{pad}{k}: {}", s.join(", "));
                }
                Value::String(s) => println!("{pad}{k}: {s}"),
                other => println!("{pad}{k}: {other}"),
            }
        }
    }
}

fn range(vals: &[f64]) -> Value {
    let finite: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return Value::Null;
    }
    let min = finite.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    json!({"min": min, "max": max, "mean": mean})
}

fn table_ranges(t: &StarTable) -> Value {
    let mut m = Map::new();
    for c in t.column_names() {
        if let Ok(v) = t.column_f64(c) {
            m.insert(c.to_string(), range(&v));
        }
    }
    Value::Object(m)
}

fn stack_summary(s: &ParticleStack) -> Value {
    json!({
        "particles": s.len(),
        "box_px": s.box_known(),
        "apix_A": s.apix_known(),
        "image_files": s.files.len(),
        "has_poses": s.poses.is_some(),
        "has_ctf": s.ctf.is_some(),
        "half_sets": s.half_subset.is_some(),
        "ctf_premultiplied": s.ctf_premultiplied,
        "warnings": s.warnings,
    })
}

fn star_info(p: &Path) -> Result<Value> {
    let rp = RelionParticles::read(p)?;
    let s = ParticleStack::load(p, &LoadOptions::default())?;
    let mut v = json!({
        "file": p.display().to_string(),
        "kind": "RELION STAR",
        "relion_layout": match rp.version() { RelionVersion::Relion30 => "3.0 (single table)", RelionVersion::Relion31 => "3.1+ (optics + particles)" },
        "particle_block": format!("data_{}", rp.particles_block_name()),
        "summary": stack_summary(&s),
        "particle_columns": rp.particles().column_names(),
        "ranges": table_ranges(rp.particles()),
    });
    if let Some(o) = rp.optics() {
        let mut groups = Vec::new();
        for r in 0..o.n_rows() {
            let mut g = Map::new();
            for c in o.column_names() {
                g.insert(c.to_string(), Value::String(o.get_str(r, c).unwrap_or("").to_string()));
            }
            groups.push(Value::Object(g));
        }
        v["optics_groups"] = Value::Array(groups);
    }
    Ok(v)
}

fn cs_info(p: &Path) -> Result<Value> {
    let cs = CsFile::read(p)?;
    let s = ParticleStack::load(p, &LoadOptions::default())?;
    let mut ranges = Map::new();
    let mut fields = Vec::new();
    for f in cs.fields() {
        fields.push(json!(format!(
            "{} {}{}",
            f.name,
            f.typestr(),
            if f.shape.is_empty() { String::new() } else { format!(" {:?}", f.shape) }
        )));
        if f.count() == 1 {
            if let Ok(v) = cs.column_f64(&f.name) {
                ranges.insert(f.name.clone(), range(&v));
            }
        }
    }
    Ok(json!({
        "file": p.display().to_string(),
        "kind": "cryoSPARC .cs",
        "rows": cs.n_rows(),
        "prefixes": cs.prefixes(),
        "summary": stack_summary(&s),
        "fields": fields,
        "ranges": ranges,
    }))
}

fn mrc_info(p: &Path) -> Result<Value> {
    let f = MrcFile::open(p)?;
    let h = f.header();
    let mut v = json!({
        "file": p.display().to_string(),
        "kind": if h.is_stack() { "MRC image stack" } else { "MRC volume" },
        "nx": f.nx(), "ny": f.ny(), "nz": f.nz(),
        "mode": format!("{:?} ({})", f.mode(), f.mode().code()),
        "byte_order": format!("{:?}", f.byte_order()),
        "voxel_size_A": f.voxel_size(),
        "origin_A": f.origin(),
        "ispg": h.ispg,
        "extended_header_bytes": h.nsymbt,
        "header_stats": {"dmin": h.dmin, "dmax": h.dmax, "dmean": h.dmean, "rms": h.rms},
        "labels": h.labels,
    });
    // Exact statistics for files up to 256 MiB of data; larger ones keep the header's.
    let n = f.nx() * f.ny() * f.nz();
    if n * 4 <= 256 << 20 && !f.mode().is_complex() {
        let d = f.read_volume()?;
        let m = d.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let sd = (d.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n as f64).sqrt();
        let mn = d.iter().cloned().fold(f32::INFINITY, f32::min);
        let mx = d.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        v["data_stats"] = json!({"min": mn, "max": mx, "mean": m, "std": sd});
    }
    Ok(v)
}

fn describe(v: &PklValue) -> Value {
    match v {
        PklValue::Array(a) => {
            let vals: Vec<f64> = (0..a.len().min(10_000_000)).filter_map(|i| a.data.get_f64(i)).collect();
            json!({"array": {"shape": a.shape, "dtype": a.data.dtype_name(), "range": range(&vals)}})
        }
        PklValue::Tuple(t) | PklValue::List(t) => Value::Array(t.iter().map(describe).collect()),
        other => json!(other.kind()),
    }
}

fn pkl_info(p: &Path) -> Result<Value> {
    let v = pkl::read_pickle(p)?;
    let guess = match &v {
        PklValue::Tuple(t) if t.len() == 2 => "cryoDRGN poses (rot, trans)",
        PklValue::Array(a) if a.shape.len() == 3 && a.shape[1..] == [3, 3] => "cryoDRGN rotations",
        PklValue::Array(a) if a.shape.len() == 2 && a.shape[1] == 9 => "cryoDRGN CTF parameters [N, 9]",
        PklValue::Array(a) if a.shape.len() == 1 && !a.data.is_float() => "cryoDRGN particle index",
        _ => "pickle",
    };
    Ok(json!({"file": p.display().to_string(), "kind": guess, "contents": describe(&v)}))
}

fn model_info(p: &Path) -> Result<Value> {
    let s = cryoforge_io::pdb::read_structure(p)?;
    let m = s.models.first().ok_or_else(|| anyhow::anyhow!("{}: no models", p.display()))?;
    let atoms: usize = m.chains.iter().flat_map(|c| &c.residues).map(|r| r.atoms.len()).sum();
    let residues: usize = m.chains.iter().map(|c| c.residues.len()).sum();
    let anchors = cryoforge_io::pdb::anchor_atoms(m)?;
    let chains: Vec<Value> =
        m.chains.iter().map(|c| json!({"id": c.id, "residues": c.residues.len()})).collect();
    Ok(json!({
        "file": p.display().to_string(),
        "kind": "atomic model",
        "models": s.models.len(),
        "chains": chains,
        "residues": residues,
        "atoms": atoms,
        "anchor_residues": anchors.len(),
    }))
}

fn txt_info(p: &Path) -> Result<Value> {
    let s = ParticleStack::load(p, &LoadOptions::default())?;
    Ok(
        json!({"file": p.display().to_string(), "kind": "stack list", "summary": stack_summary(&s), "files": s.files}),
    )
}
