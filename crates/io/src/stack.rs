//! One particle-set abstraction for every command: images (lazily read), optional
//! poses, optional CTFs and the source's own metadata, loaded from a RELION STAR
//! file, a cryoSPARC `.cs` file, or an `.mrcs`/`.txt` stack with cryoDRGN pickles.
//!
//! Only metadata is read when a stack is loaded; image files are opened (memory-
//! mapped) the first time a pixel is needed, so `info`, `convert` and `select`
//! work without the stacks a STAR or `.cs` file points to.
//!
//! ```no_run
//! use cryoforge_io::stack::{LoadOptions, ParticleStack};
//! let s = ParticleStack::load("particles.star".as_ref(), &LoadOptions::default())?;
//! let mut img = vec![0f32; s.box_px()? * s.box_px()?];
//! s.read_image(0, &mut img)?;
//! # Ok::<(), cryoforge_io::IoError>(())
//! ```

use crate::cs::CsFile;
use crate::error::{IoError, Result};
use crate::mrc::MrcFile;
use crate::pkl;
use crate::star::{RelionParticles, RelionVersion};
use cryoforge_core::{CsRotVec, CtfParams, EulerRelion, Rot3};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A particle's pose: the rotation A (CONVENTIONS.md rule 1) and the shift in
/// pixels with the sign of RELION's origin (rule 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    pub rot: Rot3,
    pub shift_px: [f64; 2],
}

/// Where a particle's pixels are: image `index` (0-based) of stack file `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef {
    pub file: u32,
    pub index: u64,
}

/// The file the particle set was described by, kept for faithful subsets and
/// round trips (unknown columns survive).
#[derive(Debug, Clone)]
pub enum Source {
    Star(Box<RelionParticles>),
    Cs(Box<CsFile>),
    /// An `.mrcs` stack or a `.txt` list of stacks, with optional pickles.
    Stack,
}

/// Where the poses (or CTFs) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The metadata file itself.
    Metadata,
    /// A cryoDRGN pickle given on the command line.
    Pickle,
    /// Computed by a cryoforge command (e.g. refined poses): written out in full.
    Computed,
}

/// Options for [`ParticleStack::load`], matching cryoDRGN's parse_* flags.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Folder against which image paths are resolved (RELION project / cryoSPARC project).
    pub datadir: Option<PathBuf>,
    /// cryoDRGN pose pickle replacing the file's poses.
    pub poses_pkl: Option<PathBuf>,
    /// cryoDRGN CTF pickle replacing the file's CTFs.
    pub ctf_pkl: Option<PathBuf>,
    /// Box size in pixels when the metadata does not say it.
    pub box_px: Option<usize>,
    /// Pixel size in Å overriding the metadata's.
    pub apix_a: Option<f64>,
    /// CTF overrides (cryoDRGN `--kv`, `--cs`, `-w`, `--ps`).
    pub voltage_kv: Option<f64>,
    pub cs_mm: Option<f64>,
    pub amp_contrast: Option<f64>,
    pub phase_shift_deg: Option<f64>,
    /// cryoSPARC hetero-refinement shifts are stored halved (cryoDRGN `--hetrefine`).
    pub hetrefine: bool,
}

/// A set of particles; see the module docs.
#[derive(Debug, Clone)]
pub struct ParticleStack {
    /// The metadata file it was loaded from.
    pub path: PathBuf,
    pub source: Source,
    /// Per particle: where its pixels are (empty when the source lists no images).
    pub images: Vec<ImageRef>,
    /// Image files as written in the metadata (resolved lazily).
    pub files: Vec<String>,
    pub poses: Option<Vec<Pose>>,
    pub poses_origin: Option<Origin>,
    pub ctf: Option<Vec<CtfParams>>,
    pub ctf_origin: Option<Origin>,
    /// Why the CTF could not be read from the metadata (reported when a CTF is needed).
    pub ctf_missing: Option<String>,
    /// Per-particle data sign (cryoSPARC `blob/sign`); `None` means +1.
    pub sign: Option<Vec<f32>>,
    /// RELION `rlnCtfDataAreCtfPremultiplied`.
    pub ctf_premultiplied: bool,
    /// RELION `rlnRandomSubset` (1 or 2) or cryoSPARC `alignments3D/split` (+1).
    pub half_subset: Option<Vec<u8>>,
    /// Indices of these particles in the file they were loaded from.
    pub source_index: Vec<usize>,
    apix_a: Option<f64>,
    box_px: Option<usize>,
    datadir: Option<PathBuf>,
    opened: Arc<Vec<OnceLock<std::result::Result<MrcFile, String>>>>,
    /// Notes for the user (unused columns, defaults taken).
    pub warnings: Vec<String>,
}

