//! cryoforge-core: units, rotations, CTF, FFT layout, filters, masks and FSC —
//! the conventions every other crate goes through (see CONVENTIONS.md).
