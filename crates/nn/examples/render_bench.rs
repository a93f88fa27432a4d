//! Throughput of the differentiable Cα renderer, forward + backward, as one training step
//! of cryoSTAR/cryoSPHERE spends it: render a batch of structures with pose, shift and CTF,
//! compare with the batch of particle images, back-propagate to the coordinates.
//! `bench/render_vs_pytorch.sh` runs this beside a PyTorch implementation of the reference
//! pipeline on the same machine.
//!
//!   cargo run --release -p cryoforge-nn --example render_bench -- \
//!       --residues 214 --box 128 --apix 1 --batch 64 --band 10 --iters 5
//!
//! `--band A` low-passes to A Å (cryoSTAR's bandwidth), `--band full` renders to Nyquist.
//! Two paths are timed and printed as one JSON line each:
//! - `fourier`: spectrum on the band × CTF, correlation in Fourier space (Parseval) against
//!   the batch's band spectra, which are computed from the images every step (the data FFT
//!   is part of the cost, as the reference low-passes its images every step);
//! - `image`: the same spectrum synthesised to real D×D images and cryoSTAR's masked real-
//!   space correlation (mask radius 0.9375 of the half box) against the images low-passed
//!   to the band every step (as the reference does; a training loop can cache them).

use candle_core::{DType, Device, Tensor, Var};
use cryoforge_core::rotation::uniform_rotation;
use cryoforge_core::CtfParams;
use cryoforge_nn::loss::{CorrelationLoss, FourierCorrelationLoss};
use cryoforge_nn::render::{Band, Renderer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Opts {
    residues: usize,
    d: usize,
    apix: f64,
    batch: usize,
    band: Option<f64>,
    iters: usize,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts { residues: 214, d: 128, apix: 1.0, batch: 64, band: Some(10.0), iters: 5 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]))?;
        let num = |what: &str| v.parse::<f64>().map_err(|_| format!("{what}: {v:?} is not a number"));
        match args[i].as_str() {
            "--residues" => o.residues = num("--residues")? as usize,
            "--box" => o.d = num("--box")? as usize,
            "--apix" => o.apix = num("--apix")?,
            "--batch" => o.batch = num("--batch")? as usize,
            "--iters" => o.iters = num("--iters")? as usize,
            "--band" => o.band = if v == "full" { None } else { Some(num("--band")?) },
            a => return Err(format!("unknown option {a}")),
        }
        i += 2;
    }
    if o.d % 2 == 1 || o.d < 8 || o.batch == 0 || o.residues == 0 || o.iters == 0 {
        return Err("need an even --box ≥ 8 and positive --batch, --residues, --iters".into());
    }
    Ok(o)
}

/// A compact random "protein": residues uniformly in a sphere of the volume a globular
/// protein of that size fills (≈ 1.3 residues per nm³ of Cα cloud), amplitudes 20–80.
fn model(r: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
    let radius = 6.0 * (r as f64).cbrt();
    let mut c = Vec::with_capacity(3 * r);
    while c.len() < 3 * r {
        let p = [0, 1, 2].map(|_| rng.gen_range(-radius..radius));
        if p.iter().map(|x| x * x).sum::<f64>() <= radius * radius {
            c.extend(p.iter().map(|&x| x as f32));
        }
    }
    (c, (0..r).map(|_| rng.gen_range(20.0f32..80.0)).collect())
}

fn main() {
    cryoforge_core::alloc::retain_freed_memory();
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&o) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Opts) -> cryoforge_nn::Result<()> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (b, d, r) = (o.batch, o.d, o.residues);
    let band = match o.band {
        Some(res) => Band::Resolution { resolution_a: res },
        None => Band::Radius(d / 2),
    };
    let ren = Renderer::new(d, o.apix, band, &dev)?;
    let (c, a) = model(r, &mut rng);
    let coords: Vec<f32> = (0..b).flat_map(|_| c.iter().copied()).collect();
    let coords = Var::from_tensor(&Tensor::from_vec(coords, (b, r, 3), &dev)?)?;
    let amps = Tensor::from_vec(a, r, &dev)?;
    let sigma = Tensor::new(&[2f32], &dev)?;
    let rots: Vec<f32> = (0..b)
        .flat_map(|_| {
            let q = uniform_rotation(rng.gen(), rng.gen(), rng.gen());
            q.0.into_iter().flat_map(|row| row.map(|x| x as f32))
        })
        .collect();
    let rots = Tensor::from_vec(rots, (b, 3, 3), &dev)?;
    let shifts: Vec<f32> = (0..2 * b).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let shifts = Tensor::from_vec(shifts, (b, 2), &dev)?;
    let ctfs: Vec<CtfParams> = (0..b)
        .map(|_| {
            let df = rng.gen_range(10000.0..25000.0);
            CtfParams {
                defocus_u_a: df,
                defocus_v_a: df - 300.0,
                defocus_angle_deg: 30.0,
                ..Default::default()
            }
        })
        .collect();
    let transfer = ren.ctf_transfer(&ctfs)?;
    let images: Vec<f32> = {
        let t = Tensor::randn(0f32, 1.0, (b, d, d), &dev)?;
        t.flatten_all()?.to_vec1()?
    };
    let images_t = Tensor::from_vec(images.clone(), (b, d, d), &dev)?;
    let fl = FourierCorrelationLoss::new(d, 1e-8);
    let cl = CorrelationLoss::cryostar(d, &dev)?;

    let fourier = || -> cryoforge_nn::Result<f32> {
        let bd = ren.band_data(&images)?;
        let sp = ren.spectrum(coords.as_tensor(), &amps, &sigma, &rots, &shifts)?;
        let l = fl.loss(&ren.apply_transfer(&sp, &transfer)?, &bd)?;
        let g = l.backward()?;
        let gc = g.get(coords.as_tensor()).map(|t| t.dims().to_vec());
        debug_assert_eq!(gc, Some(vec![b, r, 3]));
        Ok(l.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    };
    let image = || -> cryoforge_nn::Result<f32> {
        // The particle images are low-passed to the band every step, as the reference does.
        let gt = match o.band {
            Some(_) => Tensor::from_vec(ren.lowpass_images(&images)?, (b, d, d), &dev)?,
            None => images_t.clone(),
        };
        let img = ren.render(coords.as_tensor(), &amps, &sigma, &rots, &shifts, &transfer)?;
        let l = cl.loss(&img, &gt)?;
        l.backward()?;
        Ok(l.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let paths: [(&str, &dyn Fn() -> cryoforge_nn::Result<f32>); 2] =
        [("fourier", &fourier), ("image", &image)];
    let only = std::env::var("RENDER_BENCH_PATH").ok();
    for (name, f) in paths {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        f()?; // warm-up
        let t0 = std::time::Instant::now();
        for _ in 0..o.iters {
            f()?;
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{{\"tool\":\"cryoforge\",\"path\":\"{name}\",\"residues\":{r},\"box\":{d},\"band\":\"{}\",\"band_k\":{},\"batch\":{b},\"threads\":\"{threads}\",\"images_per_s\":{:.2}}}",
            o.band.map(|x| format!("{x}A")).unwrap_or_else(|| "full".into()),
            ren.kmax(),
            (o.iters * b) as f64 / s
        );
    }
    Ok(())
}