/// What kind of file a path is, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Star,
    Cs,
    Mrc,
    TxtStack,
    Pkl,
    Model,
    Unknown,
}

pub fn file_kind(path: &Path) -> FileKind {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "star" => FileKind::Star,
        "cs" => FileKind::Cs,
        "mrc" | "mrcs" | "map" | "st" | "rec" => FileKind::Mrc,
        "txt" => FileKind::TxtStack,
        "pkl" | "pickle" => FileKind::Pkl,
        "pdb" | "ent" | "cif" | "mmcif" => FileKind::Model,
        _ => FileKind::Unknown,
    }
}

/// RELION columns cryoforge does not model yet; a warning names those present.
const UNUSED_OPTICS_COLUMNS: [&str; 9] = [
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMagnificationCorrection",
];

impl ParticleStack {
    /// Load particle metadata from a STAR, `.cs`, `.mrcs` or `.txt` file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<ParticleStack> {
        let mut s = match file_kind(path) {
            FileKind::Star => Self::from_star(path, opts)?,
            FileKind::Cs => Self::from_cs(path, opts)?,
            FileKind::Mrc => Self::from_stack_files(path, vec![path.to_string_lossy().into_owned()], opts)?,
            FileKind::TxtStack => Self::from_txt(path, opts)?,
            _ => {
                return Err(IoError::file(
                    path,
                    "not a particle file: expected .star, .cs, .mrcs/.mrc or a .txt list of stacks",
                ))
            }
        };
        s.apply_pickles(opts)?;
        s.check_values()?;
        Ok(s)
    }

    fn empty(path: &Path, source: Source, n: usize, opts: &LoadOptions) -> ParticleStack {
        ParticleStack {
            path: path.to_path_buf(),
            source,
            images: Vec::new(),
            files: Vec::new(),
            poses: None,
            poses_origin: None,
            ctf: None,
            ctf_origin: None,
            ctf_missing: None,
            sign: None,
            ctf_premultiplied: false,
            half_subset: None,
            source_index: (0..n).collect(),
            apix_a: opts.apix_a,
            box_px: opts.box_px,
            datadir: opts.datadir.clone(),
            opened: Arc::new(Vec::new()),
            warnings: Vec::new(),
        }
    }

    /// Number of particles.
    pub fn len(&self) -> usize {
        self.source_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixel size in Å: `--apix`, else the metadata's, else the first stack's header.
    pub fn apix_a(&self) -> Result<f64> {
        if let Some(a) = self.apix_a {
            return Ok(a);
        }
        if !self.images.is_empty() {
            let f = self.open_file(self.images[0].file as usize)?;
            let v = f.voxel_size()[0] as f64;
            if v > 0.0 {
                return Ok(v);
            }
        }
        Err(IoError::file(&self.path, "pixel size unknown: the file does not give it; pass --apix"))
    }

    /// The pixel size if known from metadata or options, without opening stacks.
    pub fn apix_known(&self) -> Option<f64> {
        self.apix_a
    }

    /// Box size in pixels: `--box`, else the metadata's, else the first stack's header.
    pub fn box_px(&self) -> Result<usize> {
        if let Some(b) = self.box_px {
            return Ok(b);
        }
        if !self.images.is_empty() {
            let f = self.open_file(self.images[0].file as usize)?;
            return Ok(f.nx());
        }
        Err(IoError::file(&self.path, "box size unknown: the file does not give it; pass --box"))
    }

    /// The box size if known from metadata or options, without opening stacks.
    pub fn box_known(&self) -> Option<usize> {
        self.box_px
    }

    /// Resolve a stack path as written in the metadata: `--datadir`/path, then
    /// `--datadir`/file name, then relative to the metadata file's folder, then as given.
    pub fn resolve(&self, written: &str) -> Result<PathBuf> {
        let p = Path::new(written);
        let mut tried = Vec::new();
        let mut cands = Vec::new();
        if let Some(d) = &self.datadir {
            cands.push(d.join(p));
            if let Some(name) = p.file_name() {
                cands.push(d.join(name));
            }
        }
        if p.is_absolute() {
            cands.push(p.to_path_buf());
        } else {
            let base = self.path.parent().unwrap_or(Path::new("."));
            cands.push(base.join(p));
            cands.push(p.to_path_buf());
        }
        for c in cands {
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c.display().to_string());
        }
        Err(IoError::file(
            &self.path,
            format!("image stack {written:?} not found (tried {}); use --datadir", tried.join(", ")),
        ))
    }

    fn open_file(&self, file: usize) -> Result<&MrcFile> {
        let cell = self
            .opened
            .get(file)
            .ok_or_else(|| IoError::file(&self.path, format!("internal: no stack file {file}")))?;
        let r = cell.get_or_init(|| {
            let name = &self.files[file];
            let p = self.resolve(name).map_err(|e| e.to_string())?;
            MrcFile::open(&p).map_err(|e| e.to_string())
        });
        r.as_ref().map_err(|m| IoError::file(&self.path, m.clone()))
    }

    /// Read particle `i` (row-major D×D, f32) into `out`, with the data sign applied.
    /// Errors name the particle, the stack file and the image index.
    pub fn read_image(&self, i: usize, out: &mut [f32]) -> Result<()> {
        let r = *self.images.get(i).ok_or_else(|| {
            IoError::index(
                &self.path,
                self.source_index.get(i).copied().unwrap_or(i),
                "no image for this particle",
            )
        })?;
        let f = self.open_file(r.file as usize)?;
        let src = self.source_index[i];
        if f.nx() != f.ny() {
            return Err(IoError::index(
                f.path(),
                r.index as usize,
                format!("images are {}×{} px: only square images are supported", f.nx(), f.ny()),
            ));
        }
        if r.index as usize >= f.n_images() {
            return Err(IoError::index(
                &self.path,
                src,
                format!(
                    "image {} requested from {}, which holds {} images",
                    r.index + 1,
                    f.path().display(),
                    f.n_images()
                ),
            ));
        }
        if out.len() != f.nx() * f.ny() {
            let b = self.box_px.unwrap_or(f.nx());
            return Err(IoError::index(
                f.path(),
                r.index as usize,
                format!("image is {}×{} px but the particle set's box is {b} px", f.nx(), f.ny()),
            ));
        }
        f.read_image(r.index as usize, out)?;
        if let Some(s) = &self.sign {
            if s[i] != 1.0 {
                out.iter_mut().for_each(|v| *v *= s[i]);
            }
        }
        Ok(())
    }

    /// Keep only the particles `idx` (indices into this set), in that order.
    pub fn select(&mut self, idx: &[usize]) -> Result<()> {
        let n = self.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
            return Err(IoError::index(
                &self.path,
                bad,
                format!("index out of range: the set has {n} particles"),
            ));
        }
        fn pick<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
            idx.iter().map(|&i| v[i].clone()).collect()
        }
        if !self.images.is_empty() {
            self.images = pick(&self.images, idx);
        }
        self.poses = self.poses.as_ref().map(|p| pick(p, idx));
        self.ctf = self.ctf.as_ref().map(|p| pick(p, idx));
        self.sign = self.sign.as_ref().map(|p| pick(p, idx));
        self.half_subset = self.half_subset.as_ref().map(|p| pick(p, idx));
        self.source_index = pick(&self.source_index, idx);
        Ok(())
    }

    /// cryoDRGN-style selection: `--ind` indices (into the file's order), then `--first N`.
    pub fn select_ind_first(&mut self, ind: Option<&[usize]>, first: Option<usize>) -> Result<()> {
        if let Some(ind) = ind {
            self.select(ind)?;
        }
        if let Some(k) = first {
            let k = k.min(self.len());
            let idx: Vec<usize> = (0..k).collect();
            self.select(&idx)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- STAR

    fn from_star(path: &Path, opts: &LoadOptions) -> Result<ParticleStack> {
        let rp = RelionParticles::read(path)?;
        let n = rp.n_particles();
        let mut s = Self::empty(path, Source::Stack, n, opts);
        if n == 0 {
            s.source = Source::Star(Box::new(rp));
            return Ok(s);
        }
        if s.apix_a.is_none() {
            s.apix_a = rp.pixel_size(0)?;
        }
        if s.box_px.is_none() {
            s.box_px = rp.image_size(0)?;
        }
        if rp.has_column("rlnImageName") {
            let mut names: std::collections::HashMap<String, u32> = Default::default();
            for r in 0..n {
                let (idx, file) = rp.image_name(r)?;
                let next = names.len() as u32;
                let f = *names.entry(file.clone()).or_insert_with(|| {
                    s.files.push(file);
                    next
                });
                s.images.push(ImageRef { file: f, index: idx as u64 });
            }
        }
        let have_angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"].iter().all(|c| rp.has_column(c));
        if have_angles {
            s.poses = Some(star_poses(&rp, opts)?);
            s.poses_origin = Some(Origin::Metadata);
        }
        if rp.has_column("rlnDefocusU") {
            // A STAR without e.g. rlnAmplitudeContrast still has usable poses: the CTF is
            // reported missing only when a command needs it (cryoDRGN asks for -w then).
            match star_ctfs(&rp, opts) {
                Ok(c) => {
                    s.ctf = Some(c);
                    s.ctf_origin = Some(Origin::Metadata);
                }
                Err(e) if e.msg.starts_with("no column") => {
                    s.ctf_missing = Some(format!("{e} (give it with --kv, --cs-mm, -w or --phase-shift)"))
                }
                Err(e) => return Err(e),
            }
        }
        if rp.has_column("rlnRandomSubset") {
            let v = rp.column_f64("rlnRandomSubset")?;
            s.half_subset = Some(v.iter().map(|&x| x as u8).collect());
        }
        if rp.has_column("rlnCtfDataAreCtfPremultiplied") {
            s.ctf_premultiplied = rp.f64(0, "rlnCtfDataAreCtfPremultiplied")? != 0.0;
        }
        let unused: Vec<&str> = UNUSED_OPTICS_COLUMNS.iter().copied().filter(|c| rp.has_column(c)).collect();
        if !unused.is_empty() {
            s.warnings.push(format!(
                "{}: columns {} are present but not yet used (beam tilt, Zernike and magnification corrections are ignored)",
                path.display(),
                unused.join(", ")
            ));
        }
        s.source = Source::Star(Box::new(rp));
        Ok(s)
    }

    // ---------------------------------------------------------------- .cs

    fn from_cs(path: &Path, opts: &LoadOptions) -> Result<ParticleStack> {
        let cs = CsFile::read(path)?;
        let n = cs.n_rows();
        let mut s = Self::empty(path, Source::Stack, n, opts);
        if n > 0 && cs.has_field("blob/psize_A") && s.apix_a.is_none() {
            s.apix_a = Some(cs.get_f64(0, "blob/psize_A", 0)?);
        }
        if n > 0 && cs.has_field("blob/shape") && s.box_px.is_none() {
            s.box_px = Some(cs.get_f64(0, "blob/shape", 0)? as usize);
        }
        if cs.has_field("blob/path") && cs.has_field("blob/idx") {
            let mut names: std::collections::HashMap<String, u32> = Default::default();
            for r in 0..n {
                let p = cs.get_str(r, "blob/path")?;
                let p = p.strip_prefix('>').unwrap_or(&p).to_string();
                let idx = cs.get_u64(r, "blob/idx", 0)?;
                let next = names.len() as u32;
                let f = *names.entry(p.clone()).or_insert_with(|| {
                    s.files.push(p);
                    next
                });
                s.images.push(ImageRef { file: f, index: idx });
            }
        }
        if cs.has_field("blob/sign") {
            s.sign = Some(cs.column_f64("blob/sign")?.iter().map(|&v| v as f32).collect());
        }
        let prefix =
            ["alignments3D", "alignments_class_0"].into_iter().find(|p| cs.has_field(&format!("{p}/pose")));
        if let Some(p) = prefix {
            s.poses = Some(cs_poses(&cs, p, opts)?);
            s.poses_origin = Some(Origin::Metadata);
            if cs.has_field(&format!("{p}/split")) {
                let v = cs.column_f64(&format!("{p}/split"))?;
                s.half_subset = Some(v.iter().map(|&x| x as u8 + 1).collect());
            }
        }
        if cs.has_field("ctf/df1_A") {
            s.ctf = Some(cs_ctfs(&cs, opts)?);
            s.ctf_origin = Some(Origin::Metadata);
        }
        s.source = Source::Cs(Box::new(cs));
        Ok(s)
    }

    // ---------------------------------------------------------------- stacks

    fn from_txt(path: &Path, opts: &LoadOptions) -> Result<ParticleStack> {
        let text = std::fs::read_to_string(path).map_err(|e| IoError::os(path, "cannot read", e))?;
        let files: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if files.is_empty() {
            return Err(IoError::file(path, "the stack list names no .mrcs files"));
        }
        Self::from_stack_files(path, files, opts)
    }

    fn from_stack_files(path: &Path, files: Vec<String>, opts: &LoadOptions) -> Result<ParticleStack> {
        let mut s = Self::empty(path, Source::Stack, 0, opts);
        s.files = files;
        s.opened = Arc::new((0..s.files.len()).map(|_| OnceLock::new()).collect());
        let mut box_px = None;
        for fi in 0..s.files.len() {
            let f = s.open_file(fi)?;
            if f.nx() != f.ny() {
                return Err(IoError::field(
                    f.path(),
                    "nx/ny",
                    format!("images are {}×{} px: only square images are supported", f.nx(), f.ny()),
                ));
            }
            if let Some(b) = box_px {
                if b != f.nx() {
                    return Err(IoError::field(
                        f.path(),
                        "nx",
                        format!("box {} differs from the first stack's {b}", f.nx()),
                    ));
                }
            }
            box_px = Some(f.nx());
            let k = f.n_images();
            let apix = f.voxel_size()[0] as f64;
            if s.apix_a.is_none() && apix > 0.0 && (apix - 1.0).abs() > 0.0 {
                s.apix_a = Some(apix);
            }
            s.images.extend((0..k).map(|i| ImageRef { file: fi as u32, index: i as u64 }));
        }
        if s.box_px.is_none() {
            s.box_px = box_px;
        }
        s.source_index = (0..s.images.len()).collect();
        Ok(s)
    }

    // ---------------------------------------------------------------- pickles

    fn apply_pickles(&mut self, opts: &LoadOptions) -> Result<()> {
        if self.opened.len() != self.files.len() {
            self.opened = Arc::new((0..self.files.len()).map(|_| OnceLock::new()).collect());
        }
        let n = self.len();
        if let Some(p) = &opts.poses_pkl {
            let pk = pkl::read_poses_pkl(p)?;
            if pk.rots.len() != n {
                return Err(IoError::file(
                    p,
                    format!("has {} poses but the particle set has {n} particles", pk.rots.len()),
                ));
            }
            let d = match &pk.trans {
                Some(_) => self.box_px().map_err(|_| {
                    IoError::file(
                        p,
                        "translations are fractions of the box: the box size is unknown; pass --box",
                    )
                })? as f64,
                None => 0.0,
            };
            let poses = pk
                .rots
                .iter()
                .enumerate()
                .map(|(i, r)| Pose {
                    rot: Rot3(*r),
                    shift_px: pk.trans.as_ref().map(|t| [t[i][0] * d, t[i][1] * d]).unwrap_or([0.0; 2]),
                })
                .collect();
            self.poses = Some(poses);
            self.poses_origin = Some(Origin::Pickle);
        }
        if let Some(p) = &opts.ctf_pkl {
            let rows = pkl::read_ctf_pkl(p)?;
            if rows.len() != n {
                return Err(IoError::file(
                    p,
                    format!("has {} CTF rows but the particle set has {n} particles", rows.len()),
                ));
            }
            if let Some(r) = rows.first() {
                if self.box_px.is_none() {
                    self.box_px = Some(r[0] as usize);
                }
                if self.apix_a.is_none() {
                    self.apix_a = Some(r[1]);
                }
            }
            self.ctf = Some(rows.iter().map(ctf_from_row).collect());
            self.ctf_origin = Some(Origin::Pickle);
        }
        Ok(())
    }

    fn check_values(&self) -> Result<()> {
        if let Some(p) = &self.poses {
            for (i, pose) in p.iter().enumerate() {
                if let Err(m) = pose.rot.check() {
                    return Err(IoError::index(
                        &self.path,
                        self.source_index[i],
                        format!("invalid pose: {m}"),
                    ));
                }
                if !pose.shift_px.iter().all(|v| v.is_finite()) {
                    return Err(IoError::index(&self.path, self.source_index[i], "shift is not finite"));
                }
            }
        }
        if let Some(c) = &self.ctf {
            for (i, ctf) in c.iter().enumerate() {
                if let Err(m) = ctf.check() {
                    return Err(IoError::index(&self.path, self.source_index[i], m));
                }
            }
        }
        if let Some(a) = self.apix_a {
            if !(a.is_finite() && a > 0.0) {
                return Err(IoError::file(&self.path, format!("pixel size {a} Å is not positive")));
            }
        }
        Ok(())
    }

    /// The CTF parameters, or an error saying why there are none.
    pub fn require_ctf(&self) -> Result<&[CtfParams]> {
        match (&self.ctf, &self.ctf_missing) {
            (Some(c), _) => Ok(c),
            (None, Some(m)) => Err(IoError::file(&self.path, format!("no usable CTF parameters: {m}"))),
            (None, None) => Err(IoError::file(&self.path, "the particle set has no CTF parameters")),
        }
    }

    /// cryoDRGN CTF rows `[D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase]`.
    pub fn ctf_rows(&self) -> Result<Vec<[f64; 9]>> {
        let c = self.require_ctf()?;
        let d = self.box_px()? as f64;
        let a = self.apix_a()?;
        Ok(c.iter()
            .map(|p| {
                [
                    d,
                    a,
                    p.defocus_u_a,
                    p.defocus_v_a,
                    p.defocus_angle_deg,
                    p.voltage_kv,
                    p.cs_mm,
                    p.amp_contrast,
                    p.phase_shift_deg,
                ]
            })
            .collect())
    }
}

/// CTF parameters from a cryoDRGN CTF row.
pub fn ctf_from_row(r: &[f64; 9]) -> CtfParams {
    CtfParams {
        defocus_u_a: r[2],
        defocus_v_a: r[3],
        defocus_angle_deg: r[4],
        voltage_kv: r[5],
        cs_mm: r[6],
        amp_contrast: r[7],
        phase_shift_deg: if r[8].is_nan() { 0.0 } else { r[8] },
        bfactor_a2: 0.0,
        scale: 1.0,
    }
}

fn star_poses(rp: &RelionParticles, opts: &LoadOptions) -> Result<Vec<Pose>> {
    let n = rp.n_particles();
    let angst = rp.has_column("rlnOriginXAngst");
    let px = rp.has_column("rlnOriginX");
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let e = EulerRelion::new(
            rp.f64(r, "rlnAngleRot")?,
            rp.f64(r, "rlnAngleTilt")?,
            rp.f64(r, "rlnAnglePsi")?,
        );
        let shift_px = if angst {
            let apix = match opts.apix_a {
                Some(a) => a,
                None => rp.pixel_size(r)?.ok_or_else(|| {
                    IoError::field(
                        rp.star().path(),
                        "rlnImagePixelSize",
                        "origins are in Å but the pixel size is unknown; pass --apix",
                    )
                })?,
            };
            [rp.f64(r, "rlnOriginXAngst")? / apix, rp.f64_opt(r, "rlnOriginYAngst")?.unwrap_or(0.0) / apix]
        } else if px {
            [rp.f64(r, "rlnOriginX")?, rp.f64_opt(r, "rlnOriginY")?.unwrap_or(0.0)]
        } else {
            [0.0, 0.0]
        };
        out.push(Pose { rot: e.to_rot(), shift_px });
    }
    Ok(out)
}

