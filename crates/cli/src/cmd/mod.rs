pub mod center_model;
pub mod convert;
pub mod downsample;
pub mod info;
pub mod pdb2map;
pub mod reconstruct;
pub mod select;
pub mod simulate;
