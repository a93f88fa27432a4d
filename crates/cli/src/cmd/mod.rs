pub mod convert;
pub mod downsample;
pub mod info;
pub mod select;
pub mod reconstruct;
