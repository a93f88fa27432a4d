//! MRC files written by other tools (cryoDRGN's test data: EMAN, RELION and
//! cryoDRGN outputs). Each test skips with a notice when the shared data are absent.
//! Reference means were computed independently with numpy.

/// In a module so every test path contains "mrc" (`cargo test -p cryoforge-io mrc`).
mod mrc_real_data {

    use cryoforge_io::mrc::{write_stack, ByteOrder, MrcFile, MrcMode};
    use cryoforge_io::test_data_file;

    fn mean(v: &[f32]) -> f64 {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }

    /// Open mapped and unmapped, check dims/mode/voxel size/mean, and that batch
    /// and per-image reads agree with the whole-file read.
    fn check(path: &std::path::Path, dims: [usize; 3], apix: f32, want_mean: f64) -> Vec<f32> {
        let f = MrcFile::open(path).unwrap();
        assert_eq!((f.nx(), f.ny(), f.nz()), (dims[0], dims[1], dims[2]));
        assert_eq!(f.n_images(), dims[2]);
        assert_eq!(f.mode(), MrcMode::Float32);
        assert_eq!(f.byte_order(), ByteOrder::Little);
        assert_eq!(f.voxel_size()[0], apix);
        assert_eq!(f.voxel_size()[1], apix);
        let all = f.read_volume().unwrap();
        let m = mean(&all);
        assert!((m - want_mean).abs() < 1e-6, "mean {m}, expected {want_mean}");

        let n = f.image_len();
        let mut img = vec![0.0; n];
        for i in [0, dims[2] / 2, dims[2] - 1] {
            f.read_image(i, &mut img).unwrap();
            assert_eq!(img, all[i * n..(i + 1) * n], "image {i}");
        }
        let mut batch = vec![0.0; n * dims[2].min(3)];
        f.read_images(dims[2] - dims[2].min(3), &mut batch).unwrap();
        assert_eq!(batch, all[all.len() - batch.len()..]);
        assert_eq!(MrcFile::open_unmapped(path).unwrap().read_volume().unwrap(), all);
        all
    }

    #[test]
    fn hand_stack() {
        let Some(p) = test_data_file("hand_stack", "cryodrgn/hand.mrcs") else { return };
        let all = check(&p, [64, 64, 100], 1.0, 0.402_932_124_776_386);
        let f = MrcFile::open(&p).unwrap();
        let h = f.header();
        assert!(h.is_stack() && h.stats_set());
        assert_eq!(h.nversion, 0);
        assert_eq!(h.labels, vec!["EMAN 10/07/2019 10:31".to_string()]);
        assert!((h.dmean as f64 - mean(&all)).abs() < 1e-6);

        // Re-written by us, the voxels come back bit for bit.
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("hand_copy.mrcs");
        write_stack(&q, &all, 64, 64, 100, 1.0).unwrap();
        let g = MrcFile::open(&q).unwrap();
        let back = g.read_volume().unwrap();
        assert!(back.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()));
        // EMAN's dmin (0.0028) is not the data's minimum (-0.0045); ours is.
        let min = all.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let max = all.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        assert_eq!((g.header().dmin, g.header().dmax), (min, max));
        assert_eq!(max, 23.258091);
    }

    #[test]
    fn hand_volume() {
        let Some(p) = test_data_file("hand_volume", "cryodrgn/hand-vol.mrc") else { return };
        check(&p, [64, 64, 64], 1.0, 0.001_029_288_266_988_746_8);
        let f = MrcFile::open(&p).unwrap();
        assert_eq!(f.header().ispg, 1);
        assert_eq!(f.header().nversion, 20140);
        assert_eq!(f.voxel_size(), [1.0; 3]);
        assert_eq!(f.origin(), [0.0; 3]);
    }

    #[test]
    fn relion31_stack_without_stamp_or_stats() {
        let Some(p) = test_data_file("relion31_stack", "cryodrgn/relion31.mrcs") else { return };
        check(&p, [256, 256, 5], 1.0, 0.010_766_173_491_712_498);
        let h = MrcFile::open(&p).unwrap().header().clone();
        assert_eq!(h.machst, [0; 4], "byte order detected, not stamped");
        assert!(!h.stats_set() && !h.has_map_stamp());
    }

    #[test]
    fn toy_projections_with_unit_cell() {
        let Some(p) = test_data_file("toy_projections", "cryodrgn/toy_projections.mrcs") else { return };
        // mx = my = mz = 1 and a 1 Å cell: 1 Å/px on every axis.
        check(&p, [30, 30, 1000], 1.0, 0.200_158_494_412_207_57);
        assert_eq!(MrcFile::open(&p).unwrap().voxel_size(), [1.0; 3]);
    }
}