fn star_ctfs(rp: &RelionParticles, o: &LoadOptions) -> Result<Vec<CtfParams>> {
    let n = rp.n_particles();
    let mut out = Vec::with_capacity(n);
    let pick = |v: Option<f64>, r: usize, col: &str| -> Result<f64> {
        match v {
            Some(x) => Ok(x),
            None => rp.f64(r, col),
        }
    };
    for r in 0..n {
        let du = rp.f64(r, "rlnDefocusU")?;
        out.push(CtfParams {
            defocus_u_a: du,
            defocus_v_a: rp.f64_opt(r, "rlnDefocusV")?.unwrap_or(du),
            defocus_angle_deg: rp.f64_opt(r, "rlnDefocusAngle")?.unwrap_or(0.0),
            voltage_kv: pick(o.voltage_kv, r, "rlnVoltage")?,
            cs_mm: pick(o.cs_mm, r, "rlnSphericalAberration")?,
            amp_contrast: pick(o.amp_contrast, r, "rlnAmplitudeContrast")?,
            // A missing rlnPhaseShift means 0 (cryoDRGN writes NaN).
            phase_shift_deg: match o.phase_shift_deg {
                Some(p) => p,
                None => rp.f64_opt(r, "rlnPhaseShift")?.unwrap_or(0.0),
            },
            bfactor_a2: rp.f64_opt(r, "rlnCtfBfactor")?.unwrap_or(0.0),
            scale: rp.f64_opt(r, "rlnCtfScalefactor")?.unwrap_or(1.0),
        });
    }
    Ok(out)
}

