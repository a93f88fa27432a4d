pub mod center_model;
pub mod convert;
pub mod demo;
pub mod downsample;
pub mod info;
pub mod morph;
pub mod pdb2map;
pub mod reconstruct;
pub mod report;
pub mod select;
pub mod simulate;
<<<<<<< HEAD
pub mod sphere;
=======
pub mod star;
>>>>>>> star
