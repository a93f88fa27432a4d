//! The structural pair lists and losses on hand-made structures (closed-form values).

use candle_core::{Device, Tensor};
use cryoforge_io::pdb::{AnchorKind, AnchorResidue};
use cryoforge_nn::loss::{clash_loss, continuity_loss, edge_keep_mask, elastic_loss, PairList};
use cryoforge_star::Reference;

fn res(chain: &str, segment: usize, seq: i32, pos: [f64; 3]) -> AnchorResidue {
    AnchorResidue {
        chain: chain.into(),
        segment,
        seq,
        icode: None,
        name: "ALA".into(),
        atom: "CA".into(),
        pos,
        amplitude: 38.0,
        kind: AnchorKind::Protein,
    }
}

fn t(coords: &[[f32; 3]]) -> Tensor {
    let v: Vec<f32> = coords.iter().flatten().copied().collect();
    Tensor::from_vec(v, (1, coords.len(), 3), &Device::Cpu).unwrap()
}

fn scalar(x: Tensor) -> f64 {
    x.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn two_chains_pairs_and_losses() {
    // Chain A: three residues on x at 3.8 Å; chain B: one residue 6 Å above residue 0.
    let r = vec![
        res("A", 0, 1, [0.0, 0.0, 0.0]),
        res("A", 0, 2, [3.8, 0.0, 0.0]),
        res("A", 0, 3, [7.6, 0.0, 0.0]),
        res("B", 1, 1, [0.0, 6.0, 0.0]),
    ];
    let re = Reference::from_anchors(r, 12.0, 4.0, 10.0).unwrap();
    // Continuity: only within chain A.
    assert_eq!(re.consecutive, vec![(0, 1), (1, 2)]);
    // Elastic: same chain, non-consecutive: only (0, 2); no inter-chain edge.
    assert_eq!(re.elastic, vec![(0, 2)]);
    assert!((re.elastic_d0[0] - 7.6).abs() < 1e-5);
    // Clash pairs: reference distance 4–10 Å, inter-chain included: (0,2) 7.6, (0,3) 6, (1,3) 7.1, (2,3) 9.7.
    assert_eq!(re.clash, vec![(0, 2), (0, 3), (1, 3), (2, 3)]);

    let dev = Device::Cpu;
    // Move residue 2 to 3 Å from residue 0 (bend) and chain B 3 Å from residue 0.
    let c = t(&[[0.0, 0.0, 0.0], [3.8, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]);
    let cp = PairList::new(&re.consecutive, &dev).unwrap();
    let d0 = Tensor::from_slice(&re.consecutive_d0, 2, &dev).unwrap();
    // Continuity: (3.8 − 3.8)² and (0.8 − 3.8)² = 9 → mean 4.5.
    assert!((scalar(continuity_loss(&c, &cp, &d0).unwrap()) - 4.5).abs() < 1e-4);
    // Clash: (0,2) d = 3 → (4 − 3)² = 1; (0,3) d = 3 → 1; (1,3) d = 4.8, (2,3) 4.24: none.
    // Mean over violations = 1.
    let kp = PairList::new(&re.clash, &dev).unwrap();
    assert!((scalar(clash_loss(&c, &kp, 4.0).unwrap()) - 1.0).abs() < 1e-4);
    // Elastic: (3 − 7.6)² = 21.16.
    let ep = PairList::new(&re.elastic, &dev).unwrap();
    let ed0 = Tensor::from_slice(&re.elastic_d0, 1, &dev).unwrap();
    assert!((scalar(elastic_loss(&c, &ep, &ed0, None).unwrap()) - 21.16).abs() < 1e-3);
}

#[test]
fn adaptive_relaxation_drops_high_variance_edges() {
    // Batch of 4 distance vectors over 5 edges; edge 3 varies strongly, edge 1 a little.
    let d = Tensor::from_vec(
        vec![
            5.0f32, 6.0, 7.0, 8.0, 9.0, //
            5.0, 6.2, 7.0, 12.0, 9.0, //
            5.0, 5.8, 7.0, 4.0, 9.0, //
            5.0, 6.0, 7.0, 8.0, 9.0,
        ],
        (4, 5),
        &Device::Cpu,
    )
    .unwrap();
    let keep: Vec<f32> = edge_keep_mask(&d, 0.8).unwrap().to_vec1().unwrap();
    assert_eq!(keep, vec![1.0, 1.0, 1.0, 0.0, 1.0]);
    let keep: Vec<f32> = edge_keep_mask(&d, 0.6).unwrap().to_vec1().unwrap();
    assert_eq!(keep, vec![1.0, 0.0, 1.0, 0.0, 1.0]);
}