fn cs_poses(cs: &CsFile, prefix: &str, opts: &LoadOptions) -> Result<Vec<Pose>> {
    let pose = cs.column_vec(&format!("{prefix}/pose"))?;
    let shift_name = format!("{prefix}/shift");
    let shifts = if cs.has_field(&shift_name) { Some(cs.column_vec(&shift_name)?) } else { None };
    let k = if opts.hetrefine { 2.0 } else { 1.0 };
    Ok(pose
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let rot = CsRotVec([v[0], v[1], v[2]]).to_rot();
            let shift_px = shifts.as_ref().map(|s| [s[i][0] * k, s[i][1] * k]).unwrap_or([0.0; 2]);
            Pose { rot, shift_px }
        })
        .collect())
}

fn cs_ctfs(cs: &CsFile, o: &LoadOptions) -> Result<Vec<CtfParams>> {
    let col = |name: &str| cs.column_f64(name);
    let opt = |name: &str, default: f64| -> Result<Vec<f64>> {
        if cs.has_field(name) {
            cs.column_f64(name)
        } else {
            Ok(vec![default; cs.n_rows()])
        }
    };
    let (df1, df2, ang) = (col("ctf/df1_A")?, col("ctf/df2_A")?, opt("ctf/df_angle_rad", 0.0)?);
    let (kv, csmm, w) = (col("ctf/accel_kv")?, col("ctf/cs_mm")?, col("ctf/amp_contrast")?);
    let (ps, scale) = (opt("ctf/phase_shift_rad", 0.0)?, opt("ctf/scale", 1.0)?);
    let bf = opt("ctf/bfactor", 0.0)?;
    Ok((0..cs.n_rows())
        .map(|i| CtfParams {
            defocus_u_a: df1[i],
            defocus_v_a: df2[i],
            defocus_angle_deg: ang[i].to_degrees(),
            voltage_kv: o.voltage_kv.unwrap_or(kv[i]),
            cs_mm: o.cs_mm.unwrap_or(csmm[i]),
            amp_contrast: o.amp_contrast.unwrap_or(w[i]),
            phase_shift_deg: o.phase_shift_deg.unwrap_or(ps[i].to_degrees()),
            bfactor_a2: bf[i],
            scale: scale[i],
        })
        .collect())
}

/// Whether a STAR source is RELION 3.0 (single table).
pub fn is_relion30(s: &ParticleStack) -> bool {
    matches!(&s.source, Source::Star(rp) if rp.version() == RelionVersion::Relion30)
}

impl ParticleStack {
    /// A set built in code (e.g. by the simulator): images `images` of `files`, with a
    /// known box and pixel size; `path` names the metadata file it will be written as.
    pub fn from_parts(
        path: &Path,
        files: Vec<String>,
        images: Vec<ImageRef>,
        box_px: usize,
        apix_a: f64,
    ) -> ParticleStack {
        let n = images.len();
        let opts = LoadOptions { box_px: Some(box_px), apix_a: Some(apix_a), ..Default::default() };
        let mut s = Self::empty(path, Source::Stack, n, &opts);
        s.opened = Arc::new((0..files.len()).map(|_| OnceLock::new()).collect());
        s.files = files;
        s.images = images;
        s
    }

    /// The same set with a new box size and pixel size (after resampling the images).
    pub fn with_geometry(mut self, box_px: usize, apix_a: f64) -> ParticleStack {
        self.box_px = Some(box_px);
        self.apix_a = Some(apix_a);
        self.opened = Arc::new((0..self.files.len()).map(|_| OnceLock::new()).collect());
        self
    }
}
